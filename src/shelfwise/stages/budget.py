"""Time budgets and breakers for the request path while serving (offline evaluation runs without a guard).

What may be left out of an answer is: a candidate source (a model, or the vector index behind it), the learned
ranker and the exploration slots for new items. Each has a circuit breaker (``stores/breaker.py``): an error, or a call over its budget, counts as a
failure; ``breaker_failures`` in a row open it, and while it is open the part is skipped at once (no waiting on
what is down), until a probe call succeeds. Every part left out is named in the answer's ``degraded`` list. A
required stage (resolve, caps, rules, candidates, merchandise, slots) cannot be left out: over its budget it is logged;
if it fails, the service answers from its fallbacks (``service.py``).
"""

from __future__ import annotations

import logging
import time

from shelfwise.settings import ResilienceSettings
from shelfwise.stores.breaker import Breakers

log = logging.getLogger(__name__)

OPTIONAL_STAGES = frozenset({"rank", "explore"})


class StageGuard:
    def __init__(self, settings: ResilienceSettings, breakers: Breakers) -> None:
        self.settings = settings
        self.breakers = breakers
        self._logged: dict[str, float] = {}

    # ---- stages ----------------------------------------------------------------------------------------
    def skip_stage(self, name: str) -> str | None:
        """Why an optional stage is skipped now (None: run it)."""
        if name not in OPTIONAL_STAGES or self.breakers[f"stage:{name}"].allow():
            return None
        return f"{name}: skipped ({self.breakers[f'stage:{name}'].last_error})"

    def stage_failed(self, name: str, exc: BaseException) -> str | None:
        """An optional stage raised: its note for ``degraded`` (None: a required stage, re-raise)."""
        if name not in OPTIONAL_STAGES:
            return None
        reason = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        log.warning("stage %s %s", name, reason)
        self.breakers[f"stage:{name}"].failure(reason)
        return f"{name}: {reason}"

    def stage_done(self, name: str, seconds: float) -> None:
        budget = self.settings.stage_budget_ms.get(name)
        over = budget is not None and seconds * 1000 > budget
        if name in OPTIONAL_STAGES:
            b = self.breakers[f"stage:{name}"]
            b.failure(f"{seconds * 1000:.0f} ms, over its {budget:.0f} ms budget") if over else b.success()
        elif over and time.monotonic() - self._logged.get(name, -1e9) > 10.0:
            self._logged[name] = time.monotonic()
            log.warning("stage %s took %.0f ms, over its %.0f ms budget", name, seconds * 1000, budget)

    # ---- candidate sources -----------------------------------------------------------------------------
    def source_skipped(self, name: str) -> str | None:
        """Why a source is left out now (None: ask it)."""
        b = self.breakers[f"source:{name}"]
        return None if b.allow() else f"source {name}: skipped ({b.last_error})"

    def source_failed(self, name: str, exc: BaseException) -> str:
        reason = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        log.warning("source %s %s", name, reason)
        self.breakers[f"source:{name}"].failure(reason)
        return f"source {name}: {reason}"

    def source_done(self, name: str, seconds: float) -> None:
        b = self.breakers[f"source:{name}"]
        if seconds * 1000 > self.settings.source_budget_ms:
            b.failure(f"{seconds * 1000:.0f} ms, over its {self.settings.source_budget_ms:.0f} ms budget")
        else:
            b.success()
