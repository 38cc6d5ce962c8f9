"""Query-item text match for search re-ranking: how much of a shopper's search query an item's catalog text covers.

An item's terms are the words of its title, its category path and its brand; a query's terms the words of the
query. Words are case-folded runs of letters and digits, with a plain English plural ending dropped ("cases" →
"case", "batteries" → "battery"), so "phone case" matches "Rugged Case" in "Accessories > Phone Cases". The match of
an item is the share of the query's distinct terms it has, in [0, 1].

The terms are indexed once per item table and catalog facts (an inverted index: term → items), read from the
rules' catalog facts (``ItemFacts``: titles, brands); a query costs one look-up per term. Used only when a rerank
request carries a query (``stages/shoporder.py``): the rails never compute it.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np

from shelfwise.items import ItemTable
from shelfwise.rules.compile import ItemFacts

_WORD = re.compile(r"[^\W_]+")


def terms(text: str) -> list[str]:
    """The case-folded words of ``text``, plural endings dropped."""
    out = []
    for w in _WORD.findall(text.casefold()):
        if len(w) > 4 and w.endswith("ies"):
            w = w[:-3] + "y"
        elif len(w) > 4 and w.endswith(("sses", "xes", "zes", "ches", "shes")):
            w = w[:-2]
        elif len(w) > 2 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
            w = w[:-1]
        out.append(w)
    return out


class QueryMatcher:
    def __init__(self, items: ItemTable, facts: Callable[[ItemTable], ItemFacts | None]) -> None:
        self.items, self.facts = items, facts
        self._key: tuple = ()
        self._index: dict[str, np.ndarray] = {}

    def _built(self) -> dict[str, np.ndarray]:
        facts = self.facts(self.items)
        key = (id(facts), len(self.items))
        if key != self._key:
            items = self.items
            posting: dict[str, list[int]] = {}
            titles = facts.titles if facts is not None and len(facts.titles) == len(items) else None
            for i in range(len(items)):
                words = set(terms(titles[i])) if titles is not None else set()
                c = int(items.category[i])
                if 0 <= c < len(items.category_names):
                    words.update(terms(items.category_names[c]))
                b = int(items.brand[i])
                if 0 <= b < len(items.brand_names):
                    words.update(terms(items.brand_names[b]))
                for w in words:
                    posting.setdefault(w, []).append(i)
            self._index = {w: np.array(v, np.int64) for w, v in posting.items()}
            self._key = key
        return self._index

    def match(self, query: str, items: np.ndarray) -> np.ndarray:
        """(len(items),) float32: the share of the query's distinct terms each item (an index, -1 = none) has."""
        words = list(dict.fromkeys(terms(query)))
        out = np.zeros(items.shape, np.float32)
        if not words:
            return out
        index = self._built()
        for w in words:
            hit = index.get(w)
            if hit is not None:
                out += np.isin(items, hit)
        return out / len(words)
