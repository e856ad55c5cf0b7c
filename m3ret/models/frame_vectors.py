"""Stored frames through the encoder: pooled vectors in store order, and one vector per item (their mean)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler
from tqdm import tqdm

from m3ret.data.frame_store import FrameBatches
from m3ret.models.encoder import Encoder


def pool_frames(encoder: Encoder, frames_dir: Path, n_frames: int, batch_size: int, workers: int) -> torch.Tensor:
    """float32 [n_frames, D'] pooled vectors (`Encoder.pooled`, before whitening) of the store's frames in order, with
    a progress bar (images/s). DataLoader `workers` read shards while the encoder runs."""
    out = torch.empty((n_frames, encoder.readout.pooled_dim), dtype=torch.float32)
    batches = BatchSampler(SequentialSampler(range(n_frames)), batch_size, drop_last=False)
    dataset = FrameBatches(frames_dir, np.arange(n_frames))
    loader = DataLoader(dataset, sampler=batches, batch_size=None, num_workers=workers)
    bar = tqdm(total=n_frames, desc="embed", unit="img", dynamic_ncols=True, mininterval=1.0)
    start = 0
    with bar:
        for frames in loader:
            out[start : start + len(frames)] = encoder.pooled(frames, batch_size=batch_size)
            start += len(frames)
            bar.update(len(frames))
    return out


def item_vectors(frame_vectors: np.ndarray, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per item, the mean of its frame vectors renormalised: (item ids [M] in first-seen order, float32 [M, D])."""
    codes, uniques = pd.factorize(pd.Series(item_ids))
    sums = np.zeros((len(uniques), frame_vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, codes, frame_vectors)
    norms = np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return np.asarray(uniques), (sums / norms).astype(np.float32)
