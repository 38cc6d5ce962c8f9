"""The s3rec importer on tiny files written here: order, sessions, attributes, errors, resume."""

import gzip
import json

import pytest
from typer.testing import CliRunner

from shelfwise.cli import app
from shelfwise.importers import ImportFormatError, import_s3rec
from shelfwise.importers.base import SYNTHETIC_STEP_S
from shelfwise.service import Shelfwise
from shelfwise.settings import CovisitSettings

SEQ = "1 10 11 12\n2 11 13\n\n3 12 10 13 14\n"
ATTR = {"10": [1, 2], "11": [2], "12": [3], "13": [1], "14": []}


@pytest.fixture
def files(tmp_path):
    seq = tmp_path / "Tiny.txt.gz"
    with gzip.open(seq, "wt") as f:
        f.write(SEQ)
    attr = tmp_path / "Tiny_item2attributes.json"
    attr.write_text(json.dumps(ATTR))
    return seq, attr


def test_import_keeps_order_one_session_and_attributes(settings, files):
    seq, attr = files
    eng = Shelfwise(settings)
    stats = import_s3rec(eng, seq, attr)
    assert (stats.items, stats.events, stats.stored, stats.duplicates) == (5, 9, 9, 0)
    log = eng.store.scan()
    by_user = {}
    for s, i, k, t in zip(log.shopper, log.item, log.kind, log.ts):
        by_user.setdefault(s, []).append((i, int(k), t))
    assert [i for i, _, _ in by_user["3"]] == ["12", "10", "13", "14"]
    assert all(k == 3 for v in by_user.values() for _, k, _ in v)  # purchase_completed
    ts = [t for _, _, t in by_user["3"]]
    assert all(b - a == SYNTHETIC_STEP_S for a, b in zip(ts, ts[1:]))
    assert SYNTHETIC_STEP_S * 60 < CovisitSettings().session_gap_minutes * 3600  # far below the session gap
    item = eng.get_item("10")
    assert item.attributes["attribute_ids"] == ["1", "2"] and "attr:1" in item.tags
    eng.close()


def test_resume_does_not_duplicate(settings, files):
    seq, attr = files
    eng = Shelfwise(settings)
    import_s3rec(eng, seq, attr)
    again = import_s3rec(eng, seq, attr)
    assert again.stored == 0 and again.duplicates == 9
    assert eng.store.count() == 9
    eng.close()


def test_interrupted_import_resumes(settings, tmp_path):
    """An import that stopped half-way (here: the first lines of the file) completes without duplicates."""
    full = tmp_path / "Seq.txt"
    full.write_text(SEQ)
    eng = Shelfwise(settings)
    part = tmp_path / "part" / "Seq.txt"
    part.parent.mkdir()
    part.write_text(SEQ.split("\n", 1)[0] + "\n")  # same file name = same dataset, first line only
    assert import_s3rec(eng, part).stored == 3
    rest = import_s3rec(eng, full)
    assert (rest.stored, rest.duplicates) == (6, 3)
    assert eng.store.count() == 9
    eng.close()


def test_items_without_attributes_get_bare_catalog_entries(settings, tmp_path):
    seq = tmp_path / "NoAttr.txt"
    seq.write_text("u1 a b\n")
    eng = Shelfwise(settings)
    stats = import_s3rec(eng, seq)
    assert stats.items == 2 and stats.unknown_items == 0
    assert eng.catalog.ids() == {"a", "b"}
    eng.close()


@pytest.mark.parametrize("content,line,reason", [
    ("1 10 11\n2\n", 2, "expected '<user id> <item id>"),
    ("1 10 11\n2 1\x0712\n", 2, "not a valid id"),
    ("1 10\n\n3 " + "9" * 300 + "\n", 3, "not a valid id"),
])
def test_malformed_line_names_file_and_line(settings, tmp_path, content, line, reason):
    seq = tmp_path / "Bad.txt"
    seq.write_text(content)
    eng = Shelfwise(settings)
    with pytest.raises(ImportFormatError) as e:
        import_s3rec(eng, seq)
    assert e.value.line == line and str(seq) in str(e.value) and f"line {line}" in str(e.value)
    assert reason in str(e.value)
    eng.close()


def test_bad_attributes_json_names_file_and_line(settings, tmp_path):
    seq = tmp_path / "S.txt"
    seq.write_text("1 10\n")
    attr = tmp_path / "attr.json"
    attr.write_text('{"10": [1, 2],\n "11": [2,,]}')
    eng = Shelfwise(settings)
    with pytest.raises(ImportFormatError, match=r"attr.json, line 2: invalid JSON"):
        import_s3rec(eng, seq, attr)
    attr.write_text('{"10": [1, 2],\n "11": "x"}')
    with pytest.raises(ImportFormatError, match=r"line 2: item '11': expected a list"):
        import_s3rec(eng, seq, attr)
    eng.close()


def test_cli_import_and_friendly_errors(settings, files, tmp_path, monkeypatch):
    seq, attr = files
    monkeypatch.setenv("SHELFWISE_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("SHELFWISE_DATASETS_DIR", str(tmp_path))
    runner = CliRunner()
    r = runner.invoke(app, ["import", "s3rec", seq.name, "--attributes", attr.name])  # relative to datasets_dir
    assert r.exit_code == 0, r.output
    assert "9 stored" in r.output
    r = runner.invoke(app, ["import", "s3rec", str(seq)])
    assert r.exit_code == 0 and "9 already present" in r.output
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3\nlonely\n")
    r = runner.invoke(app, ["import", "s3rec", str(bad)])
    assert r.exit_code == 2
    assert "line 2" in r.output and "bad.txt" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["import", "s3rec", "missing.txt"])
    assert r.exit_code == 2 and "not found" in r.output
