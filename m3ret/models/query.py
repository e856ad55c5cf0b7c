"""A file as a query: decoded and preprocessed exactly like indexed items, then embedded.

The one path from a query file to its vectors, used by `m3ret search`, the retrieval service and evaluation, so a
query and the items it is compared with always go through the same reader, windowing, letterbox and encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from m3ret.config import PreprocessConfig, ReadConfig
from m3ret.data.errors import UnreadableInputError
from m3ret.data.preprocess import item_frames
from m3ret.data.readers import read
from m3ret.models.encoder import Encoder
from m3ret.models.frame_vectors import item_vectors


@dataclass
class Query:
    """frames uint8 [T, S, S, 3] (model-ready), frame_vectors float32 [T, D], vector float32 [D] (their mean,
    renormalised: the query's series-level embedding), meta: the reader's facts (kind, modality, ...)."""

    frames: np.ndarray
    frame_vectors: np.ndarray
    vector: np.ndarray
    meta: dict[str, Any]

    @classmethod
    def from_frame_vectors(cls, frames: np.ndarray, frame_vectors: np.ndarray, meta: dict[str, Any]) -> Query:
        """Frames [T, S, S, 3] and their vectors [T, D] -> a Query whose vector is their renormalised mean."""
        _ids, mean = item_vectors(frame_vectors, np.zeros(len(frame_vectors), dtype=np.int64))
        return cls(frames=frames, frame_vectors=frame_vectors, vector=mean[0], meta=meta)

    def preview(self) -> np.ndarray:
        """One representative frame uint8 [S, S, 3] (`middle_frame`)."""
        return middle_frame(self.frames)


def middle_frame(frames: np.ndarray) -> np.ndarray:
    """One representative frame of [T, S, S, 3]: the middle slice of a volume, the middle frame of a video."""
    return frames[len(frames) // 2]


def decode_query(path: str | Path, read_cfg: ReadConfig, preprocess: PreprocessConfig) -> tuple[np.ndarray, dict]:
    """Any supported file (or a DICOM series folder) -> (model-ready frames uint8 [T, S, S, 3], the reader's meta).
    Raises the readers' InputError on bad input (UnreadableInputError when it decodes to no frames)."""
    decoded, meta = read(path, read_cfg)
    if not len(decoded):
        raise UnreadableInputError(path, "decoded no frames")
    frames, _records = item_frames(decoded, meta, preprocess)
    return frames, meta


def embed_file(path: str | Path, encoder: Encoder, read_cfg: ReadConfig, preprocess: PreprocessConfig) -> Query:
    """Any supported file (or a DICOM series folder) -> Query. Raises the readers' InputError on bad input."""
    frames, meta = decode_query(path, read_cfg, preprocess)
    return Query.from_frame_vectors(frames, encoder.embed(frames).numpy(), meta)
