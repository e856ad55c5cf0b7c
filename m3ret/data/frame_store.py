"""Model-ready frames on disk: uint8 shards `shard-NNNNN.npy` [n,S,S,3] plus `frames.parquet` linking every frame
to its item (and plane, volume, frame index, timestamp) by (shard, row)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

FRAMES_TABLE = "frames.parquet"
STORE_INFO = "store.json"
FRAME_COLUMNS = ("frame_id", "item_id", "plane", "volume_index", "frame_index", "timestamp", "shard", "row")


def shard_path(root: Path, shard: int) -> Path:
    return root / f"shard-{shard:05d}.npy"


class ShardWriter:
    """Appends frames [T,S,S,3] to fixed-size shards; each shard is written once, atomically, when full or on close."""

    def __init__(self, root: Path, size: int, shard_frames: int) -> None:
        self.root, self.size, self.shard_frames = Path(root), size, shard_frames
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob("shard-*.npy"):
            stale.unlink()
        self._buffer = np.empty((shard_frames, size, size, 3), dtype=np.uint8)
        self._filled = 0
        self._shard = 0

    def append(self, frames: np.ndarray) -> list[tuple[int, int]]:
        """Store frames uint8 [T,S,S,3]; returns the (shard, row) of each."""
        if frames.dtype != np.uint8 or frames.shape[1:] != (self.size, self.size, 3):
            raise ValueError(f"frames must be uint8 [T,{self.size},{self.size},3], got {frames.dtype} {frames.shape}")
        locations = []
        start = 0
        while start < len(frames):
            take = min(len(frames) - start, self.shard_frames - self._filled)
            self._buffer[self._filled : self._filled + take] = frames[start : start + take]
            locations += [(self._shard, self._filled + i) for i in range(take)]
            self._filled += take
            start += take
            if self._filled == self.shard_frames:
                self._flush()
        return locations

    def close(self) -> int:
        """Write the last partial shard; returns the number of shards."""
        if self._filled:
            self._flush()
        return self._shard

    def _flush(self) -> None:
        target = shard_path(self.root, self._shard)
        tmp = target.with_suffix(".tmp.npy")
        np.save(tmp, self._buffer[: self._filled])
        os.replace(tmp, target)
        self._shard += 1
        self._filled = 0


def write_frames_table(root: Path, table: pd.DataFrame, size: int) -> None:
    """The frames manifest and the store's facts (frame size, count), written after every shard is in place."""
    missing = set(FRAME_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"frames table lacks columns {sorted(missing)}")
    table.to_parquet(root / FRAMES_TABLE, index=False)
    (root / STORE_INFO).write_text(json.dumps({"size": size, "n_frames": len(table)}, indent=2) + "\n")


class FrameStore:
    """Read side: `table` (one row per frame, columns FRAME_COLUMNS) and `get(frame_ids) -> uint8 [N,S,S,3]`.

    Shards are memory-mapped on first use, so a DataLoader worker that forks after opening reads only what it needs.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        info = json.loads((self.root / STORE_INFO).read_text())
        self.size: int = int(info["size"])
        self.table: pd.DataFrame = pd.read_parquet(self.root / FRAMES_TABLE)
        self._shard_of = self.table["shard"].to_numpy(np.int64)
        self._row_of = self.table["row"].to_numpy(np.int64)
        self._shards: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.table)

    def _shard(self, shard: int) -> np.ndarray:
        if shard not in self._shards:
            self._shards[shard] = np.load(shard_path(self.root, shard), mmap_mode="r")
        return self._shards[shard]

    def get(self, frame_ids: np.ndarray | list[int]) -> np.ndarray:
        """Frames by position in `table` (= frame_id), uint8 [N,S,S,3], in the order asked."""
        ids = np.asarray(frame_ids, dtype=np.int64)
        out = np.empty((len(ids), self.size, self.size, 3), dtype=np.uint8)
        shards = self._shard_of[ids]
        for shard in np.unique(shards):
            sel = np.flatnonzero(shards == shard)
            rows = self._row_of[ids[sel]]
            order = np.argsort(rows)
            out[sel[order]] = self._shard(int(shard))[rows[order]]
        return out


class FrameBatches(Dataset):
    """A torch Dataset indexed by a batch of positions into `frames` (frame ids of the store at `root`): one
    vectorised store read -> uint8 [B, S, S, 3]. Each DataLoader worker memory-maps the shards itself."""

    def __init__(self, root: str | Path, frames: np.ndarray) -> None:
        self.root = Path(root)
        self.frames = np.asarray(frames)
        self._store: FrameStore | None = None

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, batch: list[int]) -> torch.Tensor:
        if self._store is None:
            self._store = FrameStore(self.root)
        return torch.from_numpy(self._store.get(self.frames[batch]))
