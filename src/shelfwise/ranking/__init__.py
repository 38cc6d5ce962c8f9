"""Learning to rank: a LightGBM LambdaMART model re-scores the blend's top-N candidates.

- ``features``: ONE code path computing the (request × candidate) feature tensor, for training and serving.
- ``labels``: training rows from the event history (time split or leave-last-out), graded relevance, IPW.
- ``model``: the ``Ranker`` (LightGBM booster + feature list + item statistics), fit / predict / save / load.
- ``train``: ``train_ranker`` — label requests after a cut, build rows from the prefix pipeline's candidates, fit.
- ``search``: the search ranker — logged searches (their results and what the shopper acted on next) as requests,
  the shared features plus the search ones (``FeatureSpec.search``), fit like the ranker; serves ``search``.
"""

from shelfwise.ranking.features import FEATURE_GROUPS, FeatureContext, ItemStats, compute_features, feature_names
from shelfwise.ranking.labels import GRADES, ipw_weights
from shelfwise.ranking.model import Ranker

__all__ = ["FEATURE_GROUPS", "FeatureContext", "ItemStats", "compute_features", "feature_names", "GRADES",
           "ipw_weights", "Ranker"]
