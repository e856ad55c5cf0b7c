"""DICOM geometry: per-frame attributes (functional groups), slice order along the normal, spacing, gaps."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from m3ret.data.dicom_meta import VIDEO_MODALITIES


def functional(ds: Dataset, frame: int, keyword: str, sequence: str) -> Any:
    """`keyword` for one frame: top level, else the per-frame then shared functional group item `sequence`."""
    if keyword in ds:
        return ds[keyword].value
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items and len(items) > index and items[index].get(sequence):
            value = items[index][sequence][0].get(keyword)
            if value is not None:
                return value
    return None


def _frame_vector(ds: Dataset, frame: int, keyword: str, sequence: str) -> np.ndarray | None:
    """`functional(ds, frame, keyword, sequence)` as float64."""
    value = functional(ds, frame, keyword, sequence)
    return None if value is None else np.asarray(value, dtype=np.float64)


def slice_order(headers: list[Dataset], frames: list[int]) -> tuple[list[tuple[int, int]], np.ndarray | None]:
    """(file index, frame index) of every output frame in order, and the sorted slice positions when known."""
    video = str(headers[0].get("Modality", "")) in VIDEO_MODALITIES
    records: list[tuple[int, int, int]] = []
    positions: list[np.ndarray | None] = []
    normal = None
    for f, (ds, n) in enumerate(zip(headers, frames, strict=True)):
        instance = int(ds.get("InstanceNumber") or 0)
        for k in range(n):
            records.append((f, k, instance))
            position = None if video else _frame_vector(ds, k, "ImagePositionPatient", "PlanePositionSequence")
            positions.append(position)
            if normal is None:
                cosines = _frame_vector(ds, k, "ImageOrientationPatient", "PlaneOrientationSequence")
                if cosines is not None and len(cosines) == 6:
                    normal = np.cross(cosines[:3], cosines[3:])
    if normal is not None and all(p is not None and p.shape == (3,) for p in positions):
        projection = np.array([float(p @ normal) for p in positions])
        # Ties (same position: echoes, time points) keep InstanceNumber, then file and frame order.
        order = sorted(range(len(records)), key=lambda i: (projection[i], records[i][2], i))
        return [records[i][:2] for i in order], projection[order]
    order = sorted(range(len(records)), key=lambda i: (records[i][2], i))
    return [records[i][:2] for i in order], None


def slice_spacing(ref: Dataset, positions: np.ndarray | None) -> list[float | None] | None:
    """[slice, row, column] spacing in mm; slice from the positions, else SpacingBetweenSlices/SliceThickness, None
    when neither is known (a single image keeps its in-plane spacing: its pixels may be oblong)."""
    in_plane = functional(ref, 0, "PixelSpacing", "PixelMeasuresSequence") or ref.get("ImagerPixelSpacing")
    if not in_plane or len(in_plane) != 2:
        return None
    slice_spacing = None
    if positions is not None and positions.size > 1:
        steps = np.abs(np.diff(positions))
        steps = steps[steps > 1e-4]
        slice_spacing = float(np.median(steps)) if steps.size else None
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        if slice_spacing is None:
            value = functional(ref, 0, keyword, "PixelMeasuresSequence")
            slice_spacing = float(value) if value else None
    return [slice_spacing, float(in_plane[0]), float(in_plane[1])]


def slice_gaps(positions: np.ndarray | None) -> int:
    """Slices missing between sorted positions: steps well beyond the median step count as round(step/median) - 1."""
    if positions is None or positions.size < 3:
        return 0
    steps = np.diff(positions)
    steps = steps[np.abs(steps) > 1e-4]
    if steps.size == 0:
        return 0
    typical = float(np.median(np.abs(steps)))
    ratios = np.abs(steps) / typical
    return int(np.sum(np.where(ratios > 1.5, np.round(ratios) - 1, 0)))
