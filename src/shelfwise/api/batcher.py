"""Micro-batching of recommendation requests: requests that arrive while the pipeline is busy are answered
together by its next call (one forward pass of the sequence model, one set of matrix products for the batch).

The event loop only queues a request and awaits its future; worker threads (``workers``, default one) drain
the queue, up to ``max_batch`` requests a call. A second worker overlaps the parts of a call that release the
GIL (BLAS, torch, LightGBM) with another call's Python. An idle server answers a lone request at once (no waiting
window): batches form only from requests that queue up behind a busy pipeline, so batching adds no latency of
its own.

Each request's context (its request id, its trace span) is captured when it is queued; a pipeline call runs in the
first request's context, inside ``scope(contexts)`` when one is given (``api/telemetry.py``: the batch's request
ids on its log lines, its trace span).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, ContextManager, Generic, Sequence, TypeVar

Req = TypeVar("Req")
Ans = TypeVar("Ans")


class MicroBatcher(Generic[Req, Ans]):
    def __init__(self, answer: Callable[[Sequence[Req]], list[Ans]], max_batch: int = 32, workers: int = 1,
                 scope: Callable[[Sequence[contextvars.Context]], ContextManager] | None = None) -> None:
        self.answer = answer
        self.max_batch = max(1, max_batch)
        self.workers = max(1, workers)
        self.scope = scope
        self._pending: list[tuple[Req, asyncio.Future, asyncio.AbstractEventLoop, contextvars.Context]] = []
        self._lock = threading.Lock()
        self._active = 0  # drain loops running
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="shelfwise-batch")
        self.batches = 0  # calls made, for tests and metrics
        self.requests = 0

    async def submit(self, req: Req) -> Ans:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        with self._lock:
            self._pending.append((req, fut, loop, contextvars.copy_context()))
            start = self._active < self.workers
            if start:
                self._active += 1
        if start:
            self._pool.submit(self._drain)
        return await fut

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
                if not batch:
                    self._active -= 1
                    return
                self.batches += 1
                self.requests += len(batch)
            contexts = [c for _, _, _, c in batch]
            try:
                answers = contexts[0].run(self._call, [r for r, _, _, _ in batch], contexts)
            except BaseException as exc:  # every request of the batch gets the error (the API answers 500)
                for _, fut, loop, _ in batch:
                    loop.call_soon_threadsafe(_set_exception, fut, exc)
                continue
            for (_, fut, loop, _), ans in zip(batch, answers):
                loop.call_soon_threadsafe(_set_result, fut, ans)

    def _call(self, reqs: list[Req], contexts: list[contextvars.Context]) -> list[Ans]:
        if self.scope is None:
            return self.answer(reqs)
        with self.scope(contexts):
            return self.answer(reqs)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _set_result(fut: asyncio.Future, value: object) -> None:
    if not fut.done():  # the client may have gone away (cancelled)
        fut.set_result(value)


def _set_exception(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
