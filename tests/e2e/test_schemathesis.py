"""Property-based tests of every documented operation, generated from the OpenAPI document (schemathesis): valid
and invalid requests alike must never get a 5xx, and every answer must match the declared status codes, content
types and response schemas. A bounded budget (examples per operation) keeps this in the default run."""

from __future__ import annotations

import os

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_schema_conformance, status_code_conformance,
)
from shelfwise.api.app import create_app
from shelfwise.service import Shelfwise
from shelfwise.settings import load_settings
from shelfwise.training import train
from tests.conftest import make_key, tiny_catalog, tiny_events

EXAMPLES = int(os.environ.get("SHELFWISE_TEST_SCHEMATHESIS_EXAMPLES", "12"))
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    shop = load_settings(data_dir=tmp_path_factory.mktemp("fuzz"))
    shop.security.rate_per_client = shop.security.rate_per_key = 0  # the fuzzer is one fast client
    shop.models.sequence.max_epochs = 2
    eng = Shelfwise(shop)
    eng.upsert_items(tiny_catalog())
    eng.ingest(tiny_events())
    train(eng.store, eng.catalog, eng.models, shop.models)
    eng.close()
    key = make_key(shop, name="fuzzer")
    app = create_app(shop)
    with TestClient(app):  # runs the app's start-up; schemathesis then calls the same app in process
        yield app, key


def operations():
    """(label, operation, generation mode) for every documented operation: valid requests, and invalid ones
    for the operations that take any input."""
    doc = create_app(load_settings(data_dir="/nonexistent-unused")).openapi()
    schema = schemathesis.openapi.from_dict(doc)
    out = []
    for op in (r.ok() for r in schema.get_all_operations()):
        out.append((op.label, op, GenerationMode.POSITIVE))
        raw = doc["paths"][op.path][op.method.lower()]
        if raw.get("parameters") or raw.get("requestBody"):
            out.append((op.label, op, GenerationMode.NEGATIVE))
    return out


OPERATIONS = operations()


@pytest.mark.parametrize("label, operation, mode", OPERATIONS,
                         ids=[f"{label} {mode.value}" for label, _, mode in OPERATIONS])
def test_every_operation(api, label, operation, mode):
    app, key = api
    auth = {"Authorization": f"Bearer {key}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        case.call_and_validate(app=app, headers=auth, checks=CHECKS)

    run()


def test_every_route_is_fuzzed():
    labels = {label for label, _, _ in OPERATIONS}
    assert len(labels) >= 20 and {"POST /v1/events", "PUT /v1/items", "DELETE /v1/shoppers",
                                  "PUT /v1/rulesets/{ruleset_id}"} <= labels
