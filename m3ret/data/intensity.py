"""Intensity windowing: stored values (HU, MR signal, 16-bit counts) to display grey levels in uint8."""

from __future__ import annotations

import numpy as np


def window_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly onto [0, 255], clipping outside; any shape, returns uint8 of the same shape."""
    if not high > low:
        high = low + 1.0
    scaled = (values.astype(np.float32, copy=False) - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.clip(scaled, 0.0, 255.0).round().astype(np.uint8)


def center_width_to_range(center: float, width: float) -> tuple[float, float]:
    """DICOM PS3.3 C.11.2.1.2 linear window: the range [c - w/2, c + w/2]."""
    return center - width / 2.0, center + width / 2.0


def percentile_range(
    values: np.ndarray, percentiles: tuple[float, float], sample: int = 1_000_000
) -> tuple[float, float]:
    """The (low, high) percentiles of the finite values, estimated on a strided sample for large volumes."""
    flat = values.reshape(-1)
    if flat.size > sample:
        flat = flat[:: flat.size // sample]
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(flat, percentiles)
    return float(low), float(high)
