"""Process-parallel map over input items that survives a decoder crashing its worker, with a progress bar.

Native decoders (video, JPEG codecs) can die on hostile files with a signal rather than an exception. When a worker
dies the pool is rebuilt and each unfinished item is retried alone, so the crasher is found, reported as an
`ItemCrash`, and every other item still completes.

`ItemMap` is the shape of such a map; ingest and preprocess take one, so the same per-item function runs here or on
a cluster (`m3ret.engines`).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Protocol, TypeVar

from tqdm import tqdm

A = TypeVar("A")
R = TypeVar("R")
# the quarantine reason of an item whose worker process died (a signal: a segfault, the OOM killer)
CRASH_REASON = "the decoder crashed the worker process (killed by a signal)"


@dataclass(frozen=True)
class ItemCrash:
    """The result slot of an item whose worker process died while handling it."""

    reason: str


class ItemMap(Protocol):
    """`fn` over `items`, results in input order, an `ItemCrash` in the slot of an item whose worker died. `workers`
    is the caller's process count for this machine; `keys`, when given, name each item's inputs by content, so a map
    that keeps finished results (a cluster's journal) can reuse them when a killed run starts again."""

    def __call__(
        self, fn: Callable[[A], R], items: Sequence[A], workers: int, desc: str, keys: Sequence[str] | None = None
    ) -> Iterator[R | ItemCrash]: ...


def _pool(workers: int) -> ProcessPoolExecutor:
    # fork: workers inherit imported modules and read-only state without pickling them
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))


def parallel_map(
    fn: Callable[[A], R], items: Sequence[A], workers: int, desc: str, keys: Sequence[str] | None = None
) -> Iterator[R | ItemCrash]:
    """fn over items, results in input order; `workers <= 1` runs in this process. Shows items, rate and ETA.
    An `ItemMap` that keeps nothing between runs, so `keys` go unused."""
    bar = tqdm(total=len(items), desc=desc, unit="item", dynamic_ncols=True, mininterval=1.0)
    try:
        if workers <= 1:
            for item in items:
                yield fn(item)
                bar.update()
            return
        window = max(4 * workers, 8)
        next_index = 0
        pool = _pool(workers)
        pending: dict[int, Future] = {}
        try:
            while next_index < len(items) or pending:
                while next_index < len(items) and len(pending) < window:
                    pending[next_index] = pool.submit(fn, items[next_index])
                    next_index += 1
                head = min(pending)
                try:
                    result = pending.pop(head).result()
                except BrokenProcessPool:
                    pool.shutdown(wait=False, cancel_futures=True)
                    unfinished = [head, *sorted(pending)]
                    pending.clear()
                    for index in unfinished:
                        result = _run_alone(fn, items[index])
                        if index == head:
                            yield result
                        else:
                            pending[index] = _done(result)
                    pool = _pool(workers)
                    bar.update()
                    continue
                yield result
                bar.update()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()


def _run_alone(fn: Callable[[A], R], item: A) -> R | ItemCrash:
    with _pool(1) as solo:
        try:
            return solo.submit(fn, item).result()
        except BrokenProcessPool:
            return ItemCrash(CRASH_REASON)


def _done(result: object) -> Future:
    future: Future = Future()
    future.set_result(result)
    return future
