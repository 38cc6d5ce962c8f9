"""The experiment document: every bad input named by its path; a variant's configuration applied to the pipeline
settings exactly as declared."""

from __future__ import annotations

import pytest

from shelfwise.experiments.config import apply_config, effective_k, merge_configs, validate_spec
from shelfwise.experiments.schema import ExperimentInvalid, VariantConfig, parse_spec
from shelfwise.settings import load_settings

MODELS = load_settings().models


def doc(**kw) -> dict:
    base = {"id": "exp-1", "variants": [{"name": "control", "share": 0.5},
                                        {"name": "treatment", "share": 0.5, "config": {"k": 8}}]}
    return base | kw


def errors(document: dict) -> list[dict[str, str]]:
    with pytest.raises(ExperimentInvalid) as ei:
        validate_spec(parse_spec(document), MODELS)
    return ei.value.errors


@pytest.mark.parametrize("document, path, reason", [
    (doc(variants=[{"name": "a", "share": 0.5}, {"name": "b", "share": 0.4}]), "variants[*].share",
     "variant shares must sum to 1; they sum to 0.9 (a=0.5, b=0.4)"),
    (doc(variants=[{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5, "config": {"colour": "red"}}]),
     "variants[1].config.colour", "unknown variant setting 'colour'; known: exploration, k, model_version, "
                                  "placements, ranker, ruleset"),
    (doc(variants=[{"name": "a", "share": 0.5},
                   {"name": "b", "share": 0.5, "config": {"placements": {"homepage": {"weigths": {"als": 1}}}}}]),
     "variants[1].config.placements.homepage.weigths", "unknown placement setting 'weigths'; known: diversity, "
                                                       "exclude_history, k, score, weights"),
    (doc(variants=[{"name": "a", "share": 0.5},
                   {"name": "b", "share": 0.5, "config": {"placements": {"checkout": {"k": 3}}}}]),
     "variants[1].config.placements.checkout", "unknown placement 'checkout'; known: cart_upsell, category, "
                                               "email_weekly, homepage, pdp_fbt, pdp_similar, search, "
                                               "wishlist_alerts"),
    (doc(variants=[{"name": "a", "share": 0.5},
                   {"name": "b", "share": 0.5, "config": {"placements": {"homepage": {"weights": {"magic": 1}}}}}]),
     "variants[1].config.placements.homepage.weights.magic", "unknown candidate source 'magic'"),
    (doc(variants=[{"name": "a", "share": 0.5},
                   {"name": "b", "share": 0.5, "config": {"placements": {"homepage": {"score": {"luck": 1}}}}}]),
     "variants[1].config.placements.homepage.score.luck", "unknown score setting 'luck'; known: freshness, margin"),
    (doc(variants=[{"name": "a", "share": 0.5},
                   {"name": "b", "share": 0.5, "config": {"placements": {"homepage": {"diversity": {"mmr_lambda": 2}}}}}]),
     "variants[1].config.placements.homepage.diversity.mmr_lambda", "less than or equal to 1"),
    (doc(variants=[{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5, "config": {"k": 500}}]),
     "variants[1].config.k", "at most api.max_k = 200"),
    (doc(variants=[{"name": "a", "share": 0.5}, {"name": "a", "share": 0.5}]), "variants",
     "variant names must be unique; repeated: ['a']"),
    (doc(control="nobody"), "control", "control 'nobody' is not a variant"),
    (doc(layer_range=[0.6, 0.2]), "layer_range", "layer_range must satisfy 0 <= from < to <= 1, got [0.6, 0.2)"),
    (doc(id="Bad Id"), "id", "String should match pattern"),
    (doc(placements=["nowhere"]), "placements[0]", "unknown placement 'nowhere'"),
    (doc(kind="interleave", variants=[{"name": "a", "share": 0.2}, {"name": "b", "share": 0.3},
                                      {"name": "c", "share": 0.5}]), "variants",
     "an interleave experiment compares exactly 2 variants"),
    (doc(guardrails=[{"metric": "ctr"}]), "guardrails[0]", "guardrail ctr needs max_drop"),
    (doc(guardrails=[{"metric": "p95_latency_ms", "max_drop": 0.1}]), "guardrails[0]",
     "guardrail p95_latency_ms needs max_value and/or max_increase"),
    (doc(traffic=0), "traffic", "greater than 0"),
    (doc(colour="red"), "colour", "unknown experiment field 'colour'"),
])
def test_bad_documents_name_the_problem(document, path, reason):
    errs = errors(document)
    assert any(e["path"] == path and reason in e["reason"] for e in errs), errs


def test_not_an_object():
    with pytest.raises(ExperimentInvalid, match="an experiment is a JSON object"):
        parse_spec([1, 2])


def test_defaults_and_warnings():
    spec = parse_spec(doc())
    assert spec.salt_value == "exp-1" and spec.control_name == "control" and spec.layer == "default"
    assert [(g.metric, g.max_drop) for g in spec.guardrails] == [("ctr", 0.03)]  # the default guardrail
    assert validate_spec(spec, MODELS) == []
    same = parse_spec(doc(variants=[{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5}]))
    assert validate_spec(same, MODELS) == [{"path": "variants[1].config",
                                            "reason": "same configuration as control 'a' (an A/A test?)"}]


def test_apply_config_overrides_only_what_the_variant_declares():
    config = VariantConfig.model_validate({"placements": {
        "homepage": {"weights": {"covisit": 1.0, "als": 0.8}, "score": {"margin": 0.3},
                     "diversity": {"mmr_lambda": 0.7}, "exclude_history": "all"}}})
    out = apply_config(MODELS, config)
    home = out.placements["homepage"]
    assert home.weights == {"covisit": 1.0, "als": 0.8}
    assert home.score.margin == 0.3 and home.score.relevance == MODELS.placements["homepage"].score.relevance
    assert home.diversity.mmr_lambda == 0.7 and home.diversity.pool == MODELS.placements["homepage"].diversity.pool
    assert home.exclude_history == "all"
    assert out.placements["pdp_fbt"] == MODELS.placements["pdp_fbt"]
    assert MODELS.placements["homepage"].weights != home.weights  # the running settings are untouched
    assert apply_config(MODELS, config) is out  # cached per (settings, config)
    assert apply_config(MODELS, VariantConfig()) is MODELS


def test_merge_configs_and_effective_k():
    a = VariantConfig.model_validate({"k": 8, "placements": {"homepage": {"weights": {"als": 1}}}})
    b = VariantConfig.model_validate({"ruleset": "summer@2", "k": 10, "placements": {"homepage": {"k": 4}}})
    merged, conflicts = merge_configs([a, b])
    assert merged.k == 8 and merged.ruleset == "summer@2" and conflicts == ["k"]
    assert merged.placements["homepage"].weights == {"als": 1} and merged.placements["homepage"].k == 4
    assert effective_k(12, "homepage", merged) == 4
    assert effective_k(12, "pdp_fbt", merged) == 8
    assert effective_k(12, "pdp_fbt", VariantConfig()) == 12
    assert merge_configs([]) == (VariantConfig(), [])
