"""`shelfwise run`: a first model answers at once, the full one trains in the background and replaces it."""

import json
import os
import re
import subprocess
import sys
import time

from fastapi.testclient import TestClient

from shelfwise.api.app import create_app
from shelfwise.settings import load_settings


def test_run_serves_a_quick_model_then_the_full_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHELFWISE_") or k.startswith("SHELFWISE_TEST_")}
    env.update(COLUMNS="250", SHELFWISE_DATA_DIR=str(tmp_path / "data"), SHELFWISE_MODELS__SEQUENCE__MAX_EPOCHS="2",
               SHELFWISE_MODELS__SEQUENCE__PROGRESS="false", SHELFWISE_MODELS__RANKER__MIN_REQUESTS="5")
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "shelfwise.cli", "run", "--no-serve", "--items", "300",
                          "--shoppers", "300", "--events", "6000"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "training in the background" in out.stderr and "(quick)" in out.stderr
    key = re.search(r"demo API key[^\n]*\n\s*(\S+)", out.stderr).group(1)
    settings = load_settings(data_dir=tmp_path / "data")
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as client:
        ready = client.get("/readyz").json()
        assert ready["model"]["full"] is False
        assert ready["model"]["sources"] == ["trending", "covisit", "copurchase", "cohort"]  # cohorts from the start
        new = client.get("/v1/recommendations/homepage", params={"user_id": "brand-new", "device": "mobile"}).json()
        assert new["items"] and all(it["reason"] == "cohort" for it in new["items"])
        assert ready["training"]["state"] in ("running", "done") and ready["training"]["expected_s"] > 0
        rail = client.get("/v1/recommendations/homepage", params={"user_id": "u00001", "k": 5})
        assert rail.status_code == 200 and len(rail.json()["items"]) == 5
        first = rail.json()["model_version"]
        deadline = time.monotonic() + 240
        while client.get("/readyz").json()["training"]["state"] == "running" and time.monotonic() < deadline:
            time.sleep(1)
        training = client.get("/readyz").json()["training"]
        assert training["state"] == "done", (training, (tmp_path / "data" / "train.log").read_text()[-2000:])
        while client.get("/readyz").json()["model_version"] != training["version"] and time.monotonic() < deadline:
            time.sleep(0.5)  # the watcher swaps the published version in
        ready = client.get("/readyz").json()
        assert ready["model"]["full"] and ready["model_version"] == training["version"] != first
        rail = client.get("/v1/recommendations/homepage", params={"user_id": "u00001", "k": 5}).json()
        assert rail["model_version"] == training["version"] and len(rail["items"]) == 5
    assert json.loads((tmp_path / "data" / "models" / "TRAINING.json").read_text())["state"] == "done"
    assert time.monotonic() - t0 < 300
