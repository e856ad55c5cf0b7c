"""The `ray` engine: ingest's and preprocess's per-item functions as Ray tasks, embedding as a Ray Data actor pool.

Decoding runs as plain Ray tasks, not through Ray Data: Ray Data retries a task whose worker died and then fails the
whole dataset, or (`max_errored_blocks`) drops the task's block without a word; a decoder that kills its worker
(a segfault, the OOM killer) must cost only its own item, quarantined with its reason. So tasks of `items_per_task`
items run with `max_retries=0`; one that dies is run again an item per task, and an item whose task dies alone comes
back as an ItemCrash, as from the local process pool. Embedding does fit Ray Data (`m3ret.engines.ray_embed`).

The driver (this process) connects on first use: to `engine.ray_address`, or to a Ray it starts for the run and
stops in `close`. The m3ret package travels with the job (`py_modules`), so workers run this checkout's code; tasks
work in the driver's working directory, since params.yaml paths are relative to it (the cluster shares the
filesystem at the same paths). Results come back to the driver in input order and only the driver writes outputs.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import ray
import torch
from ray.exceptions import NodeDiedError, OutOfMemoryError, WorkerCrashedError
from tqdm import tqdm

from m3ret.config import EngineConfig
from m3ret.data.parallel import CRASH_REASON, ItemCrash
from m3ret.engines.journal import Journal
from m3ret.engines.ray_embed import embed_on_ray
from m3ret.models.encoder import Encoder

A = TypeVar("A")
R = TypeVar("R")
PACKAGE = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)
# the task's process died (a signal, Ray's memory monitor, its node lost): its code raised nothing
_DEATHS = (WorkerCrashedError, OutOfMemoryError, NodeDiedError)


def _run_chunk(fn: Callable[[A], R], items: list[A], cwd: str, journal_root: str | None, keys: list[str] | None):
    """On a worker: fn over items in the driver's working directory; each result is returned, or journalled
    under its key (None in its place) so that a large one reaches the driver through the shared filesystem."""
    os.chdir(cwd)
    out = []
    for position, item in enumerate(items):
        result = fn(item)
        if journal_root is None:
            out.append(result)
        else:
            Journal(journal_root).save(keys[position], result)
            out.append(None)
    return out


class RayEngine:
    """`engine.kind: ray` (module docstring). `stats[desc]` says, per step, how many items (embed: shards) were
    computed and how many found in the journal, the seconds to the first result (the cluster's start-up: workers
    started, code imported, the first task done) and in all."""

    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.journal_root = Path(cfg.journal_dir).resolve()
        self.cwd = os.getcwd()
        self.stats: dict[str, dict[str, int]] = {}
        self._owns_ray = False
        self._task: Any = None

    def _connect(self) -> None:
        if self._task is not None:
            return
        if not ray.is_initialized():
            address = self.cfg.ray_address or "local"
            local = {"num_cpus": self.cfg.local_cpus or None, "include_dashboard": False} if address == "local" else {}
            runtime_env = {"py_modules": [str(PACKAGE)], "excludes": ["__pycache__"]}
            ray.init(address=address, runtime_env=runtime_env, **local)
            self._owns_ray = True
        self._task = ray.remote(max_retries=0)(_run_chunk)
        log.info("ray engine: %s", ray.cluster_resources())

    def close(self) -> None:
        """Disconnect; a Ray started for the run is stopped with it."""
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False
        self._task = None

    def _submit(
        self, fn: Callable, items: Sequence, indices: list[int], journal: Journal | None, keys: Sequence[str] | None
    ) -> ray.ObjectRef:
        """One task of fn over items[indices], journalling under their keys when there is a journal."""
        root, batch_keys = (str(journal.root), [keys[i] for i in indices]) if journal else (None, None)
        task = self._task.options(num_cpus=self.cfg.cpus_per_task)
        return task.remote(fn, [items[i] for i in indices], self.cwd, root, batch_keys)

    def _collect(
        self,
        fn: Callable,
        items: Sequence,
        indices: list[int],
        ref: ray.ObjectRef,
        journal: Journal | None,
        keys: Sequence[str] | None,
    ) -> dict[int, Any]:
        """{index: result} of one task; a task that died is retried an item per task to find the item that kills."""
        try:
            out = ray.get(ref)
            return {i: journal.load(keys[i]) if journal else r for i, r in zip(indices, out, strict=True)}
        except _DEATHS:
            if len(indices) == 1:
                return {indices[0]: ItemCrash(CRASH_REASON)}
        results = {i: journal.load(keys[i]) for i in indices if journal and journal.has(keys[i])}
        alone = {i: self._submit(fn, items, [i], journal, keys) for i in indices if i not in results}
        for i, solo in alone.items():
            results.update(self._collect(fn, items, [i], solo, journal, keys))
        return results

    def map_items(
        self, fn: Callable[[A], R], items: Sequence[A], workers: int, desc: str, keys: Sequence[str] | None = None
    ) -> Iterator[R | ItemCrash]:
        """`m3ret.data.parallel.ItemMap` on the cluster. `workers` counts this machine's processes and does not
        apply: the cluster's CPUs decide. With `keys`, results are journalled in `journal_dir/desc` as they are
        finished, so a killed run started again computes only what it had not finished; the journal of these keys
        is discarded once every result has been handed over."""
        self._connect()
        tic, first = time.perf_counter(), None
        journal = Journal(self.journal_root / desc) if keys is not None else None
        found = [journal.has(key) for key in keys] if journal else [False] * len(items)
        todo = [i for i in range(len(items)) if not found[i]]
        chunks = deque(todo[j : j + self.cfg.items_per_task] for j in range(0, len(todo), self.cfg.items_per_task))
        window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1) / self.cfg.cpus_per_task))
        pending: deque[tuple[list[int], ray.ObjectRef]] = deque()
        results: dict[int, Any] = {}
        bar = tqdm(total=len(items), desc=desc, unit="item", dynamic_ncols=True, mininterval=1.0)
        try:
            for i in range(len(items)):
                if not found[i]:
                    while i not in results:
                        while chunks and len(pending) < window:
                            chunk = chunks.popleft()
                            pending.append((chunk, self._submit(fn, items, chunk, journal, keys)))
                        chunk, ref = pending.popleft()
                        results.update(self._collect(fn, items, chunk, ref, journal, keys))
                first = first or time.perf_counter() - tic
                yield journal.load(keys[i]) if found[i] else results.pop(i)
                bar.update()
        finally:
            for _chunk, ref in pending:
                ray.cancel(ref, force=True)
            bar.close()
        seconds = {"first_result_s": round(first or 0.0, 3), "seconds": round(time.perf_counter() - tic, 3)}
        self.stats[desc] = {"computed": len(todo), "from_journal": len(items) - len(todo), **seconds}
        log.info("ray engine, %s: %s", desc, self.stats[desc])
        if journal:
            journal.discard(keys)

    def pool_frames(
        self, encoder: Encoder, frames_dir: Path, n_frames: int, batch_size: int, workers: int
    ) -> torch.Tensor:
        """`m3ret.models.frame_vectors.pool_frames` on the cluster's actor pool (`ray_embed.embed_on_ray`);
        `workers` (this machine's shard readers) does not apply: each actor reads its own shards."""
        self._connect()
        journal = Journal(self.journal_root / "embed")
        pooled, self.stats["embed"] = embed_on_ray(self.cfg, journal, encoder, frames_dir, n_frames, batch_size)
        log.info("ray engine, embed (shards): %s", self.stats["embed"])
        return pooled
