"""`shelfwise evaluate` end to end (CliRunner): report, raw JSON, plots, exported lists, and the outsider check."""

import gzip
import importlib.util
import json
import random

import pytest
from typer.testing import CliRunner

from tests.conftest import SHARED

from shelfwise.cli import app

BEAUTY = SHARED / "datasets" / "amazon-beauty-s3rec" / "Beauty.txt.gz"
SEQBENCH = SHARED / "tools" / "seqbench.py"


def write_sequences(path, users=150, items=40, seed=5):
    rng = random.Random(seed)
    lines = []
    for u in range(1, users + 1):
        n = rng.randint(3, 9)
        cur = rng.randint(1, items)
        seq = []
        while len(seq) < n:
            if cur not in seq:
                seq.append(cur)
            cur = (cur + rng.choice((1, 1, 2, rng.randint(1, items)))) % items + 1
        lines.append(" ".join(map(str, [u] + seq)))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def cli(settings, monkeypatch):
    monkeypatch.setenv("SHELFWISE_DATA_DIR", str(settings.data_dir))
    runner = CliRunner()

    def run(*args):
        r = runner.invoke(app, [str(a) for a in args])
        return r

    return run


def test_evaluate_writes_report_json_plots_and_lists(cli, tmp_path, settings):
    data = write_sequences(tmp_path / "Toy.txt")
    r = cli("evaluate", "s3rec", data, "--models", "popularity,covisit,als,ease,default", "--report", tmp_path / "rep",
            "--export-recs", tmp_path / "recs", "--targets", "valid,test")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "rep" / "results.json").read_text())[0]
    assert [s["name"] for s in res["splits"]] == ["loo-valid", "loo-test"]
    test = res["splits"][1]
    assert test["users"] == 150 and set(test["models"]) == {"popularity", "covisit", "als", "ease", "default"}
    for m in test["models"].values():
        assert set(m["metrics"]) >= {"HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR", "Recall@20"}
        assert 0 <= m["coverage"]["@20"] <= 1 and 0 <= m["long_tail"]["@20"] <= 1
        assert m["segments"]["short"]["users"] + m["segments"]["long"]["users"] == 150
    assert res["machine"]["cores"] >= 1 and res["wall_s"] > 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| covisit | covisit |" in md and "loo-test" in md and "Segments" in md
    pngs = sorted(p.name for p in (tmp_path / "rep").glob("*.png"))
    assert len(pngs) == 4 and all(p.startswith("Toy-loo-") for p in pngs)
    lines = (tmp_path / "recs" / "Toy.loo-test.default.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert len(lines) == 150 and first["user"] == "1" and len(first["items"]) == 20
    # a second run reuses the cached import: the import's store is not written again
    cached = list((settings.data_dir / "eval-imports").glob("s3rec-*"))
    assert len(cached) == 1
    stamps = {p.name: p.stat().st_mtime_ns for p in cached[0].iterdir() if p.is_file() and not p.name.endswith(
        ("-wal", "-shm"))}
    r = cli("evaluate", "s3rec", data, "--models", "popularity", "--targets", "test")
    assert r.exit_code == 0, r.output
    assert {p.name: p.stat().st_mtime_ns for p in cached[0].iterdir() if p.name in stamps} == stamps
    assert list((settings.data_dir / "eval-imports").glob("s3rec-*")) == cached


def test_evaluate_friendly_errors(cli, tmp_path):
    data = write_sequences(tmp_path / "Toy.txt", users=20)
    r = cli("evaluate", "s3rec", data, "--protocol", "temporal")
    assert r.exit_code == 2 and "synthetic timestamps" in r.output
    r = cli("evaluate", "s3rec", data, "--models", "covisit,magic")
    assert r.exit_code == 2 and "unknown model" in r.output
    r = cli("evaluate", "s3rec", tmp_path / "nope.txt")
    assert r.exit_code == 2 and "not found" in r.output
    r = cli("evaluate", "tsv", data)
    assert r.exit_code == 2 and "unknown dataset format" in r.output
    r = cli("evaluate", "s3rec", data, "--protocol", "loo,cold-items", "--models", "popularity-cold")
    assert r.exit_code == 2 and "only with --protocol cold-items" in r.output
    r = cli("evaluate", "s3rec", data, "--protocol", "cold-things")
    assert r.exit_code == 2 and "cold-items, cold-shoppers" in r.output


def test_evaluate_cold_start_protocols_from_the_command_line(cli, tmp_path):
    data = write_sequences(tmp_path / "Toy.txt", users=200)
    r = cli("evaluate", "s3rec", data, "--protocol", "cold-items,cold-shoppers", "--models",
            "popularity,attr-knn", "--cold-fraction", "0.2", "--seed", "3", "--report", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    items, shoppers = json.loads((tmp_path / "rep" / "results.json").read_text())[0]["splits"]
    assert items["notes"]["held_out_items"] == 8 and items["notes"]["seed"] == 3  # 20 % of the 40 items
    assert shoppers["notes"]["held_out_shoppers"] == 40 and shoppers["users"] == 80  # asked with 0 and 1 events
    assert items["models"]["attr-knn"]["among_new"]  # ranked among the new items too
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "cold items, full ranking" in md and "Ranked among the held-out (new) items only" in md
    assert "0 prior events (40 requests), 1 prior event (40)" in md


def test_evaluate_the_event_store(cli, tmp_path):
    data = write_sequences(tmp_path / "Toy.txt", users=60)
    assert cli("import", "s3rec", data).exit_code == 0
    r = cli("evaluate", "store", "--protocol", "loo", "--models", "covisit", "--targets", "test", "--report",
            tmp_path / "rep")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "rep" / "results.json").read_text())[0]
    assert res["dataset"]["format"] == "store" and res["splits"][0]["users"] == 60


