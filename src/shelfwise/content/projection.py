"""A learned map from content vectors into the space of a collaborative item embedding.

Trained on warm items only (items with enough interactions that their collaborative vector means something), it
regresses each warm item's collaborative direction (the unit vector: ALS and sequence-model neighbours are taken
by cosine) from its content vector. A new item's projected vector then lands near the warm items it resembles,
and can be searched against (or added to) an index over the collaborative vectors.

Three maps (``ContentSettings.projection``):

* ``ridge``: ``W = (XᵀX + αI)⁻¹ XᵀY`` with a bias, closed form in float64; α is chosen from ``ridge_alphas`` by
  the neighbour recall on a validation slice of the warm items.
* ``mlp``: ``Linear → GELU → Dropout → Linear`` trained with torch (Adam, cosine loss, early stopping on the
  validation slice's cosine); served in numpy (no torch at serving time).
* ``knn``: the ridge map, then a soft nearest-neighbour vote in its output space: the projected vector is the
  softmax(similarity / T)-weighted mean of the *true* collaborative vectors of the m warm items whose ridge
  projections are nearest. A new item thus lands among the warm items it resembles, at their real collaborative
  positions rather than at a linear estimate. m and T are chosen from ``knn_neighbours`` × ``knn_temperatures``
  by validation recall; it stores the warm items' ridge projections and collaborative vectors (2 · n_warm · d).

Both output unit vectors. ``neighbour_recall`` is the measure: for held-out warm items, the share of the true
top-k collaborative neighbours (cosine, among the reference items) found by the projected vector's top-k.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
from scipy.special import erf

Kind = Literal["ridge", "mlp", "knn"]


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def true_neighbours(targets: np.ndarray, reference: np.ndarray, k: int, exclude: np.ndarray | None = None,
                    chunk: int = 2048) -> np.ndarray:
    """Top-k reference rows (indices) by cosine to each target vector; ``exclude[r]`` (a reference index or -1)
    is never returned for target r (the item itself, when it is among the references)."""
    ref = unit_rows(reference)
    out = np.empty((len(targets), min(k, len(ref))), np.int64)
    for s in range(0, len(targets), chunk):
        sc = unit_rows(targets[s:s + chunk]) @ ref.T
        if exclude is not None:
            ex = exclude[s:s + chunk]
            rows = np.nonzero(ex >= 0)[0]
            sc[rows, ex[rows]] = -np.inf
        out[s:s + chunk] = _topk(sc, k)
    return out


def recall_at_k(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Mean over rows of |predicted ∩ truth| / |truth|."""
    if len(truth) == 0:
        return 0.0
    return float(np.mean([len(set(p.tolist()) & set(t.tolist())) / max(len(t), 1) for p, t in zip(predicted, truth)]))


def neighbour_recall(predicted: np.ndarray, true_vectors: np.ndarray, reference: np.ndarray, k: int,
                     exclude: np.ndarray | None = None) -> float:
    """Recall@k of the true collaborative neighbours (from ``true_vectors``) found from ``predicted`` vectors."""
    truth = true_neighbours(true_vectors, reference, k, exclude)
    pred = true_neighbours(predicted, reference, k, exclude)
    return recall_at_k(pred, truth)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


@dataclass
class Projection:
    """A fitted content → collaborative map. ``transform`` gives unit vectors of the collaborative dimension."""

    kind: Kind
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def in_dim(self) -> int:
        return int(self.weights["w1" if self.kind == "mlp" else "w"].shape[0])

    @property
    def out_dim(self) -> int:
        return int(self.weights["w2" if self.kind == "mlp" else "w"].shape[1])

    def transform(self, x: np.ndarray, chunk: int = 1024) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"content vectors must be (n, {self.in_dim})")
        w = self.weights
        if self.kind == "mlp":
            return unit_rows(_gelu(x @ w["w1"] + w["b1"]) @ w["w2"] + w["b2"])
        y = unit_rows(x @ w["w"] + w["b"])
        if self.kind == "ridge":
            return y
        m, temp = int(w["params"][0]), float(w["params"][1])
        return np.concatenate([soft_knn(y[s:s + chunk], w["keys"], w["values"], m, temp)
                               for s in range(0, len(y), chunk)]) if len(y) else y

    def arrays(self, prefix: str = "projection_") -> dict[str, np.ndarray]:
        return {prefix + k: v for k, v in self.weights.items()}

    @classmethod
    def from_arrays(cls, kind: Kind, arrays: dict[str, np.ndarray], report: dict[str, Any] | None = None,
                    prefix: str = "projection_") -> "Projection":
        weights = {k[len(prefix):]: np.asarray(v, np.float32) for k, v in arrays.items() if k.startswith(prefix)}
        need = {"ridge": {"w", "b"}, "mlp": {"w1", "b1", "w2", "b2"}, "knn": {"w", "b", "keys", "values", "params"}}[kind]
        if set(weights) != need:
            raise ValueError(f"a {kind} projection needs arrays {sorted(need)}, found {sorted(weights)}")
        return cls(kind, weights, report or {})


