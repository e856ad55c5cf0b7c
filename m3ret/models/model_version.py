"""The model version: 12 hex digits naming what produced a vector, so vectors of different models never mix.

It hashes the retrieval model file (weights, readout and its fitted whitening) and the read/preprocess settings that
turned files into frames; settings that change only speed do not count.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from m3ret.config import PreprocessConfig, ReadConfig, to_dict
from m3ret.data.preprocess import frame_settings


def file_digest(path: str | Path) -> hashlib._Hash:
    """A running sha256 of the file's bytes (more can be fed to it)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256")


def frames_settings(preprocess: PreprocessConfig, read: ReadConfig) -> bytes:
    """The read and preprocess settings that decide what a frame looks like, as canonical JSON bytes."""
    return json.dumps({"preprocess": frame_settings(preprocess), "read": to_dict(read)}, sort_keys=True).encode()


def model_version(model_path: str | Path, preprocess: PreprocessConfig, read: ReadConfig) -> str:
    """12 hex digits naming what produced a vector: the retrieval model's bytes and the preprocessing of frames."""
    digest = file_digest(model_path)
    digest.update(frames_settings(preprocess, read))
    return digest.hexdigest()[:12]
