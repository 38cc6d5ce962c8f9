"""The ranker: a LightGBM LambdaMART booster over the shared features, plus the business (margin) blend.

Serving (the ranking stage, ``stages/rank.py``) takes the blend's top N candidates, computes their features in one
batched call and re-orders them by

    final = minmax(ranker score over the request's candidates) + margin_weight · expected margin / max over them

where expected margin = price × margin rate of the candidate (0 when unknown). ``margin_weight = 0`` (default) is
pure relevance; raising it trades relevance for margin (``benchmarks/rank_margin.py`` draws the curve).
"""

from __future__ import annotations

import hashlib
from importlib.metadata import version as _version
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from shelfwise.items import ItemTable
from shelfwise.ranking.features import (FeatureContext, FeatureSpec, ItemStats, SearchStats, compute_features,
                                        feature_names)
from shelfwise.ranking.labels import RankRows
from shelfwise.request import Candidates, Query, RecRequest
from shelfwise.settings import RankerSettings, known_fields

RANKER, SEARCH_RANKER = "ranker", "search_ranker"  # the names of a model version's boosters (their files' stem)
log = logging.getLogger(__name__)


def lgb_params(s: RankerSettings) -> dict[str, Any]:
    return {"objective": s.objective, "metric": "ndcg", "eval_at": [10], "learning_rate": s.learning_rate,
            "num_leaves": s.num_leaves, "max_depth": s.max_depth, "min_data_in_leaf": s.min_data_in_leaf,
            "feature_fraction": s.feature_fraction, "bagging_fraction": s.bagging_fraction,
            "bagging_freq": s.bagging_freq, "lambda_l2": s.lambda_l2, "max_bin": s.max_bin,
            "lambdarank_truncation_level": s.truncation_level, "label_gain": list(s.label_gain),
            "num_threads": s.threads, "seed": s.seed, "deterministic": True, "force_row_wise": True,
            "verbosity": -1}


