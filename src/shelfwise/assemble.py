"""The request path, assembled once from settings and a model version's artefacts. Read this to see the order:

    resolve → caps → rules plan → exploration slots → candidates (each source's top-K, union, blend; a rerank
            placement: the shop's list) → learned ranker → shop order (rerank placements) → business score + rules
            → diversity and slots → answer

Exploration slots for new items are part of the serving pipelines only (``explore``: the impression counts the
engine keeps); offline evaluation and training measure and learn the ranking without them.

Used by the API (``service``), the CLI and offline evaluation alike.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from shelfwise.domain import Item
from shelfwise.pipeline import Exploration, Model, Observer, Pipeline
from shelfwise.ranking.features import FeatureContext
from shelfwise.ranking.query import QueryMatcher
from shelfwise.rerank.business import BusinessScorer
from shelfwise.retrieval.als import ALSRetriever
from shelfwise.retrieval.cohort import CohortRetriever
from shelfwise.retrieval.content import ContentRetriever
from shelfwise.retrieval.embedding import IndexFactory
from shelfwise.retrieval.sequence import SequenceRetriever
from shelfwise.retrieval.trending import TrendingRetriever
from shelfwise.rules.preferences import PreferenceMasks
from shelfwise.rules.stage import RulesStage
from shelfwise.stages.base import Stage
from shelfwise.stages.budget import StageGuard
from shelfwise.stages.candidates import CandidateStage
from shelfwise.stages.caps import CapStage
from shelfwise.stages.explore import ExploreStage
from shelfwise.stages.merchandise import MerchandiseStage, RulesPlanStage
from shelfwise.stages.rank import RankStage
from shelfwise.stages.resolve import ResolveStage
from shelfwise.stages.shoporder import ShopOrderStage
from shelfwise.stages.slots import SlotStage


def attach_indexes(model: Model, index_factory: IndexFactory | None) -> None:
    """Give the embedding sources their vector indexes (only catalogs above the exact-search size use one)."""
    for r in model.retrievers.values():
        if isinstance(r, (ALSRetriever, SequenceRetriever, ContentRetriever)):
            r.attach_index(index_factory, model.settings.candidates)


def assemble(model: Model, rules: RulesStage | None = None, index_factory: IndexFactory | None = None,
             observer: Observer | None = None, guard: StageGuard | None = None,
             explore: Exploration | None = None) -> Pipeline:
    """``explore``: give new items exploration slots (``stages.explore``), counting their impressions with
    ``explore.counts`` (None: only their age limits exploration)."""
    if index_factory is not None:  # (without one, the sources keep what they have: none, or the live model's)
        attach_indexes(model, index_factory)
    return _pipeline(model, rules, observer, guard, explore)


def with_items(pipeline: Pipeline, items: Sequence[Item], rules: RulesStage | None = None,
               first_seen: dict[str, float] | None = None) -> Pipeline:
    """``pipeline`` for its item table plus a row per item its model does not know (added after training): a new
    pipeline on a new table, the sources as fitted (their indexes too), so requests running on ``pipeline``
    finish on the table they began with. ``pipeline`` itself when every item is known. ``first_seen``: when the
    catalog first stored them (``ItemTable.with_items``)."""
    table = pipeline.items.with_items(items, first_seen)
    if table is pipeline.items:
        return pipeline
    return _pipeline(replace(pipeline.model, items=table), rules, pipeline.observer, pipeline.guard,
                     pipeline.explore)


def _pipeline(model: Model, rules: RulesStage | None, observer: Observer | None,
              guard: StageGuard | None = None, explore: Exploration | None = None) -> Pipeline:
    s = model.settings
    items, retrievers = model.items, model.retrievers
    trending = retrievers.get("trending")
    business = BusinessScorer(items, s.business,
                              trending.global_score if isinstance(trending, TrendingRetriever) else None)
    als = retrievers.get("als")
    depth = {p: model.ranker.settings.candidates for p in model.ranker.settings.placements} if model.ranker else {}
    candidates = CandidateStage(retrievers, s.candidates, depth, s.preferences.candidates)
    # a shopper's stated preferences: tags and size attributes are read through the rules' catalog facts
    preferences = PreferenceMasks(items, rules.facts if rules is not None else lambda _: None, s.preferences)
    stages: list[Stage] = [ResolveStage(items, model.shopper_index, model.trained_until, preferences)]
    if s.caps.placements or s.caps.removed_penalty > 0:
        stages.append(CapStage(items, s.caps))
    if rules is not None:
        stages.append(RulesPlanStage(rules, items, candidates.fallback_order))
    content = retrievers.get("content")
    if explore is not None and s.explore.enabled and any(p.explore > 0 for p in s.placements.values()):
        stages.append(ExploreStage(items, s.explore, content if isinstance(content, ContentRetriever) else None,
                                   explore.counts))
    stages.append(candidates)
    n_candidate_stages = len(stages)
    # the query-item text match (titles through the rules' catalog facts): the shop-order stage's and the search
    # ranker's
    matcher = QueryMatcher(items, rules.facts if rules is not None else lambda _: None)
    main = model.ranker if model.ranker is not None and model.ranker.stats is not None else None
    search = model.search_ranker if model.search_ranker is not None and model.search_ranker.stats is not None else None
    if main is not None or search is not None:
        ctx = FeatureContext.build(items, main.stats, main.spec, retrievers) if main is not None else None
        search_ctx = (search, FeatureContext.build(items, search.stats, search.spec, retrievers, matcher,
                                                   search.searches)) \
            if search is not None else None
        stages.append(RankStage(main, ctx, tuple(n for n, r in retrievers.items() if r.new_shoppers_only),
                                search_ctx))
    slots = SlotStage(items, business, s.business, als.unit_factors if isinstance(als, ALSRetriever) else None,
                      model.version, rules, {n: r.fallback_reason for n, r in retrievers.items() if not r.evidence},
                      cohort if isinstance(cohort := retrievers.get("cohort"), CohortRetriever) else None)
    after = [MerchandiseStage(business, s.preferences), slots]
    # rerank placements (the shop's own list) blend the personal order with the shop's before merchandising; the
    # rails never run that stage
    shop = ShopOrderStage(matcher)
    return Pipeline(model, stages + after, n_candidate_stages, observer=observer, guard=guard, explore=explore,
                    on_catalog_change=[business.invalidate, slots.invalidate], rerank_stages=stages + [shop] + after)
