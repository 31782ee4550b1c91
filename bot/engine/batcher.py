"""asyncio front of the engine: collects concurrent requests into batches on one worker thread.

The event loop never runs model code: batches (and adapter swaps, via `run`) execute on a single
dedicated thread, so they are serialized against each other without locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from bot.engine.engine import GenerationRequest, GenerationResult, InferenceEngine

log = logging.getLogger(__name__)
T = TypeVar("T")

_Item = tuple[GenerationRequest, "asyncio.Future[GenerationResult]"]


class BatcherClosed(RuntimeError):
    pass


class Batcher:
    def __init__(self, engine: InferenceEngine, *, max_batch_size: int, max_wait_ms: float) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._waiting: list[_Item] = []  # taken from the queue but not yet batched
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.batches_run = 0  # for /status and tests

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() + len(self._waiting)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="batcher")

    async def close(self) -> None:
        """Stop taking requests, cancel the ones not started, wait for the running batch."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            self._waiting.append(self._queue.get_nowait())
        for _, future in self._waiting:
            if not future.done():
                future.set_exception(BatcherClosed("the engine is shutting down"))
        self._waiting.clear()
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    async def submit(self, request: GenerationRequest) -> GenerationResult:
        if self._closed:
            raise BatcherClosed("the engine is shutting down")
        await self.start()
        future: asyncio.Future[GenerationResult] = asyncio.get_running_loop().create_future()
        await self._queue.put((request, future))
        return await future

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the engine thread, between batches (e.g. an adapter swap)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _next_batch(self) -> list[_Item]:
        if not self._waiting:
            self._waiting.append(await self._queue.get())
        settings = self._waiting[0][0].settings
        # Only requests with the first one's settings share a batch; the rest wait their turn.
        batch = [item for item in self._waiting if item[0].settings == settings]
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while len(batch) < self.max_batch_size:
            timeout = deadline - asyncio.get_running_loop().time()
            if timeout <= 0:
                break
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout)
            except TimeoutError:
                break
            self._waiting.append(item)
            if item[0].settings == settings:
                batch.append(item)
        batch = batch[: self.max_batch_size]
        taken = {id(item) for item in batch}  # by identity: equal requests are still distinct
        self._waiting = [item for item in self._waiting if id(item) not in taken]
        return batch

    async def _loop(self) -> None:
        while True:
            batch = await self._next_batch()
            live = [(request, future) for request, future in batch if not future.cancelled()]
            if not live:
                continue
            try:
                results = await self.run(self.engine.generate, [request for request, _ in live])
            except asyncio.CancelledError:
                for _, future in live:
                    future.cancel()
                raise
            except Exception as exc:  # a failed batch fails its requests, not the loop
                log.exception("Generation batch of %d failed", len(live))
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches_run += 1
            for (_, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)