def split_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows) of n warm items; at least one of each when n >= 2."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_val = min(max(1, int(round(n * fraction))), n - 1) if n >= 2 else 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _ridge_solve(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    xm, ym = x64.mean(axis=0), y64.mean(axis=0)
    xc, yc = x64 - xm, y64 - ym
    gram = xc.T @ xc
    gram[np.diag_indices_from(gram)] += alpha
    w = np.linalg.solve(gram, xc.T @ yc)
    return w.astype(np.float32), (ym - xm @ w).astype(np.float32)


def fit_ridge(x: np.ndarray, y: np.ndarray, alphas: Sequence[float], val_fraction: float = 0.1, seed: int = 0,
              k: int = 10) -> Projection:
    """Ridge map; α by validation neighbour recall@k (ties: the larger α), then refit on every warm item."""
    y = unit_rows(y)
    tr, va = split_validation(len(x), val_fraction, seed)
    scores: dict[float, float] = {}
    if len(alphas) > 1 and len(va) and len(tr) > k:
        for a in alphas:
            w, b = _ridge_solve(x[tr], y[tr], a)
            scores[a] = neighbour_recall(unit_rows(x[va] @ w + b), y[va], y[tr], k)
        alpha = max(sorted(scores, reverse=True), key=lambda a: scores[a])
    else:
        alpha = float(alphas[0])
    w, b = _ridge_solve(x, y, alpha)
    return Projection("ridge", {"w": w, "b": b},
                      {"alpha": alpha, "validation_recall": {str(a): round(s, 4) for a, s in scores.items()},
                       "k": k, "n_train": int(len(x))})


def soft_knn(queries: np.ndarray, keys: np.ndarray, values: np.ndarray, m: int, temperature: float) -> np.ndarray:
    """Unit rows: for each (unit) query, the softmax(cosine / T)-weighted mean of the values of its m nearest keys."""
    if len(queries) == 0:
        return np.zeros((0, values.shape[1]), np.float32)
    m = max(1, min(m, len(keys)))
    sims = queries @ keys.T
    idx = np.argpartition(-sims, m - 1, axis=1)[:, :m]
    s = np.take_along_axis(sims, idx, axis=1)
    w = np.exp((s - s.max(axis=1, keepdims=True)) / temperature)
    return unit_rows(np.einsum("nm,nmd->nd", w, values[idx]))


def fit_knn(x: np.ndarray, y: np.ndarray, alphas: Sequence[float], neighbours: Sequence[int],
            temperatures: Sequence[float], val_fraction: float = 0.1, seed: int = 0, k: int = 10) -> Projection:
    """Ridge map + soft kNN vote; (m, T) by validation neighbour recall@k (ties: the first in grid order)."""
    y = unit_rows(y)
    ridge = fit_ridge(x, y, alphas, val_fraction, seed, k)
    alpha = ridge.report["alpha"]
    tr, va = split_validation(len(x), val_fraction, seed)
    grid = [(int(m), float(t)) for m in neighbours for t in temperatures]
    scores: dict[str, float] = {}
    best = grid[0]
    if len(grid) > 1 and len(va) and len(tr) > k:
        w, b = _ridge_solve(x[tr], y[tr], alpha)
        keys, queries = unit_rows(x[tr] @ w + b), unit_rows(x[va] @ w + b)
        truth = true_neighbours(y[va], y[tr], k)
        best_score = -1.0
        for m, t in grid:
            score = recall_at_k(true_neighbours(soft_knn(queries, keys, y[tr], m, t), y[tr], k), truth)
            scores[f"m={m},T={t}"] = round(score, 4)
            if score > best_score + 1e-12:
                best, best_score = (m, t), score
    w, b = ridge.weights["w"], ridge.weights["b"]
    weights = {"w": w, "b": b, "keys": unit_rows(x @ w + b), "values": y,
               "params": np.array([best[0], best[1]], np.float32)}
    return Projection("knn", weights, {"alpha": alpha, "neighbours": best[0], "temperature": best[1],
                                       "validation_recall": scores, "ridge_validation_recall":
                                       ridge.report["validation_recall"], "k": k, "n_train": int(len(x))})


