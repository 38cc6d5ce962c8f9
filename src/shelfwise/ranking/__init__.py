"""Learning to rank: a LightGBM LambdaMART model re-scores the blend's top-N candidates.

- ``candidates``: the candidate generation the API uses (blend of the placement's sources, exclusions, top-N).
- ``features``: ONE code path computing the (request × candidate) feature tensor, for training and serving.
- ``labels``: training rows from the event history (time split or leave-last-out), graded relevance, IPW.
- ``model``: the ``Ranker`` (LightGBM booster + feature list + item statistics), fit / predict / save / load.
- ``train``: ``fit_ranker`` — fit the sources on the past, label with the future, train the booster.
"""

from shelfwise.ranking.candidates import Candidates, candidates_from_scores, generate_candidates
from shelfwise.ranking.features import FEATURE_GROUPS, ItemStats, compute_features, feature_names
from shelfwise.ranking.labels import GRADES, ipw_weights
from shelfwise.ranking.model import Ranker

__all__ = ["Candidates", "candidates_from_scores", "generate_candidates", "FEATURE_GROUPS", "ItemStats",
           "compute_features", "feature_names", "GRADES", "ipw_weights", "Ranker"]
