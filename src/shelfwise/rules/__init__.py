"""Merchandising rules: a JSON rule language (``schema``), compiled to numpy masks over the item table
(``compile``), versioned in a ``RuleStore`` (``store``), applied by the pipeline's rules stage with shadow
sampling (``stage``), an exposure/shadow log (``log``) and reports (``reports``)."""

from shelfwise.rules.compile import CompiledRules, ItemFacts
from shelfwise.rules.schema import RuleSet, RuleSetInvalid, parse_ruleset
from shelfwise.rules.stage import RulesStage, StaticRules, StoreRules

__all__ = ["CompiledRules", "ItemFacts", "RuleSet", "RuleSetInvalid", "RulesStage", "StaticRules", "StoreRules",
           "parse_ruleset"]
