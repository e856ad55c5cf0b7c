"""Finished parts of a step in flight, in a folder every node sees, each named by the content hash of its inputs.

A run killed half-way and started again finds the parts it finished and redoes only the rest. A part is written under
a temporary name and renamed, so a reader sees it whole or not at all, and two workers that make the same part write
the same bytes. The step discards its parts once it holds its whole result: the journal is not a cache.
Parts are pickles, as Ray's own objects are: the folder must be as trusted as the pipeline's data folder.
"""

from __future__ import annotations

import os
import pickle
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class Journal:
    """Parts of one step under `root` (an absolute path on a filesystem shared by the cluster)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pkl"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def save(self, key: str, value: Any) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{key}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as handle:
            pickle.dump(value, handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, self.path(key))

    def load(self, key: str) -> Any:
        with open(self.path(key), "rb") as handle:
            return pickle.load(handle)

    def discard(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.path(key).unlink(missing_ok=True)
