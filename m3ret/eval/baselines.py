"""Reference embeddings that need no training: the raw-pixel floor every learned encoder must beat, and a randomly
initialised encoder of the same architecture.

The medbench README floor is: PIL "L" grayscale (ITU-R 601-2 luma), PIL BILINEAR (antialiased) resize to 32 x 32,
each image's own mean subtracted (per image; a dataset-wide mean gives other numbers), L2-normalised, cosine.
From the original files (squashed to 32 x 32, `raw_pixel_embeddings_from_files`) this reproduces the README table
to 3 decimals; from letterboxed frames (`raw_pixel_embeddings` on a loaded Benchmark's frames) the zero padding of
non-square images shifts the numbers slightly (chest X-ray P@1 +0.01..0.02, mean mAP@10 +0.005..0.007).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from m3ret.config import ReadoutConfig
from m3ret.models.encoder import Encoder, build_encoder
from m3ret.models.readout import Readout, fit_and_project, whiten_on


def _grey_thumbnail(image: Image.Image, size: int) -> np.ndarray:
    return np.asarray(image.convert("L").resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def _centre_normalise(thumbs: np.ndarray) -> np.ndarray:
    """float32 [N,size,size] -> [N,size*size], each row minus its own mean, L2-normalised (a flat image -> 0)."""
    flat = thumbs.reshape(len(thumbs), -1)
    flat -= flat.mean(axis=1, keepdims=True)
    flat /= np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    return flat


def raw_pixel_embeddings(images: np.ndarray, size: int = 32) -> np.ndarray:
    """uint8 [N,H,W,3] -> float32 [N, size*size]: grayscale, resized to size x size, mean-centred, L2-normalised.

    Per image through PIL on purpose: its integer luma and antialiased bilinear filter define the README floor,
    and its C loop (~0.1 ms per 256 px image) beats a vectorised float version, which has to materialise
    float copies of the whole batch.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [N,H,W,3], got shape {images.shape}")
    thumbs = np.empty((len(images), size, size), dtype=np.float32)
    for i, rgb in enumerate(images):
        thumbs[i] = _grey_thumbnail(Image.fromarray(np.asarray(rgb, dtype=np.uint8)), size)
    return _centre_normalise(thumbs)


def raw_pixel_embeddings_from_files(paths: Sequence[str | Path], size: int = 32, workers: int = 2) -> np.ndarray:
    """Image files -> float32 [N, size*size]: the README floor exactly (each file squashed to size x size, no
    letterbox). An unreadable file raises PIL's error; use it on the paths of a loaded Benchmark's items (readable
    files only)."""

    def thumb(path: str | Path) -> np.ndarray:
        with Image.open(path) as img:
            return _grey_thumbnail(img, size)

    # Threads: PIL releases the GIL while decoding and resizing.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        thumbs = list(pool.map(thumb, paths))
    return _centre_normalise(np.stack(thumbs) if thumbs else np.zeros((0, size, size), np.float32))


def random_init_like(encoder: Encoder) -> Encoder:
    """A randomly initialised encoder (seed 0) of `encoder`'s architecture, on its device, in eval mode; the caller's
    random stream is left untouched (fork_rng)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_encoder(encoder.cfg).to(encoder.pixel_mean.device).eval()


def floor_vectors(
    random_readout: Readout, readout: ReadoutConfig, random_pooled: Tensor, raw_pixels: np.ndarray, fit_rows: Tensor
) -> dict[str, np.ndarray]:
    """The floors per row, for a fair comparison under `readout`: "random init" (`random_pooled` [N, D'] through the
    random encoder's readout, whitened when `readout.whiten` with the whitening fitted on rows `fit_rows`) and
    "raw pixels" ([N, P] as given); with whitening, also "random init unwhitened" and "raw pixels whitened"."""
    out = {
        "random init": fit_and_project(random_readout, readout, random_pooled, fit_rows).numpy(),
        "raw pixels": np.asarray(raw_pixels, np.float32),
    }
    if readout.whiten:
        out["random init unwhitened"] = F.normalize(random_pooled, dim=-1).numpy()
        out["raw pixels whitened"] = whiten_on(torch.from_numpy(out["raw pixels"]), fit_rows, readout).numpy()
    return out
