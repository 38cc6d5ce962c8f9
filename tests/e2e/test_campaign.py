"""Email campaigns: rails for a list of shoppers (de-duplicated within the email and against what the site showed,
within the email's caps), signed tokens, and open time re-checking stock and price."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from typer.testing import CliRunner

from shelfwise.campaigns.run import Campaign, CampaignError, read_shoppers, write_rows
from shelfwise.domain import Item
from shelfwise.request import RecRequest
from shelfwise.security.tokens import sign
from shelfwise.service import Shelfwise
from shelfwise.settings import EmailRail
from tests.conftest import T0, api_client, ids, tiny_catalog

NOW = (T0 + timedelta(days=10)).timestamp()


@pytest.fixture
def email_settings(trained_settings):
    s = trained_settings.model_copy(deep=True)
    s.campaign.emails["email_weekly"] = [EmailRail(title="Picked for you", placement="email_weekly", k=3),
                                         EmailRail(title="More like it", placement="pdp_similar", k=2)]
    s.campaign.spares = 2
    s.campaign.secret = "s" * 40
    return s


def test_an_email_repeats_nothing_and_skips_what_the_site_just_showed(email_settings, tmp_path):
    eng = Shelfwise(email_settings)
    try:
        site = ids(eng.recommend(RecRequest("homepage", shopper="u3", k=2, now=NOW - 3600)))  # seen an hour ago
        rows = list(Campaign(eng, "email_weekly", "c1", now=NOW).run(["u3", "u5", "nobody-yet"]))
        assert [r.shopper for r in rows] == ["u3", "u5", "nobody-yet"]
        for row in rows:
            sent = [x["item_id"] for rail in row.rails for x in rail["items"]]
            assert len(sent) == len(set(sent)) and sent, row  # once per email
            assert len(row.rails[0]["items"]) == 3
        u3 = [x["item_id"] for rail in rows[0].rails for x in rail["items"]]
        assert not set(site) & set(u3)
        assert rows[0].rails[1]["items"], "u3 viewed items: the anchored rail has items"
        assert rows[2].fallback and rows[2].rails[1]["items"] == []  # a new shopper: no view to anchor on
        # sent items count as the email's impressions: next week's email (cap: once in four weeks) repeats none
        again = list(Campaign(eng, "email_weekly", "c2", now=NOW + 7 * 86400).run(["u3"]))[0]
        assert not set(u3) & {x["item_id"] for rail in again.rails for x in rail["items"]}
        out = tmp_path / "mail.csv"
        assert write_rows(rows, out, "csv", "email_weekly", "c1") == 3
        header = out.read_text().splitlines()[0]
        assert header == "shopper,campaign,token,url,rail1_email_weekly,rail2_pdp_similar"
    finally:
        eng.close()


def test_open_time_never_shows_a_sold_out_item(email_settings):
    eng = Shelfwise(email_settings)
    try:
        row = list(Campaign(eng, "email_weekly", "c1", now=time.time()).run(["u3"]))[0]
        sent = [x["item_id"] for x in row.rails[0]["items"]]
        catalog = {i.id: i for i in tiny_catalog()}
        gone = sent[0]
        cheaper = sent[1]
        eng.upsert_items([catalog[gone].model_copy(update={"stock": 0}),
                          catalog[cheaper].model_copy(update={"price": catalog[cheaper].price - 5})])
        with api_client(email_settings, engine=eng) as client:
            got = client.get(f"/v1/email/{row.token}", headers={"Authorization": ""})  # no key: the token is enough
            assert got.status_code == 200, got.text
            body = got.json()
        shown = [x for rail in body["rails"] for x in rail["items"]]
        assert gone not in {x["item_id"] for x in shown} and body["replaced"] >= 1
        first = body["rails"][0]["items"]
        assert len(first) == 3 and first[0]["replaces"] == gone and first[0]["item_id"] != gone
        assert all(x["in_stock"] for x in shown) and len({x["item_id"] for x in shown}) == len(shown)
        drop = next(x for x in first if x["item_id"] == cheaper)
        assert drop["price_dropped"] and drop["price"] == drop["price_at_send"] - 5
        # every item sold out but one: the rail shrinks rather than show a sold-out product
        eng.upsert_items([catalog[x].model_copy(update={"stock": 0}) for x in catalog if x != "h1"])
        with api_client(email_settings, engine=eng) as client:
            body = client.get(f"/v1/email/{row.token}").json()
        assert {x["item_id"] for rail in body["rails"] for x in rail["items"]} <= {"h1"}
    finally:
        eng.close()


def test_forged_expired_and_malformed_tokens_are_refused(email_settings):
    from contextlib import ExitStack

    eng = Shelfwise(email_settings)
    stack = ExitStack()
    try:
        row = list(Campaign(eng, "email_weekly", "c1").run(["u3"]))[0]
        client = stack.enter_context(api_client(email_settings, engine=eng))
        body, mac = row.token.split(".")
        forged = client.get(f"/v1/email/{body[:-2] + ('AA' if body[-2:] != 'AA' else 'BB')}.{mac}")
        assert forged.status_code == 403 and forged.json()["errors"][0]["field"] == "token"
        other = sign({"v": 1, "s": "u3", "e": "email_weekly", "c": "x", "r": []}, b"k" * 40, 3600)
        assert client.get(f"/v1/email/{other}").status_code == 403  # signed with another secret
        old = sign({"v": 1, "s": "u3", "e": "email_weekly", "c": "x", "r": []}, email_settings.campaign.secret.encode(),
                   60, now=time.time() - 3600)
        expired = client.get(f"/v1/email/{old}")
        assert expired.status_code == 410 and "expired" in expired.json()["detail"]
        assert client.get("/v1/email/not-a-token").status_code == 400
    finally:
        stack.close()
        eng.close()


def test_bad_campaign_input_is_a_message(email_settings, tmp_path, monkeypatch):
    from shelfwise.cli import app

    eng = Shelfwise(email_settings)
    try:
        with pytest.raises(CampaignError, match="unknown placement 'email_daily'.*email_weekly"):
            Campaign(eng, "email_daily")
    finally:
        eng.close()
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nobody\n")
    with pytest.raises(CampaignError, match="names no shopper"):
        read_shoppers(empty)
    monkeypatch.setenv("SHELFWISE_DATA_DIR", str(email_settings.data_dir))
    runner = CliRunner()
    got = runner.invoke(app, ["campaign", "run", "--placement", "email_weekly", "--shoppers", str(empty),
                              "--out", str(tmp_path / "o.jsonl")])
    said = " ".join(got.output.split())
    assert got.exit_code == 2 and "names no shopper" in said and "Traceback" not in said
    got = runner.invoke(app, ["campaign", "run", "--placement", "nope", "--segment", "x",
                              "--out", str(tmp_path / "o.jsonl")])
    assert got.exit_code == 2 and "unknown placement 'nope'" in " ".join(got.output.split())
    listed = tmp_path / "who.txt"
    listed.write_text("user_id\nu3\nu5\n")
    got = runner.invoke(app, ["campaign", "run", "--placement", "email_weekly", "--shoppers", str(listed),
                              "--out", str(tmp_path / "o.jsonl")])
    assert got.exit_code == 0, (got.output, got.exception)
    lines = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [x["shopper"] for x in lines] == ["u3", "u5"] and all(x["url"].startswith("/v1/email/") for x in lines)
    assert not (tmp_path / "o.jsonl.tmp").exists()
