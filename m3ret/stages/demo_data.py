"""The demo_data stage: a small mixed corpus built from files that ship with installed packages."""

from __future__ import annotations

from m3ret.config import Params
from m3ret.data.demo_corpus import build_demo_corpus


def run(params: Params) -> dict[str, int]:
    """Build `demo_data.out`; returns the number of files per kind."""
    return build_demo_corpus(params.demo_data)