def test_outsider_check_import_train_recommend_matches_evaluate(cli, tmp_path, monkeypatch, settings):
    """What an outsider would run: import every sequence but its last item, train with no options, export the
    homepage lists with `recommend`, score them against the last items. Same lists as `evaluate` exports."""
    data = write_sequences(tmp_path / "Toy.txt", users=120)
    # the whole catalog, as the shipped attribute files list it (an item seen only as a last item stays known)
    attributes = tmp_path / "Toy_item2attributes.json"
    attributes.write_text(json.dumps({str(i): [i % 3] for i in range(1, 41)}))
    r = cli("evaluate", "s3rec", data, "--models", "default", "--targets", "test", "--export-recs", tmp_path / "ev")
    assert r.exit_code == 0 and "attributes:" in r.output  # found beside the sequences
    assert r.exit_code == 0, r.output
    truncated = tmp_path / "outsider" / "Toy.txt"
    truncated.parent.mkdir()
    truncated.write_text("".join(" ".join(line.split()[:-1]) + "\n" for line in data.read_text().splitlines()))
    monkeypatch.setenv("SHELFWISE_DATA_DIR", str(tmp_path / "outsider-data"))
    assert cli("import", "s3rec", truncated, "--attributes", attributes).exit_code == 0
    assert cli("train").exit_code == 0
    users = tmp_path / "users.txt"
    users.write_text("".join(line.split()[0] + "\n" for line in data.read_text().splitlines()))
    r = cli("recommend", "--users", users, "--k", "20", "--out", tmp_path / "recs.jsonl")
    assert r.exit_code == 0, r.output
    def lists(path):
        return {o["user"]: o["items"] for o in map(json.loads, path.read_text().splitlines())}

    ours, theirs = lists(tmp_path / "ev" / "Toy.loo-test.default.jsonl"), lists(tmp_path / "recs.jsonl")
    assert len(ours) == 120 and ours == theirs


@pytest.mark.needs_datasets
def test_evaluate_on_a_beauty_slice(cli, tmp_path):
    if not BEAUTY.is_file():
        pytest.skip(f"public dataset not available: {BEAUTY} is absent (../shared/datasets not beside the repo)")
    with gzip.open(BEAUTY, "rt") as f:
        head = [next(f) for _ in range(300)]
    data = tmp_path / "BeautySlice.txt"
    data.write_text("".join(head))
    r = cli("evaluate", "s3rec", data, "--models", "popularity,covisit,default", "--report", tmp_path / "rep",
            "--export-recs", tmp_path / "recs")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "rep" / "results.json").read_text())[0]
    assert [s["name"] for s in res["splits"]] == ["loo-test"]  # the default target: the published protocol's
    test = res["splits"][0]
    assert test["users"] == 300
    if SEQBENCH.is_file():  # the reference scorer reads the same lists the same way
        spec = importlib.util.spec_from_file_location("seqbench", SEQBENCH)
        sb = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sb)
        users, seqs = sb.load(str(data))
        theirs = sb.score_external(users, seqs, str(tmp_path / "recs" / "BeautySlice.loo-test.covisit.jsonl"))
        assert test["models"]["covisit"]["metrics"]["NDCG@10"] == pytest.approx(theirs["NDCG@10"], abs=1e-12)
