"""Contract of the key store, the consent store and the erasure ledger: written once, run against the embedded
backend (the event store's SQLite file) and PostgreSQL."""

from __future__ import annotations

import threading
import time
import pytest

from shelfwise.security.keys import KeyVerifier, create_key, hash_key, make_key
from shelfwise.stores import open_privacy_store
from shelfwise.stores.protocols import ApiKey, Consent, ConsentStore, ErasureLedger, KeyExists, KeyStore


# ---- keys ----------------------------------------------------------------------------------------------------
def test_key_round_trip_revoke_and_generation(open_privacy):
    store = open_privacy()
    assert isinstance(store, KeyStore)
    g0 = store.keys_generation()
    token, rec = create_key(store, "web", ["read", "ingest"])
    assert store.keys_generation() == g0 + 1
    got = store.get_key(rec.key_id)
    assert got == rec and got.active and got.scopes == ("read", "ingest")
    assert got.secret_hash == hash_key(token) and token not in repr(got)
    _, pub = create_key(store, "browser", ["read"], "publishable", ["https://Shop.Example"], rate=5.0)
    again = open_privacy().get_key(pub.key_id)  # another replica / a restart
    assert again.origins == ("https://shop.example",) and again.rate == 5.0 and again.kind == "publishable"
    assert [k.name for k in store.list_keys()] == ["web", "browser"]
    revoked = store.revoke_key("web", 123.0)
    assert revoked.key_id == rec.key_id and revoked.revoked_at == 123.0 and not revoked.active
    assert store.keys_generation() == g0 + 3
    assert store.revoke_key("web", 124.0) is None  # already revoked
    assert store.revoke_key(pub.key_id, 125.0).name == "browser"  # by id
    assert store.list_keys() == [] and len(store.list_keys(include_revoked=True)) == 2
    assert store.get_key("nope") is None


def test_key_names_are_unique_among_active_keys(open_privacy):
    store = open_privacy()
    create_key(store, "ci", ["read"])
    with pytest.raises(KeyExists):
        create_key(store, "ci", ["admin"])
    store.revoke_key("ci", time.time())
    create_key(store, "ci", ["admin"])  # the name is free again once revoked
    assert [k.scopes for k in store.list_keys()] == [("admin",)]


def test_the_store_never_holds_a_plain_key(open_privacy):
    store = open_privacy()
    token, rec = create_key(store, "secret-one", ["admin"])
    secret = token[-43:]  # the 43-character secret may itself contain "_"
    dumped = _dump(open_privacy)
    assert rec.key_id in dumped and hash_key(token) in dumped
    assert token not in dumped and secret not in dumped


def test_verifier_accepts_only_the_exact_active_key_and_sees_revocation(open_privacy):
    store = open_privacy()
    token, rec = create_key(store, "svc", ["read"])
    v = KeyVerifier(store, cache_s=0.0)
    assert v.verify(token).key_id == rec.key_id
    assert v.verify(token[:-1] + ("A" if token[-1] != "A" else "B")) is None  # same id, wrong secret
    assert v.verify("sw_sk_" + "a" * 16 + "_" + "b" * 43) is None and v.verify("garbage") is None
    open_privacy().revoke_key("svc", time.time())  # revoked elsewhere
    assert v.verify(token) is None
    cached = KeyVerifier(store, cache_s=60.0)
    token2, _ = create_key(store, "svc2", ["read"])
    assert cached.verify(token2) is not None
    store.revoke_key("svc2", time.time())
    assert cached.verify(token2) is not None  # trusted for cache_s ...
    cached.forget_cache()
    assert cached.verify(token2) is None  # ... then re-read


def test_publishable_origins_follow_the_store(open_privacy):
    store = open_privacy()
    v = KeyVerifier(store, cache_s=0.0)
    assert v.publishable_origins() == frozenset()
    create_key(store, "b", ["read"], "publishable", ["https://a.example", "http://localhost:3000"])
    assert v.publishable_origins() == {"https://a.example", "http://localhost:3000"}
    store.revoke_key("b", time.time())
    assert v.publishable_origins() == frozenset()


def test_concurrent_creates_of_one_name_one_wins(open_privacy):
    results: list[str] = []

    def go():
        try:
            create_key(open_privacy(), "race", ["read"])
            results.append("ok")
        except KeyExists:
            results.append("exists")

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["exists", "exists", "exists", "ok"]


