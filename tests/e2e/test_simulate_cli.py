"""`shelfwise experiments simulate`: simulated shoppers with known tastes visit the rails the real pipeline serves
through an experiment's variants; a known effect injected into one variant shows in the results."""

import json

from typer.testing import CliRunner

from shelfwise.cli import app
from shelfwise.experiments.admin import ExperimentService
from shelfwise.service import Shelfwise
from shelfwise.synthetic import generate_storefront
from shelfwise.training import train


def test_simulate_drives_the_pipeline_and_fills_the_experiment_log(settings, monkeypatch):
    monkeypatch.setenv("SHELFWISE_DATA_DIR", str(settings.data_dir))
    shop = generate_storefront(n_items=300, n_shoppers=300, n_events=6000, seed=settings.seed)
    eng = Shelfwise(settings)
    eng.upsert_items(shop.items)
    eng.ingest(list(shop.events()))
    quick = settings.models.model_copy(update={"ranker": settings.models.ranker.model_copy(update={"enabled": False})})
    train(eng.store, eng.catalog, eng.models, quick, sources=("trending", "covisit", "copurchase"))
    eng.close()
    svc = ExperimentService(settings)
    svc.create({"id": "sim", "name": "simulated", "layer": "home",
                "variants": [{"name": "control", "share": 0.5}, {"name": "treat", "share": 0.5}]}, "test", "")
    svc.start("sim", "test", "")
    svc.close()
    r = CliRunner().invoke(app, ["experiments", "simulate", "sim", "--days", "7", "--pre-days", "1", "--shoppers",
                                 "300", "--items", "300", "--shop-shoppers", "300", "--effect",
                                 "treat:purchase=3", "--seed", "1", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    units = res["analysis"]["units"]
    assert set(units) == {"control", "treat"} and min(units.values()) > 100
    conv = res["analysis"]["metrics"]["conversion"]
    assert conv["comparisons"]["treat"]["relative"] > 0.5  # the injected 3x purchase effect shows
    bad = CliRunner().invoke(app, ["experiments", "simulate", "sim", "--effect", "nope:purchase=2"])
    assert bad.exit_code == 2 and "unknown variant" in bad.output
