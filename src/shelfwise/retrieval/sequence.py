"""Session-aware retrieval: a SASRec-style causal transformer over a shopper's last events (the user tower).

Input: the last ``max_len`` item events of a shopper, oldest first; each position is the item embedding plus
an event-type embedding (view / cart / remove / purchase / click) plus a learned position embedding.
Consecutive events on the same item are collapsed into one (keeping the latest event type), so
view → cart → purchase of one item is one step, identically in training and at request time.
The output at the last position is the shopper vector; an item's score is its dot product with the item
embedding (input and output embeddings are tied). Training is next-item prediction at every position with
full-softmax cross-entropy over the catalog (logits only at real, non-padded positions), Adam, dropout and
early stopping on each shopper's held-out last item (NDCG@10, full ranking, history excluded).

Serving (``scores``): one forward pass encodes the whole batch; the top ``candidates`` items per query are found
through ``ItemVectors`` (an exact product for catalogs up to ``models.candidates.exact_max_items`` and for big
offline batches, else the vector index of ``stores.vectors``; the ANN only approximates the exact top-N, recall
measured in benchmarks/ann_recall.py). Those items' scores are ``exp(s - s_max)`` (their softmax probability
relative to the best item); every other item has no evidence (0).

torch and hnswlib are imported lazily, so the API and CLI start fast when this source is unused.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from shelfwise.domain import EventType
from shelfwise.request import Query
from shelfwise.retrieval.base import Retriever, SparseScores, TrainData
from shelfwise.retrieval.embedding import IndexFactory, ItemVectors
from shelfwise.settings import CandidateSettings, SequenceSettings, known_fields

# OpenMP worker threads that spin while waiting make torch slow when the (2-core) machine is shared with other
# busy processes; threads that never spin (OMP_WAIT_POLICY=PASSIVE) make two threads no faster than one on an
# idle machine. Measured on one Beauty epoch slice, 2 threads: passive 4.0 s idle / 5.3 s with a second such
# process running; spin count 3,000: 2.9 s / 6.7 s; 10,000: 2.65 s / 9.9 s; full spinning 2.7 s / 24 s (1 thread:
# 4.0 s). The thread count itself stays fixed (settings.threads, default every core): results then do not
# depend on the machine's load. Set before torch (and its libgomp) loads; the environment wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "3000")

N_KINDS = 6  # the kind embedding's rows: the first six event types (saved models keep this shape)
# event types added later are read as the first six: a wishlist addition as interest (a view), a removal from
# the wishlist as a removal (from the cart); data without them trains exactly as before
KIND_CODES = np.array([int(t) if int(t) < N_KINDS else
                       {EventType.wishlist_added: int(EventType.product_viewed),
                        EventType.wishlist_removed: int(EventType.remove_from_cart)}[t] for t in EventType], np.int64)
PAD = 0  # item index 0 of the model is padding; catalog item i is model item i + 1
_SMALL_BATCH = 64  # up to this many queries: one forward pass on the caller's thread count (the request path)


# ---- sequences -----------------------------------------------------------------------------------------
def collapse(items: np.ndarray, kinds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge consecutive events on the same item into one, keeping the latest event type."""
    items = np.asarray(items)
    kinds = np.asarray(kinds)
    if len(items) < 2:
        return items, kinds
    last = np.ones(len(items), bool)
    last[:-1] = items[1:] != items[:-1]
    return items[last], kinds[last]


def user_sequences(data: TrainData) -> list[tuple[np.ndarray, np.ndarray]]:
    """(items, kinds) of every shopper, oldest first, consecutive repeats collapsed."""
    order = np.lexsort((np.arange(len(data.user)), data.user))  # stable by shopper, keeps time order
    user, item, kind = data.user[order], data.item[order], KIND_CODES[data.kind[order].astype(np.int64)]
    bounds = np.searchsorted(user, np.arange(data.n_users + 1))
    return [collapse(item[bounds[u]:bounds[u + 1]], kind[bounds[u]:bounds[u + 1]]) for u in range(data.n_users)]


