"""Dynamic batching: concurrent requests are grouped up to ``max_batch`` rows or ``max_wait_ms``, run as one batch on
the model's worker thread, and split back. The queue is bounded: a full queue refuses at once (HTTP 503)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

Feeds = dict[str, np.ndarray]
RunFn = Callable[[Feeds], list[np.ndarray]]


class QueueFull(Exception):
    """The batcher's queue is full: the caller should answer 503 with Retry-After."""


@dataclass
class _Item:
    feeds: Feeds
    rows: int
    future: asyncio.Future
    enqueued: float


def rows_of(feeds: Feeds) -> int:
    return int(len(next(iter(feeds.values()))))


def merge(feeds_list: Sequence[Feeds]) -> tuple[Feeds, list[int]] | None:
    """One batch from several requests, or None when they cannot share one (different trailing shapes that are not
    right-padded token sequences). Token inputs (2-D integer arrays) of different lengths are right-padded with 0,
    which the attention mask (0 there) makes invisible. Returns the feeds and each request's sequence length."""
    names = list(feeds_list[0])
    if any(list(f) != names for f in feeds_list):
        return None
    lengths = [next(iter(f.values())).shape[1] if next(iter(f.values())).ndim > 1 else 0 for f in feeds_list]
    out: Feeds = {}
    for n in names:
        arrays = [f[n] for f in feeds_list]
        shapes = {a.shape[1:] for a in arrays}
        if len(shapes) == 1:
            out[n] = np.concatenate(arrays)
        elif all(a.ndim == 2 and a.dtype.kind in "iub" for a in arrays):
            width = max(a.shape[1] for a in arrays)
            out[n] = np.concatenate([np.pad(a, ((0, 0), (0, width - a.shape[1]))) for a in arrays])
        else:
            return None
    return out, lengths


def split(outputs: list[np.ndarray], rows: list[int], lengths: list[int], padded: int) -> list[list[np.ndarray]]:
    """Each request's rows of each output; token-level outputs are cut back to the request's own length."""
    res: list[list[np.ndarray]] = []
    start = 0
    for n, length in zip(rows, lengths):
        mine = []
        for o in outputs:
            part = o[start:start + n]
            if padded and length and part.ndim >= 2 and part.shape[1] == padded and length < padded:
                part = part[:, :length]
            mine.append(part)
        res.append(mine)
        start += n
    return res


class Batcher:
    """Groups requests for one model. ``run`` is called on a single worker thread, so sessions need no locking."""

    def __init__(self, run: RunFn, *, max_batch: int = 32, max_wait_ms: float = 5.0, queue_size: int = 256,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        self.run, self.max_batch, self.max_wait = run, max(1, int(max_batch)), max(0.0, max_wait_ms) / 1000.0
        self.queue_size = max(1, int(queue_size))
        self.on_batch = on_batch
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="slimforge-batch")
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        if self._task is None:
            self._queue = asyncio.Queue(maxsize=self.queue_size)
            self._task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, feeds: Feeds) -> tuple[list[np.ndarray], int]:
        """The outputs for this request, and the number of rows in the batch it ran in."""
        self.start()
        assert self._queue is not None
        fut = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Item(feeds, rows_of(feeds), fut, time.perf_counter()))
        except asyncio.QueueFull:
            raise QueueFull(f"the queue is full ({self.queue_size} waiting requests)") from None
        return await fut

    async def _worker(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            items, rows = [first], first.rows
            deadline = loop.time() + self.max_wait
            while rows < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                if rows + item.rows > self.max_batch:
                    await self._run_group(items, loop)  # this one starts the next batch
                    items, rows = [item], item.rows
                    deadline = loop.time() + self.max_wait
                    continue
                items.append(item)
                rows += item.rows
            await self._run_group(items, loop)

    async def _run_group(self, items: list[_Item], loop: asyncio.AbstractEventLoop) -> None:
        live = [i for i in items if not i.future.done()]  # timed-out requests are not run
        if not live:
            return
        merged = merge([i.feeds for i in live]) if len(live) > 1 else (live[0].feeds, [0])
        groups = [live] if merged is not None else [[i] for i in live]
        for group in groups:
            if merged is None or len(groups) > 1:
                feeds, lengths = group[0].feeds, [0]
            else:
                feeds, lengths = merged
            n = sum(i.rows for i in group)
            t = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self.executor, self.run, feeds)
            except Exception as exc:  # noqa: BLE001 - alone, the failing request gets it; the others are answered
                if len(group) > 1:
                    for i in group:
                        await self._run_group([i], loop)
                    continue
                for i in group:
                    if not i.future.done():
                        i.future.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(n, time.perf_counter() - t)
            padded = next(iter(feeds.values())).shape[1] if next(iter(feeds.values())).ndim > 1 else 0
            for i, out in zip(group, split(outputs, [i.rows for i in group], lengths, padded)):
                if not i.future.done():
                    i.future.set_result((out, n))

