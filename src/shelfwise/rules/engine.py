"""What the running engine (``service.Shelfwise``) holds for merchandising: the rule store, the exposure log
and the rules stage it attaches to every pipeline it loads."""

from __future__ import annotations

import logging
import threading
import time
from typing import Sequence

from shelfwise.domain import Item
from shelfwise.items import ItemTable
from shelfwise.request import Answer, RecRequest
from shelfwise.rules.admin import open_exposure_log, open_rule_store
from shelfwise.rules.log import Exposure
from shelfwise.rules.stage import RulesStage, StoreRules
from shelfwise.settings import Settings
from shelfwise.stores.protocols import Catalog

log = logging.getLogger(__name__)


class Merchandising:
    """Also keeps the compiled rules warm: after a model load or a rule change through this process, and every
    second for changes made elsewhere (another replica, the CLI), so shoppers rarely pay for a compilation."""

    def __init__(self, settings: Settings, catalog: Catalog, warm_interval_s: float = 1.0) -> None:
        self.settings = settings
        self.store = open_rule_store(settings)
        self.log = open_exposure_log(settings)
        self.source = StoreRules(self.store, settings.rules.shadow_share, settings.rules.reload_interval_s)
        self.stage = RulesStage(self.source, catalog.all, self.log)
        self._items: ItemTable | None = None
        self._stop = threading.Event()
        self._warmer = threading.Thread(target=self._keep_warm, args=(warm_interval_s,), name="shelfwise-rules-warm",
                                        daemon=True)
        self._warmer.start()

    def attach(self, items: ItemTable) -> None:
        """The item table of the pipeline now serving (assembled with ``self.stage``): its rules are kept warm."""
        self._items = items

    def prepare(self) -> None:
        """Compile the live rules and the shadow drafts for the current pipeline (no-op when up to date)."""
        items = self._items
        if items is None:
            return
        snap = self.source.snapshot()
        self.stage.live(items, snap)
        for rid, *_ in snap.shadows:
            self.stage.shadow(items, snap, rid)

    def _keep_warm(self, interval: float) -> None:
        while not self._stop.is_set():
            try:
                self.prepare()
            except Exception:  # pragma: no cover - the request path compiles (and reports) on its own
                log.exception("warming the compiled rules failed")
            self._stop.wait(interval)

    def catalog_changed(self, items: ItemTable, changed: Sequence[Item] = ()) -> None:
        self.stage.catalog_changed(items, changed)

    def rules_changed(self) -> None:
        """Called after a change through this process: compiled here, so the next request finds it ready."""
        self.source.invalidate()
        self.prepare()

    def record(self, req: RecRequest, answer: Answer, propensities: list[float] | None = None) -> None:
        """Log what one answer showed; ``propensities`` per slot when an experiment explored (they reach the
        ranker's training through the exposure log)."""
        if not self.settings.rules.exposure_log or not answer.items:
            return
        self.log.record([Exposure(request_id=req.request_id or "", ts=req.now or time.time(), shopper=req.shopper,
                                  placement=answer.placement, items=[r.item_id for r in answer.items],
                                  scores=[round(r.score, 6) for r in answer.items],
                                  model_version=answer.model_version, rules=answer.rulesets,
                                  propensities=propensities)])

    def close(self) -> None:
        self._stop.set()
        self._warmer.join(5)
        self.stage.wait()
        self.log.close()
        self.store.close()