def fit_mlp(x: np.ndarray, y: np.ndarray, hidden: int = 512, epochs: int = 60, lr: float = 1e-3,
            weight_decay: float = 1e-4, dropout: float = 0.1, val_fraction: float = 0.1, seed: int = 0,
            batch_size: int = 256, patience: int = 8, threads: int = 1, k: int = 10) -> Projection:
    """2-layer MLP under cosine loss; the epoch with the best validation cosine is kept."""
    import torch

    y = unit_rows(y)
    tr, va = split_validation(len(x), val_fraction, seed)
    if len(va) == 0:
        tr = va = np.arange(len(x))
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.GELU(), torch.nn.Dropout(dropout),
                                  torch.nn.Linear(hidden, y.shape[1]))
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
        xt, yt = torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(y)
        best, best_state, best_epoch, stale = -np.inf, None, 0, 0
        for epoch in range(epochs):
            net.train()
            perm = torch.from_numpy(tr)[torch.randperm(len(tr), generator=g)]
            for s in range(0, len(perm), batch_size):
                rows = perm[s:s + batch_size]
                loss = 1.0 - torch.nn.functional.cosine_similarity(net(xt[rows]), yt[rows], dim=1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                cos = float(torch.nn.functional.cosine_similarity(net(xt[va]), yt[va], dim=1).mean())
            if cos > best + 1e-5:
                best, best_epoch, stale = cos, epoch + 1, 0
                best_state = {k_: v.detach().clone() for k_, v in net.state_dict().items()}
            else:
                stale += 1
                if stale >= patience:
                    break
        assert best_state is not None
        net.load_state_dict(best_state)
    finally:
        torch.set_num_threads(previous)
    sd = net.state_dict()
    weights = {"w1": sd["0.weight"].numpy().T.copy(), "b1": sd["0.bias"].numpy().copy(),
               "w2": sd["3.weight"].numpy().T.copy(), "b2": sd["3.bias"].numpy().copy()}
    proj = Projection("mlp", weights, {"best_epoch": best_epoch, "validation_cosine": round(best, 4),
                                       "n_train": int(len(tr))})
    if len(va) and len(tr) > k and not np.array_equal(tr, va):
        proj.report["validation_recall"] = round(neighbour_recall(proj.transform(x[va]), y[va], y[tr], k), 4)
    return proj


def fit_projection(x: np.ndarray, y: np.ndarray, content: Any, kind: Kind | None = None) -> Projection:
    """Fit the map chosen by a ``ContentSettings`` section (or ``kind``) on warm rows ``x`` → ``y``."""
    kind = kind or content.projection
    if len(x) != len(y):
        raise ValueError("one collaborative vector per content vector")
    if len(x) < 2:
        raise ValueError("the projection needs at least 2 warm items")
    if kind == "ridge":
        return fit_ridge(x, y, content.ridge_alphas, content.validation_fraction, content.seed)
    if kind == "knn":
        return fit_knn(x, y, content.ridge_alphas, content.knn_neighbours, content.knn_temperatures,
                       content.validation_fraction, content.seed)
    if kind == "mlp":
        return fit_mlp(x, y, hidden=content.mlp_hidden, epochs=content.mlp_epochs, lr=content.mlp_lr,
                       weight_decay=content.mlp_weight_decay, dropout=content.mlp_dropout,
                       val_fraction=content.validation_fraction, seed=content.seed, threads=max(1, content.threads))
    raise ValueError(f"unknown projection {kind!r} (ridge, mlp or knn)")