class Ranker:
    def __init__(self, settings: RankerSettings, spec: FeatureSpec, stats: ItemStats | None = None,
                 booster: Any = None, report: dict[str, Any] | None = None, name: str = RANKER) -> None:
        """``name``: which of the model's boosters (``RANKER``, or ``SEARCH_RANKER``: its ``settings.placements``
        are then the search placements), the stem of its files."""
        self.name = name
        self.settings = settings
        self.spec = spec
        self.stats = stats
        self.booster = booster
        self.report: dict[str, Any] = report or {}
        self.feature_names = feature_names(spec)
        self.compiled: Any = None  # lleaves.Model once ``compile`` succeeded
        self.searches: SearchStats | None = None  # the search ranker's: the logged searches' item statistics

    # ---- training -------------------------------------------------------------------------------------
    def fit(self, train: RankRows, valid: RankRows | None = None) -> "Ranker":
        import lightgbm as lgb

        s = self.settings
        t0 = time.perf_counter()
        dtrain = lgb.Dataset(train.X, train.y, group=train.group, weight=train.weight,
                             feature_name=self.feature_names, free_raw_data=True)
        sets, callbacks = [], []
        if valid is not None and len(valid.group):
            sets = [lgb.Dataset(valid.X, valid.y, group=valid.group, weight=valid.weight, reference=dtrain)]
            callbacks = [lgb.early_stopping(s.early_stopping_rounds, verbose=False)]
        evals: dict[str, Any] = {}
        callbacks.append(lgb.record_evaluation(evals))
        self.booster = lgb.train(lgb_params(s), dtrain, num_boost_round=s.num_boost_round, valid_sets=sets,
                                 valid_names=["valid"][:len(sets)], callbacks=callbacks)
        best = self.booster.best_iteration or self.booster.current_iteration()
        if best and best < self.booster.current_iteration():
            self.booster = lgb.Booster(model_str=self.booster.model_to_string(num_iteration=best))
        curve = evals.get("valid", {}).get("ndcg@10", [])
        self.report.update(train_groups=int(len(train.group)), train_rows=int(len(train.y)),
                           valid_groups=int(len(valid.group)) if valid is not None else 0,
                           best_iteration=int(best), valid_ndcg10=round(float(max(curve)), 5) if curve else None,
                           fit_seconds=round(time.perf_counter() - t0, 1))
        return self

    def importances(self, kind: str = "gain") -> dict[str, float]:
        """Feature importances (``gain`` or ``split``), largest first, normalised to sum 1."""
        if self.booster is None:
            return {}
        imp = np.asarray(self.booster.feature_importance(importance_type=kind), np.float64)
        total = imp.sum() or 1.0
        pairs = sorted(zip(self.feature_names, imp / total), key=lambda x: -x[1])
        return {k: round(float(v), 5) for k, v in pairs}

    # ---- scoring --------------------------------------------------------------------------------------
    def applies(self, placement: str) -> bool:
        return self.booster is not None and self.settings.enabled and placement in self.settings.placements

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Ranker scores of a (B, N, F) tensor → (B, N), one thread."""
        b, n, f = X.shape
        if b * n == 0:
            return np.zeros((b, n))
        flat = np.ascontiguousarray(X.reshape(b * n, f), dtype=np.float32)
        if self.compiled is not None:
            try:
                return _predict_compiled(self.compiled, flat).reshape(b, n)
            except AttributeError:  # lleaves internals moved: its public call (which leaves cyclic garbage)
                return np.asarray(self.compiled.predict(flat, n_jobs=1)).reshape(b, n)
        try:
            out = _predict_fast(self.booster, flat)
        except (AttributeError, ImportError, TypeError):  # LightGBM internals moved: the public (slower) call
            out = self.booster.predict(flat, num_threads=1)
        return np.asarray(out).reshape(b, n)

    def compile(self, folder: Path) -> bool:
        """Predict through native code compiled from the booster (lleaves, LLVM): the same scores (to 1e-12) about
        5× faster than LightGBM's own predict on the request path's ~100-row batches. The machine code is cached
        in ``folder`` per CPU model and feature set (another host compiles its own). False when lleaves is not
        installed or compilation failed: LightGBM predicts then."""
        if not self.settings.compile or self.booster is None:
            return False
        try:
            import lleaves
            from llvmlite import binding
        except ImportError:
            return False
        model_file = folder / f"{self.name}.txt"
        if not model_file.exists():
            self.booster.save_model(str(model_file))
        host = f"{binding.get_host_cpu_name()}|{binding.get_host_cpu_features().flatten()}|{_version('lleaves')}"
        tag = hashlib.blake2b(host.encode(), digest_size=6).hexdigest()
        cache = folder / f"{self.name}-{tag}.native"
        try:
            compiled = lleaves.Model(model_file=str(model_file))
            if cache.exists():
                compiled.compile(cache=str(cache))
            else:  # compile to a private file, then move it in place: concurrent loaders never read half a file
                tmp = folder / f".{self.name}-{tag}.{os.getpid()}.tmp"
                compiled.compile(cache=str(tmp))
                try:
                    tmp.replace(cache)
                except OSError:  # a read-only model directory: compiled in memory all the same
                    pass
        except Exception as exc:  # noqa: BLE001 - any compiler failure: fall back to LightGBM, say why
            log.warning("ranker not compiled (LightGBM predicts instead): %s", exc)
            return False
        self.compiled = compiled
        return True

    def score(self, ctx: FeatureContext, requests: Sequence[RecRequest], queries: Sequence[Query],
              cand: Candidates, margin_weight: float | None = None) -> np.ndarray:
        """Final scores (B, N) of the candidates (``-inf`` on pads): relevance + margin_weight · margin."""
        rel = self.predict(compute_features(ctx, requests, queries, cand))
        w = self.settings.margin_weight if margin_weight is None else margin_weight
        return combine(rel, cand, ctx.items, w)

    # ---- persistence ----------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        assert self.booster is not None and self.stats is not None
        self.booster.save_model(str(path / f"{self.name}.txt"))
        meta = {"feature_names": self.feature_names, "spec": {"sources": self.spec.sources,
                "embeddings": self.spec.embeddings, "session_gap_s": self.spec.session_gap_s,
                "search": self.spec.search},
                "settings": self.settings.model_dump(mode="json"), "report": self.report,
                "importance_gain": self.importances("gain")}
        (path / f"{self.name}.json").write_text(json.dumps(meta, indent=1))
        self.stats.save(path, f"{self.name}_stats")
        if self.searches is not None:
            self.searches.save(path, f"{self.name}_searches")

    @classmethod
    def load(cls, path: Path, settings: RankerSettings | None = None, name: str = RANKER) -> "Ranker":
        """``settings``: the serving settings (a search ranker's placements are then ``search_placements``)."""
        import lightgbm as lgb

        meta = json.loads((path / f"{name}.json").read_text())
        spec = FeatureSpec(**meta["spec"])
        settings = settings or RankerSettings.model_validate(known_fields(RankerSettings, meta["settings"]))
        if name == SEARCH_RANKER:
            settings = settings.for_search()
        obj = cls(settings, spec, ItemStats.load(path, f"{name}_stats"),
                  lgb.Booster(model_file=str(path / f"{name}.txt")), meta.get("report"), name)
        if (path / f"{name}_searches.npz").exists():
            obj.searches = SearchStats.load(path, f"{name}_searches")
        if obj.feature_names != meta["feature_names"]:
            raise ValueError("saved ranker's feature list does not match this code's features")
        return obj

    @staticmethod
    def exists(path: Path, name: str = RANKER) -> bool:
        return (path / f"{name}.json").exists() and (path / f"{name}.txt").exists()


def _predict_fast(booster: Any, flat: np.ndarray) -> np.ndarray:
    """``LGBM_BoosterPredictForMat`` on a C-contiguous float32 matrix, skipping the Python wrapper's per-call
    predictor construction and parameter parsing (about half of the predict time for 120 rows). Same C call and
    result as ``booster.predict(flat, num_threads=1)`` (a test checks). The arrays go in by address: numpy's
    ``ctypes.data_as`` casts, and a ctypes cast is a reference cycle — two objects a request left for the garbage
    collector's full pass, the only cyclic garbage of a rails request (tests/unit/test_ranking.py)."""
    import ctypes

    from lightgbm.basic import _C_API_DTYPE_FLOAT32, _C_API_IS_ROW_MAJOR, _C_API_PREDICT_NORMAL, _LIB, _safe_call

    rows, cols = flat.shape
    out = np.empty(rows, np.float64)
    got = ctypes.c_int64(0)
    _safe_call(_LIB.LGBM_BoosterPredictForMat(
        booster._handle, ctypes.c_void_p(flat.ctypes.data), ctypes.c_int(_C_API_DTYPE_FLOAT32),
        ctypes.c_int32(rows), ctypes.c_int32(cols), ctypes.c_int(_C_API_IS_ROW_MAJOR),
        ctypes.c_int(_C_API_PREDICT_NORMAL), ctypes.c_int(0), ctypes.c_int(-1), ctypes.c_char_p(b"num_threads=1"),
        ctypes.byref(got), ctypes.c_void_p(out.ctypes.data)))
    if got.value != rows:
        raise TypeError("unexpected prediction length")
    return out


def _predict_compiled(compiled: Any, flat: np.ndarray) -> np.ndarray:
    """``compiled.predict(flat, n_jobs=1)`` (an lleaves model, one output per row): the same native call, with the
    arrays' pointers cast from their addresses instead of through numpy's ``data_as`` (see ``_predict_fast``)."""
    import ctypes

    if not compiled.is_compiled or compiled._n_classes != 1 or flat.shape[1] != compiled.num_feature():
        raise AttributeError("not a compiled one-output model of these features")
    dtype, ctype = (np.float64, ctypes.c_double) if compiled.use_fp64 else (np.float32, ctypes.c_float)
    data = np.ascontiguousarray(flat, dtype)
    out = np.zeros(len(data), dtype)
    pointer = ctypes.POINTER(ctype)
    compiled._c_entry_func(ctypes.cast(data.ctypes.data, pointer), ctypes.cast(out.ctypes.data, pointer), 0,
                           len(data))
    return out


def expected_margin(items: ItemTable, cand: Candidates) -> np.ndarray:
    """price × margin rate of each candidate (0 when unknown or on pads)."""
    c = np.where(cand.valid, cand.items, 0)
    m = items.price[c] * items.margin[c]
    return np.where(cand.valid & np.isfinite(m), np.maximum(m, 0.0), 0.0)


def combine(rel: np.ndarray, cand: Candidates, items: ItemTable, margin_weight: float) -> np.ndarray:
    """minmax(relevance) + w · expected margin / row max; ``-inf`` on pads."""
    valid = cand.valid
    lo = np.where(valid, rel, np.inf).min(axis=1, keepdims=True, initial=np.inf)
    hi = np.where(valid, rel, -np.inf).max(axis=1, keepdims=True, initial=-np.inf)
    span = np.where(np.isfinite(hi - lo) & (hi > lo), hi - lo, 1.0)
    final = np.where(valid, (rel - np.where(np.isfinite(lo), lo, 0.0)) / span, -np.inf)
    if margin_weight:
        m = expected_margin(items, cand)
        mmax = m.max(axis=1, keepdims=True)
        final = final + margin_weight * np.divide(m, mmax, out=np.zeros_like(m), where=mmax > 0)
    return final