def query_sequence(q: Query, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """What the encoder sees for a request: the history, then the anchors (as views), the last max_len."""
    items, kinds = np.asarray(q.history, np.int64), np.asarray(q.history_kind, np.int64)
    if len(kinds) != len(items):
        kinds = np.zeros(len(items), np.int64)
    if len(q.anchors):
        items = np.concatenate([items, np.asarray(q.anchors, np.int64)])
        kinds = np.concatenate([kinds, np.full(len(q.anchors), int(EventType.product_viewed), np.int64)])
    items, kinds = collapse(items, kinds)
    return items[-max_len:], KIND_CODES[np.clip(kinds[-max_len:], 0, len(KIND_CODES) - 1)]


def _training_windows(seqs: list[tuple[np.ndarray, np.ndarray]], max_len: int
                      ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(input items, input kinds, target items) windows; long sequences are cut into windows from the end."""
    out = []
    for items, kinds in seqs:
        end = len(items)
        while end >= 2:
            start = max(0, end - max_len - 1)
            it, kd = items[start:end], kinds[start:end]
            out.append((it[:-1] + 1, kd[:-1], it[1:]))
            end = start + 1 if start > 0 else 0
    return out


# ---- the torch module (defined lazily) -----------------------------------------------------------------
_MODULE: Any = None


def _module_class() -> Any:
    global _MODULE
    if _MODULE is not None:
        return _MODULE
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        """Pre-LN transformer block: causal self-attention and a position-wise feed-forward layer."""

        def __init__(self, dim: int, heads: int, dropout: float) -> None:
            super().__init__()
            self.heads = heads
            self.p = dropout
            self.ln1 = nn.LayerNorm(dim)
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)
            self.ln2 = nn.LayerNorm(dim)
            self.ff1 = nn.Linear(dim, dim)
            self.ff2 = nn.Linear(dim, dim)
            self.drop = nn.Dropout(dropout)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, n, d = x.shape
            qkv = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True,
                                               dropout_p=self.p if self.training else 0.0)
            x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, n, d)))
            return x + self.drop(self.ff2(self.drop(F.gelu(self.ff1(self.ln2(x))))))

        def forward_at(self, x: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
            """The block's output at position ``last[i]`` of each sequence only (B, dim): what serving needs from
            the final block. Keys and values cover positions <= last (the causal mask of that query)."""
            b, n, d = x.shape
            h = self.heads
            qkv = self.qkv(self.ln1(x)).view(b, n, 3, h, d // h)
            rows = torch.arange(b)
            q = qkv[rows, last, 0].unsqueeze(2)  # (B, heads, 1, head dim)
            k, v = qkv[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)
            mask = (torch.arange(n)[None, :] <= last[:, None])[:, None, None, :]
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = x[rows, last] + self.proj(a.reshape(b, d))
            return x + self.ff2(F.gelu(self.ff1(self.ln2(x))))

    class SASRec(nn.Module):
        """Right-padded, causal: position t attends to positions <= t only, so padding never leaks in."""

        def __init__(self, n_items: int, dim: int, layers: int, heads: int, dropout: float, max_len: int) -> None:
            super().__init__()
            self.item = nn.Embedding(n_items + 1, dim, padding_idx=PAD)
            self.kind = nn.Embedding(N_KINDS, dim)
            self.pos = nn.Embedding(max_len, dim)
            self.drop = nn.Dropout(dropout)
            self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
            self.ln = nn.LayerNorm(dim)
            for emb in (self.item, self.kind, self.pos):
                nn.init.normal_(emb.weight, std=dim ** -0.5)
            with torch.no_grad():
                self.item.weight[PAD].zero_()

        def forward(self, items: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
            """Hidden states (B, L, dim) of right-padded item (model index) / kind sequences."""
            n = items.shape[1]
            x = self.item(items) + self.kind(kinds) + self.pos.weight[:n]
            x = self.drop(x)
            for blk in self.blocks:
                x = blk(x)
            return self.ln(x)

        def encode(self, items: torch.Tensor, kinds: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            """(B, dim) hidden state at each sequence's last position (inference; equals ``forward`` there)."""
            n = items.shape[1]
            x = self.item(items) + self.kind(kinds) + self.pos.weight[:n]
            for blk in self.blocks[:-1]:
                x = blk(x)
            return self.ln(self.blocks[-1].forward_at(x, lengths - 1))

        def item_weights(self) -> torch.Tensor:
            return self.item.weight[1:]

    class FullSoftmaxCE(torch.autograd.Function):
        """Mean cross-entropy of ``h @ W.T`` against targets, over every item, computed in row chunks.

        The logits of a chunk (rows × n_items) stay in cache: forward computes the loss and both gradients in
        one pass (softmax − one-hot, then two matmuls), so the full logit matrix is never materialised. About
        2× faster than ``F.cross_entropy(h @ W.T)`` on CPU and exactly the same objective.
        """

        @staticmethod
        def forward(ctx: Any, h: torch.Tensor, w: torch.Tensor, target: torch.Tensor, chunk: int = 64) -> torch.Tensor:
            n = len(h)
            grad_h = torch.empty_like(h)
            grad_w = torch.zeros_like(w)
            loss = h.new_zeros((), dtype=torch.float64)
            rows = torch.arange(min(chunk, n))
            for s in range(0, n, chunk):
                hc, tc = h[s:s + chunk], target[s:s + chunk]
                r = rows[: len(tc)]
                logits = hc @ w.T
                top = logits.amax(1, keepdim=True)
                picked = logits[r, tc]
                logits.sub_(top).exp_()  # one exp pass: softmax = exp(l - max) / sum
                z = logits.sum(1, keepdim=True)
                loss += (z.log()[:, 0] + top[:, 0] - picked).sum(dtype=torch.float64)
                logits.div_(z)
                logits[r, tc] -= 1.0
                grad_h[s:s + chunk] = logits @ w
                grad_w.addmm_(logits.T, hc)
            ctx.save_for_backward(grad_h / n, grad_w / n)
            return (loss / n).to(h.dtype)

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple:
            grad_h, grad_w = ctx.saved_tensors
            return grad_h * grad, grad_w * grad, None, None

    SASRec.full_softmax_ce = staticmethod(FullSoftmaxCE.apply)
    _MODULE = SASRec
    return SASRec


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _pad(rows: Sequence[np.ndarray], fill: int = 0) -> np.ndarray:
    out = np.full((len(rows), max((len(r) for r in rows), default=1) or 1), fill, np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


# ---- progress ------------------------------------------------------------------------------------------
class _Progress:
    """Epoch progress, one convention with the rest of training: through the caller's progress callback
    (``Retriever.progress``, e.g. the CLI's one progress bar), else a line per epoch on stderr, or nothing."""

    def __init__(self, enabled: bool, total: int, report: Callable[[str], None] | None = None) -> None:
        self.enabled, self.total, self.report = enabled, total, report
        self.done = 0

    def update(self, advance: int = 1, **fields: Any) -> None:
        self.done += advance
        if not self.enabled:
            return
        info = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        text = f"sequence epoch {self.done} (at most {self.total})  {info}"
        if self.report is not None:
            self.report(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


# ---- the retriever -------------------------------------------------------------------------------------
class SequenceRetriever(Retriever):
    name = "sequence"

    def __init__(self, settings: SequenceSettings | None = None) -> None:
        self.settings = settings or SequenceSettings()
        if self.settings.dim % self.settings.heads:
            raise ValueError(f"sequence.dim ({self.settings.dim}) must be a multiple of heads "
                             f"({self.settings.heads})")
        self._n_items = 0
        self.model: Any = None
        self.item_vectors = np.zeros((0, self.settings.dim), np.float32)
        self.space = ItemVectors("sequence", self.item_vectors)
        self.report: dict[str, Any] = {}
        self._optimizer_state: dict | None = None  # after fit, for a later warm start (not saved)
        self._warm: tuple[Any, list[str], dict | None] | None = None

    def warm_start(self, earlier: Retriever, earlier_items: Any) -> None:
        """The next fit continues ``earlier`` (fit on a prefix of the same log) for ``finetune_epochs`` epochs
        on the whole log, instead of training from scratch with early stopping. Items new since the prefix
        start from a fresh embedding; the optimizer state carries over when the vocabulary is unchanged."""
        if not isinstance(earlier, SequenceRetriever) or earlier.model is None:
            return
        if any(getattr(self.settings, k) != getattr(earlier.settings, k) for k in ("dim", "layers", "heads", "max_len")):
            return  # another architecture: nothing to continue
        self._warm = (earlier.model.state_dict(), [str(x) for x in earlier_items.ids], earlier._optimizer_state)

    # ---- training --------------------------------------------------------------------------------------
    def _new_model(self) -> Any:
        s = self.settings
        return _module_class()(self.n_items, s.dim, s.layers, s.heads, s.dropout, s.max_len)

    def fit(self, data: TrainData) -> "SequenceRetriever":
        import torch

        s = self.settings
        t_start = time.perf_counter()
        self._cpu_start = time.process_time()
        deadline = t_start + s.max_train_minutes * 60.0
        torch.manual_seed(s.seed)
        rng = np.random.default_rng(s.seed)
        self.n_items = data.n_items
        seqs = user_sequences(data)
        threads = s.threads or _cores()
        if self._warm is not None:  # continue an earlier fit: no validation split
            return self._fit_warm(data, seqs, threads, t_start, deadline)
        # leave-one-out inside fit: each shopper's last item validates (shoppers with >= 3 items)
        val_users = np.array([u for u, (it, _) in enumerate(seqs) if len(it) >= 3], np.int64)
        if len(val_users) > s.val_users:
            val_users = np.sort(rng.choice(val_users, s.val_users, replace=False))
        validate = len(val_users) >= 1 and s.val_users > 0
        held = set(val_users.tolist()) if validate else set()
        train_seqs = [(it[:-1], kd[:-1]) if u in held else (it, kd) for u, (it, kd) in enumerate(seqs)]
        windows = _training_windows(train_seqs, s.max_len)
        full_windows = _training_windows(seqs, s.max_len) if validate and s.finetune_epochs else windows
        val = [(train_seqs[u][0], train_seqs[u][1], int(seqs[u][0][-1])) for u in val_users] if validate else []
        val.sort(key=lambda v: min(len(v[0]), s.max_len))  # similar lengths batch together: little padding

        self.model = self._new_model()
        report: dict[str, Any] = {"windows": len(windows), "val_users": len(val), "epochs": 0, "best_epoch": 0,
                                  "val_ndcg10": None, "val_hr10": None, "stopped": "max_epochs"}
        if not windows:
            self._finish(report, t_start)
            return self
        opt = self._optimizer()
        best, best_ce, best_state, bad = -1.0, math.inf, None, 0
        bar = _Progress(s.progress, s.max_epochs + s.finetune_epochs, self.progress)
        try:
            with _torch_threads(threads):
                ft = s.finetune_epochs if validate else 0
                for epoch in range(1, s.max_epochs + 1):
                    t_epoch = time.perf_counter()
                    loss = self._epoch(windows, opt, rng, deadline)
                    report["epochs"] = epoch
                    if validate:
                        hr, ndcg, ce = self._validate(val)
                        # better NDCG@10, or as good with a lower held-out cross-entropy (tiny tasks saturate)
                        if ndcg > best + 1e-9 or (ndcg >= best - 1e-9 and ce < best_ce):
                            best, best_ce, bad = max(ndcg, best), ce, 0
                            best_state = copy.deepcopy(self.model.state_dict())
                            report.update(best_epoch=epoch, val_ndcg10=round(ndcg, 5), val_hr10=round(hr, 5),
                                          val_ce=round(ce, 4))
                        else:
                            bad += 1
                        bar.update(loss=loss, ndcg10=ndcg, best=best)
                        if bad >= s.patience:
                            report["stopped"] = "early"
                            break
                    else:
                        bar.update(loss=loss)
                    # the time cap covers the fine-tuning epochs too: stop early enough to leave time for them
                    per_epoch = time.perf_counter() - t_epoch
                    if time.perf_counter() + (ft + 1) * per_epoch > deadline:
                        report["stopped"] = "time"
                        break
                if best_state is not None:
                    self.model.load_state_dict(best_state)
                report["train_seconds"] = round(time.perf_counter() - t_start, 1)
                report["finetune_epochs"] = self._finetune(full_windows, opt, rng, ft, deadline + 60.0, bar)
        finally:
            bar.close()
        self._optimizer_state = opt.state_dict()
        self._finish(report, t_start)
        return self

    def _fit_warm(self, data: TrainData, seqs: list, threads: int, t_start: float, deadline: float
                  ) -> "SequenceRetriever":
        import torch

        s = self.settings
        state, earlier_ids, opt_state = self._warm  # type: ignore[misc]
        self._warm = None
        self.model = self._new_model()
        ids = [str(x) for x in data.items.ids]
        same_vocab = ids == earlier_ids
        emb = state["item.weight"]
        if not same_vocab:  # rows of the earlier vocabulary move to the new positions; new items keep their init
            fresh = self.model.item.weight.detach().clone()
            where = {iid: j for j, iid in enumerate(earlier_ids)}
            new_rows = [j for j, iid in enumerate(ids) if iid in where]
            fresh[1 + torch.tensor(new_rows, dtype=torch.long)] = emb[1 + torch.tensor(
                [where[ids[j]] for j in new_rows], dtype=torch.long)]
            state = dict(state, **{"item.weight": fresh})
        self.model.load_state_dict(state)
        opt = self._optimizer()
        if same_vocab and opt_state is not None:
            opt.load_state_dict(opt_state)
        windows = _training_windows(seqs, s.max_len)
        rng = np.random.default_rng(s.seed + 1)
        epochs = max(s.finetune_epochs, 1)
        bar = _Progress(s.progress, epochs, self.progress)
        try:
            with _torch_threads(threads):
                done = self._finetune(windows, opt, rng, epochs, deadline, bar) if windows else 0
        finally:
            bar.close()
        report: dict[str, Any] = {"windows": len(windows), "warm_start": True, "same_vocabulary": same_vocab,
                                  "epochs": done, "stopped": "max_epochs" if done == epochs else "time"}
        report["train_seconds"] = round(time.perf_counter() - t_start, 1)
        self._optimizer_state = opt.state_dict()
        self._finish(report, t_start)
        return self

    def _finish(self, report: dict[str, Any], t_start: float) -> None:
        import torch

        if self.model is None:
            self.model = self._new_model()
        self.model.eval()
        with torch.no_grad():
            self.item_vectors = self.model.item_weights().detach().numpy().astype(np.float32, copy=True)
        self.space = ItemVectors("sequence", self.item_vectors)
        report["seconds"] = round(time.perf_counter() - t_start, 1)
        report["cpu_seconds"] = round(time.process_time() - self._cpu_start, 1)
        self.report = report

    @property
    def n_items(self) -> int:
        return self._n_items

    @n_items.setter
    def n_items(self, value: int) -> None:
        self._n_items = value

    def attach_index(self, factory: IndexFactory | None, settings: CandidateSettings) -> None:
        self.space.attach(factory, settings)

    def _batches(self, windows: list, rng: np.random.Generator) -> Iterator[list]:
        """Shuffled batches of windows of similar length (little padding), in shuffled order."""
        bs = self.settings.batch_size
        perm = rng.permutation(len(windows))
        chunk = bs * 50
        batches = []
        for c in range(0, len(perm), chunk):
            part = perm[c:c + chunk]
            part = part[np.argsort([len(windows[i][0]) for i in part], kind="stable")]
            batches += [part[b:b + bs] for b in range(0, len(part), bs)]
        for b in rng.permutation(len(batches)):
            yield [windows[i] for i in batches[b]]

    def _epoch(self, windows: list, opt: Any, rng: np.random.Generator, deadline: float = math.inf) -> float:
        """One pass over the windows (cut short at ``deadline``: a huge catalog's epoch may outlast the time
        cap); the mean loss."""
        import torch

        model = self.model
        model.train()
        total, count = 0.0, 0
        for step, batch in enumerate(self._batches(windows, rng)):
            if step % 64 == 63 and time.perf_counter() > deadline:
                break
            items = torch.from_numpy(_pad([w[0] for w in batch]))
            kinds = torch.from_numpy(_pad([w[1] for w in batch]))
            target = torch.from_numpy(_pad([w[2] for w in batch], fill=-1))
            valid = target >= 0
            h = model(items, kinds)[valid]
            loss = self._loss(h, target[valid])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(h)
            count += len(h)
        return total / max(count, 1)

    def _optimizer(self) -> Any:
        import torch

        s = self.settings
        if s.weight_decay:
            return torch.optim.AdamW(self.model.parameters(), lr=s.lr, weight_decay=s.weight_decay,
                                     betas=(0.9, 0.98))
        return torch.optim.Adam(self.model.parameters(), lr=s.lr, betas=(0.9, 0.98))

    def _finetune(self, windows: list, opt: Any, rng: np.random.Generator, epochs: int, deadline: float,
                  bar: _Progress) -> int:
        """Up to ``epochs`` epochs over ``windows`` with no validation, while before ``deadline``; epochs run."""
        done = 0
        while done < epochs and time.perf_counter() <= deadline:
            loss = self._epoch(windows, opt, rng, deadline)
            done += 1
            bar.update(loss=loss, finetune=done)
        return done

    def _loss(self, h: Any, target: Any) -> Any:
        """Cross-entropy of next-item prediction: full softmax over the catalog, or (``negatives`` < catalog)
        sampled softmax over ``negatives`` uniformly drawn items shared by the batch, each negative's logit
        raised by log(n_items / negatives) so the sample estimates the full partition function."""
        import torch
        import torch.nn.functional as F

        weights = self.model.item_weights()
        k = self.settings.negatives
        if not k or k >= self.n_items:
            return self.model.full_softmax_ce(h, weights, target)
        neg = torch.randint(0, self.n_items, (k,))
        pos = (h * weights[target]).sum(1, keepdim=True)
        other = h @ weights[neg].T + math.log(self.n_items / k)
        other = other.masked_fill(neg[None, :] == target[:, None], -torch.inf)  # a sampled target is no negative
        logits = torch.cat([pos, other], 1)
        return F.cross_entropy(logits, torch.zeros(len(h), dtype=torch.long))

    def _validate(self, val: list[tuple[np.ndarray, np.ndarray, int]], batch: int = 1024
                  ) -> tuple[float, float, float]:
        """HR@10, NDCG@10 (full ranking, the shopper's history excluded) and cross-entropy of the held-out items."""
        import torch

        batch = max(8, min(batch, 64_000_000 // max(self.n_items, 1)))  # score rows of at most ~256 MB
        model = self.model
        model.eval()
        hits, ndcg, ce = 0.0, 0.0, 0.0
        with torch.inference_mode():
            weights = model.item_weights()
            for start in range(0, len(val), batch):
                part = val[start:start + batch]
                vecs = self._encode_torch([p[0][-self.settings.max_len:] for p in part],
                                          [p[1][-self.settings.max_len:] for p in part], full=True)
                scores = vecs @ weights.T
                target = torch.tensor([p[2] for p in part])
                ce += float((torch.logsumexp(scores, 1) - scores[torch.arange(len(part)), target]).sum())
                rows = np.concatenate([np.full(len(p[0]), r) for r, p in enumerate(part)])
                cols = np.concatenate([p[0] for p in part])
                scores[torch.from_numpy(rows), torch.from_numpy(cols.astype(np.int64))] = -torch.inf
                t = scores[torch.arange(len(part)), target]
                rank = torch.count_nonzero(scores > t[:, None], dim=1).double()
                rank[torch.isinf(t)] = 1e9  # a held-out item already in the history cannot be recommended
                hit = rank < 10
                hits += float(hit.sum())
                ndcg += float(torch.where(hit, 1.0 / torch.log2(rank + 2.0), torch.zeros_like(rank)).sum())
        return hits / len(val), ndcg / len(val), ce / len(val)

    # ---- encoding and scoring --------------------------------------------------------------------------
    def _encode_torch(self, items: Sequence[np.ndarray], kinds: Sequence[np.ndarray], full: bool = False) -> Any:
        """Shopper vectors (B, dim) of non-empty catalog-index sequences (oldest first, at most max_len).
        ``full``: through the training graph (every position of every block) — what early stopping has always
        validated with, so that training is bit-for-bit what it was; otherwise only the last position of the last
        block (the same vectors to float rounding, cheaper)."""
        import torch

        lengths = torch.tensor([len(x) for x in items])
        it = torch.from_numpy(_pad([np.asarray(x, np.int64) + 1 for x in items]))
        kd = torch.from_numpy(_pad([np.asarray(x, np.int64) for x in kinds]))
        if full:
            return self.model(it, kd)[torch.arange(len(items)), lengths - 1]
        return self.model.encode(it, kd, lengths)

    def export_onnx(self) -> bytes:
        """The inference encoder (``SASRec.encode``) as an ONNX graph (dynamic batch and length)."""
        import io

        import torch

        class Encoder(torch.nn.Module):
            def __init__(self, model: Any) -> None:
                super().__init__()
                self.model = model

            def forward(self, items: Any, kinds: Any, lengths: Any) -> Any:
                return self.model.encode(items, kinds, lengths)

        self.model.eval()
        ex = (torch.ones((2, 3), dtype=torch.long), torch.zeros((2, 3), dtype=torch.long), torch.tensor([3, 2]))
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Encoder(self.model), ex, buf, input_names=["items", "kinds", "lengths"],
                              output_names=["h"], opset_version=17, dynamo=False,
                              dynamic_axes={"items": {0: "b", 1: "n"}, "kinds": {0: "b", 1: "n"},
                                            "lengths": {0: "b"}, "h": {0: "b"}})
        return buf.getvalue()

    def _onnx(self) -> Any:
        """An ONNX Runtime session of the encoder (one thread), or None when the runtime is torch."""
        if self.settings.runtime != "onnx" or self.model is None:
            return None
        got = getattr(self, "_session", None)
        if got is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            graph = self._onnx_graph if getattr(self, "_onnx_graph", None) else self.export_onnx()
            got = self._session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        return got

    def encode(self, queries: Sequence[Query]) -> tuple[np.ndarray, np.ndarray]:
        """(rows with a non-empty sequence, their shopper vectors) — one forward pass for a small batch."""
        import torch

        s = self.settings
        seqs = [query_sequence(q, s.max_len) for q in queries]
        rows = np.array([r for r, (it, _) in enumerate(seqs) if len(it)], np.int64)
        if self.model is None or not len(rows):
            return rows, np.zeros((len(rows), s.dim), np.float32)
        small = len(rows) <= _SMALL_BATCH
        session = self._onnx() if small else None
        if session is not None:  # the request path: ONNX Runtime, 3x faster than torch on a few short sequences
            items, kinds = [seqs[r][0] for r in rows], [seqs[r][1] for r in rows]
            feed = {"items": _pad([np.asarray(x, np.int64) + 1 for x in items]),
                    "kinds": _pad([np.asarray(x, np.int64) for x in kinds]),
                    "lengths": np.array([len(x) for x in items], np.int64)}
            return rows, np.asarray(session.run(None, feed)[0], np.float32)
        out = np.empty((len(rows), s.dim), np.float32)
        # small batches are too small for intra-op threads to matter, so the request path leaves torch's
        # (process-wide) thread setting alone; big offline batches use settings.threads
        threads = torch.get_num_threads() if small else (s.threads or _cores())
        with _torch_threads(threads), torch.inference_mode():
            if self.model.training:  # (eval() walks every module: 0.4 ms, so not on every request)
                self.model.eval()
            if small:  # the request path: one forward pass for the batch
                vecs = self._encode_torch([seqs[r][0] for r in rows], [seqs[r][1] for r in rows])
                out[:] = vecs.numpy()
            else:  # big offline batches: forward passes over shoppers of similar history length
                by_len = np.argsort([len(seqs[r][0]) for r in rows], kind="stable")
                for c in range(0, len(by_len), 512):
                    part = by_len[c:c + 512]
                    vecs = self._encode_torch([seqs[rows[i]][0] for i in part], [seqs[rows[i]][1] for i in part])
                    out[part] = vecs.numpy()
        return rows, out

    def scores(self, queries: Sequence[Query]) -> SparseScores:
        rows, vecs = self.encode(queries)
        if not len(rows) or not self.n_items:
            return SparseScores(len(queries), self.n_items, np.zeros(0, np.int64), np.zeros(0, np.int64),
                                np.zeros(0, np.float32))
        keys, scores = self.space.search(vecs, self.settings.candidates, ordered=False)
        ok = keys >= 0
        best = np.where(ok, scores, -np.inf).max(axis=1, keepdims=True)
        rel = np.exp(np.where(ok, scores - best, -np.inf)).astype(np.float32)
        r = np.broadcast_to(rows[:, None], keys.shape)
        return SparseScores(len(queries), self.n_items, r[ok], keys[ok], rel[ok])

    # ---- persistence -----------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        import torch

        torch.save(self.model.state_dict(), path / "sequence.pt")
        meta = {"settings": self.settings.model_dump(mode="json"), "n_items": self.n_items, "report": self.report}
        (path / "sequence.json").write_text(json.dumps(meta, indent=1))
        (path / "sequence.onnx").write_bytes(self.export_onnx())

    @classmethod
    def load(cls, path: Path) -> "SequenceRetriever":
        import torch

        meta = json.loads((path / "sequence.json").read_text())
        obj = cls(SequenceSettings.model_validate(known_fields(SequenceSettings, meta["settings"])))
        obj.n_items = int(meta["n_items"])
        obj.report = meta.get("report", {})
        obj.model = obj._new_model()
        obj.model.load_state_dict(torch.load(path / "sequence.pt", weights_only=True))
        obj.model.eval()
        with torch.no_grad():
            obj.item_vectors = obj.model.item_weights().detach().numpy().astype(np.float32, copy=True)
        obj.space = ItemVectors("sequence", obj.item_vectors)
        if (path / "sequence.onnx").exists():
            obj._onnx_graph = (path / "sequence.onnx").read_bytes()
        return obj


__all__ = ["SequenceRetriever", "collapse", "query_sequence", "user_sequences"]
