"""The tiny storefront the console tests share (module-scoped: trained once, with trending and co-visitation only,
which is enough to see rules move a rail), and what they check pages with."""

from __future__ import annotations

import re
from pathlib import Path

from shelfwise.settings import Settings, load_settings
from tests.conftest import make_key, tiny_catalog, tiny_events

# Any absolute URL in a page or asset names another host; the only ones allowed are the SVG namespace name (an
# identifier, never fetched) and catalog image URLs, which the tiny shop does not have.
URL = re.compile(r"""(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}""")
ALLOWED = {"http://www.w3.org"}


def external_hosts(text: str) -> set[str]:
    return {m.group(0) for m in URL.finditer(text)} - ALLOWED


def console_shop(root: Path, shadow_share: float = 1.0) -> tuple[Settings, dict[str, str]]:
    """Settings of a trained tiny shop under ``root`` (every request shadowed, so a shadow report has traffic at
    once) and keys: ``admin``, ``read`` and ``ingest`` (an ingest-only key, which cannot open the console)."""
    from shelfwise.service import Shelfwise
    from shelfwise.training import train

    settings = load_settings(data_dir=root / "data", rules={"shadow_share": shadow_share},
                             models={"content": {"cache_dir": str(root / "content-cache")}})
    eng = Shelfwise(settings)
    eng.upsert_items(tiny_catalog())
    eng.ingest(tiny_events())
    train(eng.store, eng.catalog, eng.models, settings.models, sources=("trending", "covisit"))
    eng.close()
    keys = {"admin": make_key(settings, ("read", "admin"), name="merch"),
            "read": make_key(settings, ("read",), name="viewer"),
            "ingest": make_key(settings, ("ingest",), name="feed")}
    return settings, keys


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "the page has no form token"
    return m.group(1)
