"""Intensity windowing: stored values (HU, MR signal, 16-bit counts) to display grey levels in uint8."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Windowing works on this many values at a time, so a volume never has more than one slab of float32 scratch.
_CHUNK_VALUES = 1 << 20
# Percentiles are estimated on at most this many values, a regular stride through the volume.
PERCENTILE_SAMPLE = 200_000


def window_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly onto [0, 255], clipping outside; any shape, returns uint8 of the same shape.

    `round(clip((v - low) * 255 / (high - low), 0, 255))` in float32, computed in place slab by slab along the
    first axis (one float32 scratch slab instead of full-size temporaries). NaN maps to 0 and +-inf to 255 / 0,
    as `nan_to_num(nan=low, posinf=high, neginf=low)` before the window would.
    """
    if not high > low:
        high = low + 1.0
    offset, scale = np.float32(low), np.float32(255.0 / (high - low))
    out = np.empty(values.shape, dtype=np.uint8)
    if values.size == 0:
        return out
    lead = values.reshape(1, *values.shape) if values.ndim == 0 else values
    flat_out = out.reshape(lead.shape)
    step = max(1, _CHUNK_VALUES // max(1, lead[0].size))
    scratch = np.empty((min(step, len(lead)), *lead.shape[1:]), dtype=np.float32)
    for start in range(0, len(lead), step):
        chunk = lead[start : start + step]
        buf = scratch[: len(chunk)]
        buf[...] = chunk  # cast first, as `values.astype(float32) - low` does, so integer input rounds the same
        np.subtract(buf, offset, out=buf)
        np.multiply(buf, scale, out=buf)
        # fmax/fmin rather than clip: they drop NaN for the bound, so NaN lands on 0 instead of an undefined cast
        np.fmax(buf, np.float32(0.0), out=buf)
        np.fmin(buf, np.float32(255.0), out=buf)
        np.rint(buf, out=buf)
        flat_out[start : start + len(chunk)] = buf
    return out


def center_width_to_range(center: float, width: float) -> tuple[float, float]:
    """DICOM PS3.3 C.11.2.1.2 linear window: the range [c - w/2, c + w/2]."""
    return center - width / 2.0, center + width / 2.0


def strided_sample(values: np.ndarray, sample: int = PERCENTILE_SAMPLE) -> np.ndarray:
    """At most about `sample` values of `values` (any shape, any layout): every k-th in memory order, 1-D.

    Contiguous input is strided as a view; a non-contiguous view is gathered element by element, never copied whole.
    """
    step = max(1, -(-values.size // sample))
    if values.flags.c_contiguous or values.flags.f_contiguous:
        return values.reshape(-1, order="A")[::step]
    return values.flat[::step]


def percentile_values(values: np.ndarray, qs: Sequence[float], sample: int = PERCENTILE_SAMPLE) -> np.ndarray | None:
    """The `qs` percentiles (0..100) of the finite values, float64 [len(qs)], all from one strided sample and one
    `np.percentile` call; None when no value is finite."""
    flat = strided_sample(values, sample)
    if flat.size and flat.dtype.kind in "iu":
        found = _histogram_percentiles(flat, qs)
        if found is not None:
            return found
        flat = flat.astype(np.float32)
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return None
    return np.percentile(flat, qs)


def _histogram_percentiles(flat: np.ndarray, qs: Sequence[float]) -> np.ndarray | None:
    """`np.percentile(flat, qs)` (method "linear") of integer samples, from their histogram instead of a partition:
    the value at sorted position k is the first level whose cumulative count exceeds k. None for a value range too
    wide for a histogram (then np.percentile runs)."""
    low, high = int(flat.min()), int(flat.max())
    if high - low > 1 << 20:
        return None
    cumulative = np.cumsum(np.bincount(flat.astype(np.intp) - low, minlength=high - low + 1))
    n = flat.size
    q = np.asarray(qs, dtype=np.float64) / 100.0
    virtual = n * q + (1.0 + q * (1.0 - 1.0 - 1.0)) - 1.0  # numpy's linear-method virtual index, same float ops
    previous = np.floor(virtual)
    gamma = virtual - previous
    below = np.clip(previous, 0, n - 1).astype(np.intp)
    above = np.clip(previous + 1, 0, n - 1).astype(np.intp)
    a = (np.searchsorted(cumulative, below, side="right") + low).astype(np.float64)
    b = (np.searchsorted(cumulative, above, side="right") + low).astype(np.float64)
    diff = b - a
    return np.where(gamma >= 0.5, b - diff * (1.0 - gamma), a + diff * gamma)  # numpy's _lerp


def percentile_range(
    values: np.ndarray, percentiles: tuple[float, float], sample: int = PERCENTILE_SAMPLE
) -> tuple[float, float]:
    """The (low, high) percentiles of the finite values, estimated on a strided sample for large volumes."""
    found = percentile_values(values, percentiles, sample)
    if found is None:
        return 0.0, 1.0
    return float(found[0]), float(found[1])
