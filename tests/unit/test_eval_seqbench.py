"""Our harness and the independent reference scorer (../shared/tools/seqbench.py) agree on the same lists."""

import importlib.util
import random

import pytest

from shelfwise.evaluation import evaluate_dataset, load_dataset
from tests.conftest import SHARED

SEQBENCH = SHARED / "tools" / "seqbench.py"


def seqbench():
    if not SEQBENCH.is_file():
        pytest.skip(f"reference scorer not available: {SEQBENCH} is absent (../shared not beside the repo)")
    spec = importlib.util.spec_from_file_location("seqbench", SEQBENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_sequences(path, users=150, items=40, seed=3):
    """Sequences with a learnable next-item structure (item i tends to be followed by i+1 or i+2)."""
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


def test_metrics_agree_with_seqbench_on_our_exported_lists(settings, tmp_path):
    sb = seqbench()
    data = write_sequences(tmp_path / "Toy.txt")
    ds = load_dataset("s3rec", data, settings)
    out = tmp_path / "recs"
    result = evaluate_dataset(ds, settings.models, targets=("test",), models=("popularity", "covisit", "default"),
                              export_dir=out)
    users, seqs = sb.load(str(data))
    split = result["splits"][0]
    assert split["users"] == len(users)
    for model, res in split["models"].items():
        theirs = sb.score_external(users, seqs, str(out / f"Toy.loo-test.{model}.jsonl"))
        assert theirs["users_answered"] == len(users)
        for k in (5, 10, 20):
            assert res["metrics"][f"HR@{k}"] == pytest.approx(theirs[f"HR@{k}"], abs=1e-12), (model, k)
            assert res["metrics"][f"NDCG@{k}"] == pytest.approx(theirs[f"NDCG@{k}"], abs=1e-12), (model, k)
    assert split["models"]["covisit"]["metrics"]["HR@10"] > split["models"]["popularity"]["metrics"]["HR@10"]


def test_metrics_module_matches_seqbench_formulas():
    import numpy as np

    from shelfwise.evaluation import metrics as M

    sb = seqbench()
    ranks = [0, 3, 7, 12, 19, np.inf, 1]
    lists = [[f"x{j}" for j in range(20)] for _ in ranks]
    targets = [[f"x{int(r)}"] if np.isfinite(r) else ["nope"] for r in ranks]
    ours = M.summarise(M.per_user(lists, targets))
    theirs = sb.metrics_from_ranks(ranks)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-12)
