"""Where the per-item work of ingest, preprocess and embed runs: `local` (this machine) or `ray` (a Ray cluster).

An engine offers the two maps the stages need, with the same results whichever runs them:
- `map_items(fn, items, workers, desc, keys)`: an `m3ret.data.parallel.ItemMap` for ingest's and preprocess's per-item
  functions (results in input order, an ItemCrash where a worker died);
- `pool_frames(encoder, frames_dir, n_frames, batch_size, workers)`: `m3ret.models.frame_vectors.pool_frames`, the
  pooled vectors float32 [n_frames, D'] of a frame store.
`ENGINES` maps `engine.kind` to a factory; the ray engine (and ray itself) is imported only when chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import torch

from m3ret.config import EngineConfig
from m3ret.data.parallel import ItemMap
from m3ret.engines.local import LocalEngine
from m3ret.models.encoder import Encoder


class Engine(Protocol):
    map_items: ItemMap

    def pool_frames(
        self, encoder: Encoder, frames_dir: Path, n_frames: int, batch_size: int, workers: int
    ) -> torch.Tensor: ...

    def close(self) -> None: ...


def _ray(cfg: EngineConfig) -> Engine:
    from m3ret.engines.ray_engine import RayEngine

    return RayEngine(cfg)


ENGINES: dict[str, Callable[[EngineConfig], Engine]] = {"local": lambda cfg: LocalEngine(), "ray": _ray}


@contextmanager
def open_engine(cfg: EngineConfig) -> Iterator[Engine]:
    """The engine `cfg.kind` names, closed (a Ray it started stopped) when the block ends."""
    if cfg.kind not in ENGINES:
        raise ValueError(f"engine.kind={cfg.kind!r}; valid: {sorted(ENGINES)}")
    engine = ENGINES[cfg.kind](cfg)
    try:
        yield engine
    finally:
        engine.close()
