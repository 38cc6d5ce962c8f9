"""On the synthetic storefront: a shopper's views change their very next homepage answer."""

from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from shelfwise.api.app import create_app
from tests.conftest import api_client
from shelfwise.service import Shelfwise
from shelfwise.synthetic import generate_storefront
from shelfwise.training import train


@pytest.fixture(scope="module")
def shop_client(tmp_path_factory):
    from shelfwise.settings import load_settings

    settings = load_settings(data_dir=tmp_path_factory.mktemp("shop"))
    shop = generate_storefront(n_items=800, n_shoppers=500, n_events=25_000, seed=7)
    eng = Shelfwise(settings)
    eng.upsert_items(shop.items)
    eng.ingest(list(shop.events()))
    train(eng.store, eng.catalog, eng.models, settings.models)
    eng.close()
    with api_client(settings) as client:
        yield client, shop


def rail(client, user):
    r = client.get("/v1/recommendations/homepage", params={"user_id": user, "k": 12})
    assert r.status_code == 200
    return [x["item_id"] for x in r.json()["items"]]


def test_three_phone_case_views_change_the_homepage(shop_client):
    client, shop = shop_client
    category = {it.id: it.category for it in shop.items}
    cases = [it for it in shop.items if it.category[-1] == "Phone Cases" and it.in_stock][:3]
    # a known shopper whose tastes are elsewhere
    user = next(u for u, t in shop.tastes.items() if "Phone Cases" not in str(t.categories))
    before = rail(client, user)
    when = datetime.now(timezone.utc) - timedelta(minutes=2)  # a live session: the views happen now
    events = [{"event_id": f"sa-{i}", "type": "product_viewed", "user_id": user, "session_id": "sa",
               "item_id": it.id, "timestamp": (when + timedelta(seconds=20 * i)).isoformat()}
              for i, it in enumerate(cases)]
    assert client.post("/v1/events", json=events).status_code == 202
    after = rail(client, user)
    assert after != before
    # the new rail is about what they just looked at: phones and phone accessories
    related = sum(1 for i in after if category[i][-1] in {"Phone Cases", "Smartphones", "Screen Protectors"}
                  or category[i][0] == "Phones")
    related_before = sum(1 for i in before if category[i][-1] in {"Phone Cases", "Smartphones",
                                                                   "Screen Protectors"} or category[i][0] == "Phones")
    # the default homepage is re-ranked by the learned ranker, which weighs a live session's intent (views minutes
    # ago) against the shopper's longer-term taste: 0 of 12 related before the views, 10 after
    assert related >= 8 and related >= related_before + 8


def test_anonymous_session_gets_personalised_after_views(shop_client):
    client, shop = shop_client
    anon = client.get("/v1/recommendations/homepage", params={"session_id": "brand-new", "k": 6}).json()
    assert all(x["sources"] == ["trending"] for x in anon["items"])
    phone = next(it for it in shop.items if it.category[0] == "Phones" and it.in_stock and shop.accessories.get(it.id))
    client.post("/v1/events", json={"event_id": "anon-1", "type": "product_viewed", "session_id": "brand-new",
                                    "item_id": phone.id,
                                    "timestamp": (shop.end + timedelta(minutes=1)).isoformat()})
    after = client.get("/v1/recommendations/homepage", params={"session_id": "brand-new", "k": 6}).json()
    assert any("covisit" in x["sources"] for x in after["items"])
