"""The issue's acceptance bar on the full Amazon Beauty file (slow: run with -m slow)."""

import json

import pytest
from typer.testing import CliRunner

from shelfwise.cli import app
from tests.conftest import SHARED

BEAUTY = SHARED / "datasets" / "amazon-beauty-s3rec" / "Beauty.txt.gz"


@pytest.mark.slow
@pytest.mark.needs_datasets
def test_covisitation_reaches_the_bar_on_beauty(settings, tmp_path, monkeypatch):
    if not BEAUTY.is_file():
        pytest.skip(f"public dataset not available: {BEAUTY} is absent (../shared/datasets not beside the repo)")
    monkeypatch.setenv("SHELFWISE_DATA_DIR", str(settings.data_dir))
    r = CliRunner().invoke(app, ["evaluate", "s3rec", str(BEAUTY), "--models", "popularity,covisit", "--targets",
                                 "test", "--report", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    test = json.loads((tmp_path / "rep" / "results.json").read_text())[0]["splits"][0]
    assert test["users"] == 22363
    assert test["models"]["covisit"]["metrics"]["NDCG@10"] >= 0.045  # seqbench's item-kNN: .0465
    assert test["models"]["popularity"]["metrics"]["NDCG@10"] == pytest.approx(0.0061, abs=0.0005)