# ---- consent -------------------------------------------------------------------------------------------------
def test_consent_merge_by_purpose_and_time(open_privacy):
    store = open_privacy()
    assert isinstance(store, ConsentStore)
    assert store.consents(["u1"]) == {} and store.consents([]) == {}
    out = store.set_consents([Consent("u1", {"personalisation": "granted"}, 10.0, "event")])
    assert out["u1"][0] is None and out["u1"][1].purposes == {"personalisation": "granted"}
    store.set_consents([Consent("u1", {"analytics": "denied"}, 20.0, "api")])
    got = open_privacy().consents(["u1", "u2"])
    assert list(got) == ["u1"]
    assert got["u1"].purposes == {"personalisation": "granted", "analytics": "denied"}
    assert got["u1"].updated_at == 20.0 and got["u1"].source == "api"
    # an older decision arriving late changes nothing already decided, only fills undecided purposes
    before, after = store.set_consents([Consent("u1", {"analytics": "granted", "experiments": "denied"}, 15.0,
                                                "event")])["u1"]
    assert before.purposes == {"personalisation": "granted", "analytics": "denied"}
    assert after.purposes == {"personalisation": "granted", "analytics": "denied", "experiments": "denied"}
    assert store.consents(["u1"])["u1"].updated_at == 20.0
    # several updates of one shopper in one call apply in order
    store.set_consents([Consent("u3", {"personalisation": "granted"}, 1.0), Consent("u3", {"personalisation":
                                                                                           "denied"}, 2.0)])
    assert store.consents(["u3"])["u3"].purposes == {"personalisation": "denied"}
    assert store.delete_consent("u1") == 1 and store.delete_consent("u1") == 0
    assert store.consents(["u1"]) == {}


def test_concurrent_consent_updates_lose_nothing(open_privacy):
    def go(purpose: str):
        open_privacy().set_consents([Consent("shared", {purpose: "granted"}, 5.0)])

    threads = [threading.Thread(target=go, args=(p,)) for p in ("personalisation", "analytics", "experiments")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert open_privacy().consents(["shared"])["shared"].purposes == {
        "personalisation": "granted", "analytics": "granted", "experiments": "granted"}


def test_anonymous_counts_add_up_without_ids(open_privacy):
    store = open_privacy()
    store.add_counts({("2026-11-01", "p1", 0): 2, ("2026-11-02", "p1", 3): 1})
    store.add_counts({("2026-11-01", "p1", 0): 3})
    assert store.counts("2026-11-01") == [("2026-11-01", "p1", 0, 5), ("2026-11-02", "p1", 3, 1)]
    assert store.counts("2026-11-02") == [("2026-11-02", "p1", 3, 1)]
    store.add_counts({})


# ---- erasure ledger ------------------------------------------------------------------------------------------
def test_markers_receipts_and_pruning(open_privacy):
    store = open_privacy()
    assert isinstance(store, ErasureLedger)
    assert store.latest_forget() == 0.0 and store.forgotten(["u1"]) == {}
    store.forget("u1", 100.0)
    store.forget("session:s/1", 200.0)
    store.forget("u1", 50.0)  # an older marker never moves one back
    other = open_privacy()
    assert other.forgotten(["u1", "session:s/1", "u2"]) == {"u1": 100.0, "session:s/1": 200.0}
    assert other.latest_forget() == 200.0
    assert store.prune_forgotten(150.0) == 1 and store.forgotten(["u1", "session:s/1"]) == {"session:s/1": 200.0}
    receipt = {"receipt_id": "a" * 32, "subject": "user", "places": [{"place": "x", "removed": 3}]}
    store.save_receipt(receipt)
    store.save_receipt(receipt | {"receipt_id": "b" * 32})
    assert other.receipt("a" * 32) == receipt and other.receipt("c" * 32) is None
    assert [r["receipt_id"] for r in other.receipts()] == ["b" * 32, "a" * 32]
    dumped = _dump(open_privacy)
    assert "u1" not in dumped and "s/1" not in dumped  # markers are keyed hashes


def test_markers_are_not_the_pseudonyms_and_differ_per_installation(open_privacy, tmp_path):
    from shelfwise.stores.privacy_common import marker

    store = open_privacy()
    store.forget("u1", 1.0)
    other = open_privacy_store(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        assert marker(store._salt, "u1") != marker(other._salt, "u1")
    finally:
        other.close()


def _dump(open_privacy) -> str:
    """Every row of every privacy table, as text (what a stolen backup would show)."""
    tables = ["api_keys", "consents", "anonymous_counts", "forgotten", "erasure_receipts", "privacy_meta"]
    if open_privacy.backend == "sqlite":
        import sqlite3

        db = sqlite3.connect(open_privacy.dsn.removeprefix("sqlite:///"))
        out = [repr(db.execute(f"SELECT * FROM {t}").fetchall()) for t in tables]
        db.close()
        return "\n".join(out)
    import psycopg

    with psycopg.connect(open_privacy.dsn) as conn:
        return "\n".join(repr(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in tables)


def test_make_key_rejects_bad_requests():
    from shelfwise.security.keys import InvalidKeyRequest

    for kwargs in ({"scopes": []}, {"scopes": ["root"]}, {"scopes": ["admin"], "kind": "publishable",
                                                         "origins": ["https://a.example"]},
                   {"scopes": ["read"], "kind": "publishable"}, {"scopes": ["read"], "kind": "publishable",
                                                                  "origins": ["javascript:alert(1)"]},
                   {"scopes": ["read"], "name": "a b"}, {"scopes": ["read"], "rate": -1.0}):
        with pytest.raises(InvalidKeyRequest):
            make_key(kwargs.pop("name", None), **kwargs)
    token, rec = make_key(None, ["read"])
    assert isinstance(rec, ApiKey) and token.startswith("sw_sk_") and rec.name.startswith("key-")
