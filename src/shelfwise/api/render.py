"""An answer's slots as the API writes them, made once per answer.

The answer cache hands the same ``Answer`` object to every request it serves until the shopper's next event, a
catalog change, a new model or rule set. What the event loop makes of its slots — their JSON (every slot a dict,
the scores rounded), the slots counted by reason for the metrics, the set of shown ids, whether every slot is a
fallback — depends on the answer
alone, so it is made once and kept beside the answer while the answer is in use. On a 200-item re-rank served from
the cache this was a quarter of the request's work on the event loop (BENCHMARKS.md, "Stop 30").

Entries are keyed by the answer object's identity and hold the answer itself, so an id is never reused while its
entry lives; the least recently used go first. Only the event loop calls this (a lock keeps it safe anyway).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import orjson

from shelfwise.request import Answer


@dataclass
class Rendered:
    answer: Answer  # held: the key (its id) stays this answer's while the entry lives
    reasons: dict[str, int]  # slots by reason (``Recommendation.reason``)
    shown: frozenset[str]  # the answer's item ids
    fallback: bool  # ``Answer.fallback``: no slot had evidence
    items: dict[bool, orjson.Fragment]  # the slots' JSON array, without / with each slot's explanation


def slot_dicts(answer: Answer, explain: bool) -> list[dict]:
    """The answer's slots as the API writes them (scores rounded to 6 decimals in one numpy pass: the same values as
    ``round(score, 6)`` on these float32 scores, at half the cost of Python's round per slot)."""
    recs = answer.items
    scores = np.round(np.fromiter((r.score for r in recs), np.float64, len(recs)), 6).tolist()
    if explain:
        return [{"item_id": r.item_id, "score": s, "sources": r.sources, "reason": r.reason,
                 "fallback": r.fallback, "explanation": r.explanation} for r, s in zip(recs, scores)]
    return [{"item_id": r.item_id, "score": s, "sources": r.sources, "reason": r.reason,
             "fallback": r.fallback} for r, s in zip(recs, scores)]


class RenderedAnswers:
    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._entries: OrderedDict[int, Rendered] = OrderedDict()
        self._lock = threading.Lock()

    def of(self, answer: Answer) -> Rendered:
        key = id(answer)
        with self._lock:
            got = self._entries.get(key)
            if got is not None and got.answer is answer:
                self._entries.move_to_end(key)
                return got
        reasons: dict[str, int] = {}
        for r in answer.items:
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
        got = Rendered(answer, reasons, frozenset(r.item_id for r in answer.items), answer.fallback, {})
        with self._lock:
            self._entries[key] = got
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return got

    def items(self, answer: Answer, explain: bool) -> orjson.Fragment:
        """The slots' JSON array, to place in a response body as it is."""
        got = self.of(answer)
        out = got.items.get(explain)
        if out is None:
            out = got.items[explain] = orjson.Fragment(orjson.dumps(slot_dicts(answer, explain),
                                                                   option=orjson.OPT_SERIALIZE_NUMPY))
        return out
