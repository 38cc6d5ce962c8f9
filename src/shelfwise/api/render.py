"""An answer's slots as the API writes them, made once per answer.

The answer cache hands the same ``Answer`` object to every request it serves until the shopper's next event, a
catalog change, a new model or rule set. What the event loop makes of its slots — their JSON (every slot a dict,
the scores rounded), the slots counted by reason for the metrics, the set of shown ids, whether every slot is a
fallback — depends on the answer alone, so it is made once and kept on the answer (``Answer.rendered``: it lives
as long as the answer, and a copy of the answer made with ``dataclasses.replace`` starts without it). On a 200-item
re-rank served from the cache this was a quarter of the request's work on the event loop (BENCHMARKS.md,
"Stop 30"). Two threads rendering one answer at once make the same thing twice; either is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import orjson

from shelfwise.request import Answer


@dataclass
class Rendered:
    reasons: dict[str, int]  # slots by reason (``Recommendation.reason``)
    shown: frozenset[str]  # the answer's item ids
    fallback: bool  # ``Answer.fallback``: no slot had evidence
    items: dict[bool, orjson.Fragment] = field(default_factory=dict)  # the slots' JSON, without / with explanations


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


def rendered(answer: Answer) -> Rendered:
    """What the API makes of the answer's slots, made on first use."""
    got = answer.rendered
    if isinstance(got, Rendered):
        return got
    reasons: dict[str, int] = {}
    for r in answer.items:
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    got = Rendered(reasons, frozenset(r.item_id for r in answer.items), answer.fallback)
    answer.rendered = got
    return got


def slots_json(answer: Answer, explain: bool) -> orjson.Fragment:
    """The slots' JSON array, to place in a response body as it is."""
    got = rendered(answer)
    out = got.items.get(explain)
    if out is None:
        out = got.items[explain] = orjson.Fragment(orjson.dumps(slot_dicts(answer, explain),
                                                                option=orjson.OPT_SERIALIZE_NUMPY))
    return out
