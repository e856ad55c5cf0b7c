"""The `local` engine: this machine's process pool for per-item work (`parallel_map`) and one process that embeds."""

from __future__ import annotations

from m3ret.data.parallel import parallel_map
from m3ret.models.frame_vectors import pool_frames


class LocalEngine:
    """What the stages did before engines existed: nothing starts, nothing is kept between runs."""

    map_items = staticmethod(parallel_map)
    pool_frames = staticmethod(pool_frames)

    def close(self) -> None:
        """Nothing to release."""


LOCAL = LocalEngine()
