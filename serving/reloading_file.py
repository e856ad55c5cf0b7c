"""A file the service reads while something else rewrites it (token hashes, the re-identification table): loaded
again when its modification time or size changes, so a change takes effect on the next request without a restart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


class ReloadingFile(Generic[T]):
    """`value()`: `load(path)` as of the file's current state; `missing` while there is no file."""

    def __init__(self, path: Path, load: Callable[[Path], T], missing: T) -> None:
        self.path = path
        self._load = load
        self._missing = missing
        self._value = missing
        self._stamp: tuple[int, int] | None = None

    def value(self) -> T:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._value, self._stamp = self._missing, None
            return self._value
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._value, self._stamp = self._load(self.path), stamp
        return self._value
