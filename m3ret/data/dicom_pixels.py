"""DICOM stored values to display grey levels: header VOI LUT / window, CT presets, percentiles, colour depth."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_voi_lut

from m3ret.config import WindowingConfig
from m3ret.data.intensity import center_width_to_range, percentile_range, window_to_uint8


def colour_full_scale(ds: Dataset) -> float:
    """The sample value that means full intensity: 2**bits - 1 of the palette entries or of the stored samples."""
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
        bits = int(descriptor[2]) if descriptor else 16
    else:
        bits = int(ds.get("BitsStored") or 8)
    return float(2**bits - 1)


def colour_to_uint8(values: np.ndarray, full_scale: float) -> np.ndarray:
    """RGB samples [T,H,W,3] in [0, full_scale] -> uint8 [T,H,W,3]."""
    return window_to_uint8(values, 0.0, full_scale)


def grey_to_uint8(values: np.ndarray, ref: Dataset, windowing: WindowingConfig) -> np.ndarray:
    """Modality values [T,H,W] (HU for CT) -> uint8 [T,H,W], bright = dense.

    Order: the header's VOI LUT or WindowCenter/Width (pydicom's `apply_voi_lut`, taken from the series' first
    slice so the whole series shares one window) when `windowing.use_header`; else the CT preset; else the
    `windowing.percentiles` range of the series. MONOCHROME1 is inverted after windowing.
    """
    out = _header_voi_to_uint8(values, ref) if windowing.use_header else None
    if out is None:
        if ref.get("Modality") == "CT":
            low, high = center_width_to_range(*windowing.presets[windowing.ct_preset])
        else:
            low, high = percentile_range(values, windowing.percentiles)
        out = window_to_uint8(values, low, high)
    if ref.get("PhotometricInterpretation") == "MONOCHROME1":
        np.subtract(255, out, out=out)
    return out


def _has_voi_lut(ds: Dataset) -> bool:
    seq = ds.get("VOILUTSequence")
    return bool(seq) and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]


def _has_window(ds: Dataset) -> bool:
    return ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None


def _header_voi_to_uint8(values: np.ndarray, ref: Dataset) -> np.ndarray | None:
    """The header's VOI transform rescaled from its output range to [0, 255]; None when absent or unusable."""
    lut = _has_voi_lut(ref)
    if not (lut or _has_window(ref)):
        return None
    try:
        # The output range is a property of the transform, not of this image: probe it on the LUT's whole input
        # domain (a LUT) or on two far-out values (a window saturates to its y_min / y_max there).
        if lut:
            descriptor = ref.VOILUTSequence[0].LUTDescriptor
            n_entries, first_map = int(descriptor[0]) or 2**16, int(descriptor[1])
            probe = np.arange(first_map, first_map + n_entries, dtype=np.int64)
        else:
            probe = np.array([-1e30, 1e30])
        with np.errstate(over="ignore"):
            span = apply_voi_lut(probe, ref)
        low, high = float(np.min(span)), float(np.max(span))
        out = np.empty(values.shape, dtype=np.uint8)
        # One slice at a time: pydicom's windowing works in float64, which would double a volume's memory.
        for t in range(values.shape[0]):
            frame = values[t].astype(np.float32, copy=False)  # as pydicom saw it when series were float32
            frame = np.rint(frame).astype(np.int64) if lut else frame
            with np.errstate(over="ignore"):
                out[t] = window_to_uint8(apply_voi_lut(frame, ref), low, high)
    except (ValueError, NotImplementedError, AttributeError, IndexError, TypeError):
        # A malformed VOI module (width < 1, unsupported LUT depth) is not worth losing the item over.
        return None
    return out
