"""``shelfwise keys`` and ``shelfwise erase``: keys shown once and stored hashed, clear messages on bad input."""

from __future__ import annotations

import json
import sqlite3

from typer.testing import CliRunner

from shelfwise.cli import app, demo_key
from shelfwise.security.keys import hash_key

runner = CliRunner()


def test_create_list_revoke(settings, monkeypatch):
    monkeypatch.setenv("SHELFWISE_DATA_DIR", str(settings.data_dir))
    r = runner.invoke(app, ["keys", "create", "--scope", "read", "--scope", "ingest", "--name", "web", "--quiet"])
    assert r.exit_code == 0, r.output
    key = r.stdout.strip()
    assert key.startswith("sw_sk_") and "\n" not in key
    r = runner.invoke(app, ["keys", "create", "--publishable", "--scope", "read", "--origin", "https://shop.example",
                            "--name", "browser", "--rate", "20"])
    assert r.exit_code == 0 and "shown" in r.output and "sw_pk_" in r.stdout
    listed = [json.loads(line) for line in runner.invoke(app, ["keys", "list", "--json"]).stdout.splitlines()]
    assert [(k["name"], k["scopes"], k["kind"]) for k in listed] == [("web", ["read", "ingest"], "secret"),
                                                                     ("browser", ["read"], "publishable")]
    assert listed[1]["origins"] == ["https://shop.example"] and listed[1]["rate"] == 20
    assert key not in runner.invoke(app, ["keys", "list"]).output
    db = sqlite3.connect(settings.data_dir / "shelfwise.db")
    dump = repr(db.execute("SELECT * FROM api_keys").fetchall())
    db.close()
    assert key not in dump and key[-43:] not in dump and hash_key(key) in dump
    assert runner.invoke(app, ["keys", "revoke", "web"]).exit_code == 0
    r = runner.invoke(app, ["keys", "revoke", "web"])
    assert r.exit_code == 2 and "no active key" in r.output and "Traceback" not in r.output
    assert [k["name"] for k in map(json.loads, runner.invoke(app, ["keys", "list", "--json", "--all"])
                                   .stdout.splitlines())] == ["web", "browser"]


def test_bad_requests_are_messages(settings, monkeypatch):
    monkeypatch.setenv("SHELFWISE_DATA_DIR", str(settings.data_dir))
    for args, says in ((["--scope", "root"], "unknown scope"), (["--scope", "admin", "--publishable",
                                                                 "--origin", "https://a.example"], "publishable"),
                       (["--scope", "read", "--publishable"], "origin"),
                       (["--scope", "read", "--name", "a b"], "key name")):
        r = runner.invoke(app, ["keys", "create", *args])
        assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output, r.output
    runner.invoke(app, ["keys", "create", "--scope", "read", "--name", "dup"])
    r = runner.invoke(app, ["keys", "create", "--scope", "read", "--name", "dup"])
    assert r.exit_code == 2 and "already exists" in r.output
    r = runner.invoke(app, ["erase"])
    assert r.exit_code == 2 and "exactly one" in r.output


def test_demo_key_replaces_the_previous_one(settings):
    first, second = demo_key(settings), demo_key(settings)
    assert first != second
    from shelfwise.security.keys import KeyVerifier
    from shelfwise.stores import open_privacy_store

    store = open_privacy_store(settings.events_dsn)
    try:
        v = KeyVerifier(store, cache_s=0)
        assert v.verify(first) is None and v.verify(second).scopes == ("ingest", "read", "admin")
    finally:
        store.close()


def test_erase_prints_a_receipt(trained_settings, monkeypatch):
    monkeypatch.setenv("SHELFWISE_DATA_DIR", str(trained_settings.data_dir))
    r = runner.invoke(app, ["erase", "--user-id", "u1"])
    assert r.exit_code == 0, r.output
    receipt = json.loads(r.stdout)
    assert {p["place"]: p["removed"] for p in receipt["places"]}["event store: events (and their purchase lines)"] \
        == 4 and "u1" not in json.dumps(receipt)  # u1: four views
