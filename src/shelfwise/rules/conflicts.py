"""Conflicts between rules, found before they bite: pairs of rules that can apply to the same request and
contradict each other on the same items or slots.

The resolution itself is deterministic (``compile.py``: block beats everything, a pin of strictly higher priority
survives a filter or margin floor, claims on a taken slot move down); this module says *where* it will happen, so a
merchandiser sees "pin hero never shows p7: blocked by no-knives" when editing, not after a complaint. Rules are
compiled over the serving model's item table (the same masks serving uses), and two rules can meet when their
placements, devices and time windows overlap (segment conditions are not compared: a storefront decides them).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from shelfwise.items import ItemTable
from shelfwise.rules.compile import CompiledRule, CompiledRules, ItemFacts
from shelfwise.rules.schema import RuleSet

EXAMPLES = 3


def _meet(a: CompiledRule, b: CompiledRule) -> bool:
    """Can both rules be active on one request?"""
    if a.placements is not None and b.placements is not None and not a.placements & b.placements:
        return False
    if a.devices is not None and b.devices is not None and not a.devices & b.devices:
        return False
    return max(a.start, b.start) < min(a.end, b.end)


def _claims(r: CompiledRule) -> range | None:
    """The slots (1-based) a pin or reserved slot rule asks for."""
    a = r.rule.action
    if a.type == "pin":
        return range(a.slot, a.slot + max(len(r.pin_items), 1))
    if a.type == "slot":
        return range(a.position, a.position + a.count)
    return None


def _removed(r: CompiledRule, items: ItemTable) -> np.ndarray | None:
    """Items a filter or a dropping margin floor removes (bool over the table); None for other rules."""
    a = r.rule.action
    if a.type == "filter":
        return ~r.mask
    if a.type == "margin_floor" and a.mode == "drop":
        with np.errstate(invalid="ignore"):
            low = items.margin < a.min_margin
        if a.unknown == "drop":
            low |= ~np.isfinite(items.margin)
        return r.mask & low
    return None


def find_conflicts(rulesets: Sequence[tuple[str, RuleSet]], items: ItemTable, facts: ItemFacts | None = None,
                   ) -> list[dict[str, Any]]:
    """Conflicts among the rules of ``rulesets`` (enabled ones), most severe first. Each: ``kind``, ``severity``
    (``conflict``: a rule loses some or all of its effect; ``overlap``: two rules pull the same items both ways),
    ``rules`` (their "ruleset/rule" keys, the winner first), ``detail`` and ``items`` (how many, with examples)."""
    compiled = CompiledRules(list(rulesets), items, facts)
    rules = compiled.rules  # in resolution order: priority, rule set id, position
    ids = items.ids
    out: list[dict[str, Any]] = []

    def add(kind: str, severity: str, winner: CompiledRule, loser: CompiledRule, detail: str,
            hit: np.ndarray | list[str] | None = None) -> None:
        if isinstance(hit, np.ndarray):
            hit = [str(x) for x in ids[np.flatnonzero(hit)[:EXAMPLES]]] if hit.dtype == bool else \
                [str(ids[j]) for j in hit[:EXAMPLES]]
        out.append({"kind": kind, "severity": severity, "rules": [winner.key, loser.key], "detail": detail,
                    "examples": list(hit or [])})

    blocks = [r for r in rules if r.kind == "block"]
    for i, r in enumerate(rules):
        kind = r.kind
        if kind == "pin" and len(r.pin_items):
            for b in blocks:
                if b is not r and _meet(r, b):
                    hit = r.pin_items[b.mask[r.pin_items]]
                    if len(hit):
                        add("pin_blocked", "conflict", b, r, f"{len(hit)} pinned item(s) of {r.key} are blocked by "
                                                             f"{b.key} and never show", hit)
            for other in rules:
                removed = _removed(other, items)
                if removed is None or not _meet(r, other) or r.rule.priority > other.rule.priority:
                    continue
                hit = r.pin_items[removed[r.pin_items]]
                if len(hit):
                    what = "filters out" if other.kind == "filter" else "drops (below its margin floor)"
                    add("pin_removed", "conflict", other, r,
                        f"{other.key} {what} {len(hit)} item(s) pinned by {r.key}; a pin needs a strictly higher "
                        f"priority than the {other.kind} ({r.rule.priority} ≤ {other.rule.priority})", hit)
        if kind in ("boost", "bury", "slot"):
            for b in blocks:
                if b is r or not _meet(r, b):
                    continue
                both = r.mask & b.mask
                n, mine = int(both.sum()), int(r.mask.sum())
                if n:
                    scope = "all" if n == mine else f"{n} of the {mine}"
                    add(f"{kind}_blocked", "conflict", b, r, f"{scope} item(s) {r.key} {kind}s are blocked by "
                                                             f"{b.key}", both)
        for other in rules[i + 1:]:
            if not _meet(r, other):
                continue
            if {kind, other.kind} == {"boost", "bury"}:
                both = r.mask & other.mask
                if both.any():
                    add("boost_bury", "overlap", r, other, f"{r.key} ({kind}) and {other.key} ({other.kind}) both "
                                                           f"apply to {int(both.sum())} item(s): their effects "
                                                           "multiply", both)
            mine, theirs = _claims(r), _claims(other)
            if mine is not None and theirs is not None:
                taken = sorted(set(mine) & set(theirs))
                if taken:
                    add("slot_claim", "conflict", r, other,
                        f"{r.key} and {other.key} both claim slot {taken[0]}"
                        + (f"-{taken[-1]}" if len(taken) > 1 else "")
                        + f"; {r.key} wins (higher priority or earlier), {other.key} moves to the next free slot")
            if kind == "pin" and other.kind == "pin" and len(r.pin_items) and len(other.pin_items):
                same = np.intersect1d(r.pin_items, other.pin_items)
                if len(same):
                    add("pin_twice", "overlap", r, other, f"{len(same)} item(s) are pinned by both {r.key} and "
                                                          f"{other.key}: shown once, where {r.key} puts them", same)
    out.sort(key=lambda c: (c["severity"] != "conflict", c["rules"]))
    return out


def involved(conflicts: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Rule key → the details of the conflicts it is part of (to mark rules in a listing)."""
    out: dict[str, list[str]] = {}
    for c in conflicts:
        for key in c["rules"]:
            out.setdefault(key, []).append(c["detail"])
    return out

