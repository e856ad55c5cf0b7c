"""Training checkpoints written atomically (a crash mid-save leaves the previous file intact) and the encoder export.

Layout of `out/`: `ckpt-<step:08d>.pt` (full training state, the last `keep` of them) and `encoder.pt`.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

ENCODER_FILE = "encoder.pt"
_CKPT_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")


def checkpoint_path(dirpath: Path, step: int) -> Path:
    """Where the checkpoint taken after `step` completed optimiser steps lives."""
    return Path(dirpath) / f"ckpt-{step:08d}.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """`torch.save(state)` to a temporary file next to `path`, fsync it, then `os.replace` it over `path`.

    The rename is atomic on POSIX, so readers see the old file or the new one, never a torn one; the directory is
    fsynced too so the rename itself survives a power cut. On any failure the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`.

    `weights_only=False` because the state holds numpy and Python RNG states; only load files this project wrote.
    """
    return torch.load(Path(path), map_location=map_location, weights_only=False)


def list_checkpoints(dirpath: Path) -> list[Path]:
    """Training checkpoints in `dirpath`, oldest step first; temporary and foreign files are ignored."""
    dirpath = Path(dirpath)
    if not dirpath.is_dir():
        return []
    found = [p for p in dirpath.iterdir() if _CKPT_NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_CKPT_NAME.match(p.name).group(1)))


def latest_checkpoint(dirpath: Path) -> Path | None:
    """The checkpoint with the highest step in `dirpath`, or None when there is none."""
    found = list_checkpoints(dirpath)
    return found[-1] if found else None


def prune_checkpoints(dirpath: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (keeping more than one guards against a bad latest file)."""
    for old in list_checkpoints(dirpath)[:-keep]:
        old.unlink(missing_ok=True)


def save_encoder(path: Path, encoder: nn.Module, model_config: dict[str, Any], **meta: Any) -> None:
    """The encoder-only export for embedding: `{"state_dict", "model": to_dict(ModelConfig), **meta}`, atomically."""
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    save_checkpoint(Path(path), {"state_dict": state, "model": model_config, **meta})
