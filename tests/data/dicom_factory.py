"""Synthetic DICOM files for tests, written with pydicom in the DICOM File Format (preamble + file meta).

Import from a test with `sys.path.insert(0, str(Path(__file__).parent))` then `from dicom_factory import ...`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.3.1",
    "XA": "1.2.840.10008.5.1.4.1.1.12.1",
    "OT": "1.2.840.10008.5.1.4.1.1.7",
}


def make_dataset(
    pixels: np.ndarray,
    *,
    modality: str = "CT",
    photometric: str | None = None,
    bits_stored: int | None = None,
    series_uid: str | None = None,
    study_uid: str | None = None,
    patient_id: str = "PAT-001",
    patient_name: str = "Doe^Jane",
    birth_date: str = "19700101",
    position: Sequence[float] | None = None,
    orientation: Sequence[float] | None = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    instance: int | None = None,
    pixel_spacing: Sequence[float] | None = (0.5, 0.75),
    slice_thickness: float | None = None,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    burned_in: str | None = None,
    body_part: str | None = None,
    **extra: Any,
) -> FileDataset:
    """A dataset around `pixels`: [H,W] grey, [F,H,W] multi-frame grey, [H,W,3] or [F,H,W,3] colour.

    `pixels` holds stored values (uint8/uint16/int16); `rescale` is (slope, intercept); `window` is (centre, width).
    Identifying fields (name, birth date, patient id, UIDs) are always written so tests can check they are dropped.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASSES.get(modality, SOP_CLASSES["OT"])
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.Modality = modality
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.StudyDescription = "free text that must not leak"
    ds.StudyInstanceUID = study_uid or generate_uid()
    if series_uid != "":
        ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Manufacturer = "ACME"
    if photometric is None:
        photometric = "RGB" if pixels.shape[-1] == 3 and pixels.ndim >= 3 else "MONOCHROME2"
    ds.set_pixel_data(pixels, photometric, bits_stored or 8 * pixels.dtype.itemsize)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if position is not None:
        ds.ImagePositionPatient = [float(v) for v in position]
    if orientation is not None and position is not None:
        ds.ImageOrientationPatient = [float(v) for v in orientation]
    if instance is not None:
        ds.InstanceNumber = instance
    if pixel_spacing is not None:
        ds.PixelSpacing = [float(v) for v in pixel_spacing]
    if slice_thickness is not None:
        ds.SliceThickness = slice_thickness
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if burned_in is not None:
        ds.BurnedInAnnotation = burned_in
    if body_part is not None:
        ds.BodyPartExamined = body_part
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def save(ds: FileDataset, path: Path) -> Path:
    """Write `ds` in the DICOM File Format and return `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dicom(path: Path, pixels: np.ndarray, **kwargs: Any) -> Path:
    """`make_dataset(pixels, **kwargs)` saved to `path`."""
    return save(make_dataset(pixels, **kwargs), path)


def write_ct_series(
    folder: Path,
    hu: np.ndarray,
    *,
    spacing: tuple[float, float, float] = (2.5, 0.5, 0.75),
    with_positions: bool = True,
    seed: int = 0,
    series_uid: str | None = None,
    **kwargs: Any,
) -> list[Path]:
    """One CT series from `hu` [T,H,W] (HU, stored as int16 with slope 1, intercept -1024), one file per slice.

    Files are written in a shuffled order with shuffled names, so readers cannot rely on either; returns the paths
    in true slice order (index t at z = 10 + t * spacing[0]). InstanceNumber is always the true order + 1.
    """
    series_uid = series_uid or generate_uid()
    study_uid = kwargs.pop("study_uid", generate_uid())
    order = np.random.default_rng(seed).permutation(len(hu))
    paths: list[Path | None] = [None] * len(hu)
    for name_idx, t in enumerate(order):
        stored = (hu[t].astype(np.int32) + 1024).astype(np.int16)
        position = (-100.0, -120.0, 10.0 + t * spacing[0]) if with_positions else None
        ds = make_dataset(
            stored,
            series_uid=series_uid,
            study_uid=study_uid,
            position=position,
            instance=int(t) + 1,
            pixel_spacing=spacing[1:],
            slice_thickness=spacing[0],
            rescale=(1.0, -1024.0),
            **kwargs,
        )
        paths[t] = save(ds, folder / f"img_{name_idx:03d}.dcm")
    return [p for p in paths if p is not None]
