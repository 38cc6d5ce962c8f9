"""Micro-batching of recommendation requests: requests that arrive while the pipeline is busy are answered
together by its next call (one forward pass of the sequence model, one set of matrix products for the batch).

The event loop only queues a request and awaits its future; worker threads (``workers``, default one) drain
the queue, up to ``max_batch`` requests a call. A second worker overlaps the parts of a call that release the
GIL (BLAS, torch, LightGBM) with another call's Python. An idle server answers a lone request at once (no waiting
window): batches form only from requests that queue up behind a busy pipeline, so batching adds no latency of
its own.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Generic, Sequence, TypeVar

Req = TypeVar("Req")
Ans = TypeVar("Ans")


class MicroBatcher(Generic[Req, Ans]):
    def __init__(self, answer: Callable[[Sequence[Req]], list[Ans]], max_batch: int = 32, workers: int = 1) -> None:
        self.answer = answer
        self.max_batch = max(1, max_batch)
        self.workers = max(1, workers)
        self._pending: list[tuple[Req, asyncio.Future, asyncio.AbstractEventLoop]] = []
        self._lock = threading.Lock()
        self._active = 0  # drain loops running
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="shelfwise-batch")
        self.batches = 0  # calls made, for tests and metrics
        self.requests = 0

    async def submit(self, req: Req) -> Ans:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        with self._lock:
            self._pending.append((req, fut, loop))
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
            try:
                answers = self.answer([r for r, _, _ in batch])
            except BaseException as exc:  # every request of the batch gets the error (the API answers 500)
                for _, fut, loop in batch:
                    loop.call_soon_threadsafe(_set_exception, fut, exc)
                continue
            for (_, fut, loop), ans in zip(batch, answers):
                loop.call_soon_threadsafe(_set_result, fut, ans)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _set_result(fut: asyncio.Future, value: object) -> None:
    if not fut.done():  # the client may have gone away (cancelled)
        fut.set_result(value)


def _set_exception(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
