"""What the running engine (``service.Shelfwise``) holds for merchandising: the rule store, the exposure log
and the rules stage it attaches to every pipeline it loads."""

from __future__ import annotations

import time
from typing import Any, Sequence

from shelfwise.domain import Item
from shelfwise.rules.admin import open_exposure_log, open_rule_store
from shelfwise.rules.log import Exposure
from shelfwise.rules.stage import RulesStage, StoreRules
from shelfwise.settings import Settings
from shelfwise.stores.protocols import Catalog


class Merchandising:
    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        self.settings = settings
        self.store = open_rule_store(settings)
        self.log = open_exposure_log(settings)
        self.source = StoreRules(self.store, settings.rules.shadow_share, settings.rules.reload_interval_s)
        self.stage = RulesStage(self.source, catalog.all, self.log)

    def attach(self, pipeline: Any) -> Any:
        pipeline.rules = self.stage
        return pipeline

    def catalog_changed(self, pipeline: Any, items: Sequence[Item] = ()) -> None:
        self.stage.catalog_changed(pipeline.items, items)
        pipeline.reranker.invalidate()

    def rules_changed(self) -> None:
        """Called after a change through this process: the next request sees it without waiting for a poll."""
        self.source.invalidate()

    def record(self, req: Any, answer: Any, model_version: str) -> None:
        if not self.settings.rules.exposure_log or not answer.items:
            return
        self.log.record([Exposure(request_id=req.request_id or "", ts=req.now or time.time(), shopper=req.shopper,
                                  placement=answer.placement, items=[r.item_id for r in answer.items],
                                  scores=[round(r.score, 6) for r in answer.items], model_version=model_version,
                                  rules=self.stage.label())])

    def close(self) -> None:
        self.log.close()
        self.store.close()
