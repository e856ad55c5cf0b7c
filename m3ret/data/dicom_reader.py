"""DICOM series -> modality values (HU for CT) or display-ready uint8 frames, plus de-identified metadata.

pydicom does the parsing and decoding (pylibjpeg plugins for JPEG, JPEG-LS, JPEG 2000, RLE). Headers are read
first with `stop_before_pixels`, so grouping, PHI and size checks happen before any pixel data is decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from m3ret.config import LimitsConfig, ReadConfig
from m3ret.data.dicom_pixels import colour_full_scale, colour_to_uint8, grey_to_uint8
from m3ret.data.errors import InputError, InputTooLargeError, PHIRiskError, UnreadableInputError

MODALITIES: dict[str, str] = {
    "CT": "ct",
    "MR": "mri",
    "CR": "xray",
    "DX": "xray",
    "DR": "xray",
    "RG": "xray",
    "MG": "mammography",
    "US": "ultrasound",
    "NM": "nm",
    "PT": "pet",
    "XA": "angiography",
    "RF": "angiography",
    "ES": "endoscopy",
    "SM": "pathology",
    "OP": "fundus",
    "OPT": "fundus",
}
# Multi-frame objects of these modalities are clips in time (cine), not stacks in space: never sorted by position.
VIDEO_MODALITIES = frozenset({"US", "XA", "RF", "ES"})

# Acquisition and pixel-format fields only. Never names, dates, ids, UIDs (beyond the two below), free text,
# institutions or device serials: meta["header"] is stored and shown.
HEADER_ALLOWLIST: tuple[str, ...] = (
    "Modality",
    "BodyPartExamined",
    "Manufacturer",
    "ManufacturerModelName",
    "SOPClassUID",
    "TransferSyntaxUID",
    "ImageType",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "ImageOrientationPatient",
    "PatientPosition",
    "ViewPosition",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "KVP",
    "XRayTubeCurrent",
    "ExposureTime",
    "Exposure",
    "ConvolutionKernel",
    "MagneticFieldStrength",
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "FlipAngle",
    "ScanningSequence",
    "SequenceVariant",
    "MRAcquisitionType",
    "FrameTime",
    "CineRate",
    "LossyImageCompression",
)


class _Series(NamedTuple):
    values: np.ndarray  # float32 [T,H,W] modality values or [T,H,W,3] colour samples
    meta: dict[str, Any]
    ref: Dataset  # header of the first frame's file (after sorting)


def group_dicom_series(files: Sequence[Path]) -> tuple[list[list[Path]], list[tuple[str, str]]]:
    """Header-only pass: single-frame files grouped by SeriesInstanceUID and image geometry (a file without a UID is
    its own series, and so is every multi-frame file: a cine loop or an enhanced volume is one item by itself;
    a scout or a crop saved under the volume's series UID is kept apart by its different Rows/Columns).

    Returns (series, each a sorted list of paths, the list sorted by first path; rejects as (path, reason) for files
    pydicom cannot parse as DICOM: empty, truncated header, not DICOM).
    """
    groups: dict[str, list[Path]] = {}
    rejects: list[tuple[str, str]] = []
    for path in map(Path, files):
        try:
            ds = _read_header(path)
        except UnreadableInputError as err:
            rejects.append((str(path), err.reason))
            continue
        uid = str(ds.get("SeriesInstanceUID") or "")
        try:
            multi_frame = int(ds.get("NumberOfFrames") or 1) > 1
        except (TypeError, ValueError):  # a malformed count is judged when the item is decoded
            multi_frame = False
        key = f"file:{path}" if not uid or multi_frame else f"{uid}:{ds.get('Rows')}x{ds.get('Columns')}"
        groups.setdefault(key, []).append(path)
    series = sorted((sorted(paths) for paths in groups.values()), key=lambda paths: str(paths[0]))
    return series, rejects


def read_dicom_hu(paths: Sequence[Path], limits: LimitsConfig) -> tuple[np.ndarray, dict]:
    """One series (one multi-frame file, one file, or many single-frame files) -> values + meta.

    Returns float32 [T,H,W] grey values with the modality LUT / RescaleSlope+Intercept applied (HU for CT), or
    float32 [T,H,W,3] RGB samples (YBR converted, palette applied) at their stored depth. Frames are sorted by
    ImagePositionPatient projected on the slice normal (row x column cosines), else by InstanceNumber; clips of
    VIDEO_MODALITIES keep their stored order. Dimensions are checked against `limits` before decoding.
    """
    series = _load(paths, limits)
    return series.values, series.meta


def read_dicom(paths: Sequence[Path], cfg: ReadConfig) -> tuple[np.ndarray, dict]:
    """One series -> display-ready uint8 [T,H,W,C] (C=1 grey, C=3 colour) + meta (see `read_dicom_hu`).

    Grey: header VOI LUT / window when `cfg.windowing.use_header`, else the CT preset, else percentiles;
    MONOCHROME1 inverted after windowing. Colour: samples scaled from their bit depth to 0..255.
    """
    values, meta, ref = _load(paths, cfg.limits)
    if meta["channels"] == 3:
        return colour_to_uint8(values, colour_full_scale(ref)), meta
    return grey_to_uint8(values, ref, cfg.windowing)[..., None], meta


# ------------------------------------------------------------------------------------------------ headers
def _read_header(path: Path) -> Dataset:
    """Everything before the pixel data; UnreadableInputError when it is not DICOM or cut short."""
    try:
        size = path.stat().st_size
    except OSError as err:
        raise UnreadableInputError(path, f"cannot open: {err.strerror}") from err
    if size == 0:
        raise UnreadableInputError(path, "empty file (0 bytes)")
    try:
        ds = dcmread(path, stop_before_pixels=True)
    except InvalidDicomError as err:
        raise UnreadableInputError(path, f"not a DICOM file: {err}") from err
    except Exception as err:  # pydicom raises many types on corrupt headers; all mean the same here
        raise UnreadableInputError(path, f"DICOM header cannot be parsed: {type(err).__name__}: {err}") from err
    if "SOPClassUID" not in ds and "Rows" not in ds:
        raise UnreadableInputError(path, "no SOP Class UID and no image attributes in the dataset (truncated or empty)")
    return ds


def _check(path: Path, ds: Dataset, limits: LimitsConfig) -> int:
    """PHI and size checks on one header; returns its number of frames."""
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        raise PHIRiskError(path, "BurnedInAnnotation is YES: the pixels carry identifying text")
    size_mb = path.stat().st_size / 2**20
    if size_mb > limits.max_file_mb:
        raise InputTooLargeError(path, f"file is {size_mb:.0f} MB, limit {limits.max_file_mb:.0f} MB")
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if not (rows and cols):
        sop = UID(str(ds.get("SOPClassUID", ""))).name or "unknown SOP class"
        raise UnreadableInputError(path, f"no image in this DICOM object (Rows/Columns missing; {sop})")
    if max(rows, cols) > limits.max_side:
        raise InputTooLargeError(path, f"header declares {rows}x{cols} pixels, limit {limits.max_side} per side")
    if int(ds.get("SamplesPerPixel") or 1) not in (1, 3):
        raise UnreadableInputError(path, f"unsupported SamplesPerPixel={ds.SamplesPerPixel}")
    return max(int(ds.get("NumberOfFrames") or 1), 1)


def _functional(ds: Dataset, frame: int, keyword: str, sequence: str) -> Any:
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


# ----------------------------------------------------------------------------------------------- geometry
def _order(headers: list[Dataset], frames: list[int]) -> tuple[list[tuple[int, int]], np.ndarray | None]:
    """(file index, frame index) of every output frame in order, and the sorted slice positions when known."""
    video = str(headers[0].get("Modality", "")) in VIDEO_MODALITIES
    records: list[tuple[int, int, int]] = []
    positions: list[np.ndarray | None] = []
    normal = None
    for f, (ds, n) in enumerate(zip(headers, frames, strict=True)):
        instance = int(ds.get("InstanceNumber") or 0)
        for k in range(n):
            records.append((f, k, instance))
            position = None if video else _functional(ds, k, "ImagePositionPatient", "PlanePositionSequence")
            positions.append(None if position is None else np.asarray(position, dtype=np.float64))
            cosines = _functional(ds, k, "ImageOrientationPatient", "PlaneOrientationSequence")
            if normal is None and cosines is not None and len(cosines) == 6:
                cosines = np.asarray(cosines, dtype=np.float64)
                normal = np.cross(cosines[:3], cosines[3:])
    if normal is not None and all(p is not None and p.shape == (3,) for p in positions):
        projection = np.array([float(p @ normal) for p in positions])
        # Ties (same position: echoes, time points) keep InstanceNumber, then file and frame order.
        order = sorted(range(len(records)), key=lambda i: (projection[i], records[i][2], i))
        return [records[i][:2] for i in order], projection[order]
    order = sorted(range(len(records)), key=lambda i: (records[i][2], i))
    return [records[i][:2] for i in order], None


def _spacing(ref: Dataset, positions: np.ndarray | None) -> list[float] | None:
    """[slice, row, column] spacing in mm; slice from the positions, else SpacingBetweenSlices/SliceThickness."""
    in_plane = _functional(ref, 0, "PixelSpacing", "PixelMeasuresSequence") or ref.get("ImagerPixelSpacing")
    if not in_plane or len(in_plane) != 2:
        return None
    slice_spacing = None
    if positions is not None and positions.size > 1:
        steps = np.abs(np.diff(positions))
        steps = steps[steps > 1e-4]
        slice_spacing = float(np.median(steps)) if steps.size else None
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        if slice_spacing is None:
            value = _functional(ref, 0, keyword, "PixelMeasuresSequence")
            slice_spacing = float(value) if value else None
    if slice_spacing is None:
        return None
    return [slice_spacing, float(in_plane[0]), float(in_plane[1])]


# ----------------------------------------------------------------------------------------------- decoding
def _decode(path: Path, ds: Dataset, n_frames: int) -> np.ndarray:
    """Pixel data of one file -> float32 [F,H,W] modality values or [F,H,W,3] RGB."""
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    try:
        # From the path: pydicom reads only the pixel data it needs. A deflated dataset must be inflated first.
        # YBR_FULL/YBR_FULL_422 come out as RGB; JPEG 2000 ICT/RCT are undone by the decoder.
        arr = pixel_array(dcmread(path) if syntax == DeflatedExplicitVRLittleEndian else path)
    except Exception as err:  # codec missing, truncated or corrupt stream: pydicom's message names the cause
        raise UnreadableInputError(path, f"pixel data cannot be decoded ({syntax.name or syntax}): {err}") from err
    photometric = str(ds.get("PhotometricInterpretation", ""))
    rows, cols, channels = _pixel_shape(ds)
    shape = (n_frames, rows, cols) + ((3,) if channels == 3 else ())
    try:
        if photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)[..., :3]
        elif channels == 1:
            arr = _modality_lut(arr.reshape(shape), ds)
        return arr.reshape(shape).astype(np.float32, copy=False)
    except Exception as err:
        raise UnreadableInputError(path, f"cannot apply the {photometric or 'modality'} LUT: {err}") from err


def _modality_lut(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """[F,H,W] stored values -> modality values; enhanced objects keep their rescale in functional groups."""
    if ds.get("ModalityLUTSequence") or ("RescaleSlope" in ds and "RescaleIntercept" in ds):
        return apply_modality_lut(arr, ds)
    slopes, intercepts = [], []
    for k in range(arr.shape[0]):
        slopes.append(_functional(ds, k, "RescaleSlope", "PixelValueTransformationSequence"))
        intercepts.append(_functional(ds, k, "RescaleIntercept", "PixelValueTransformationSequence"))
    if any(s is None for s in slopes) or any(i is None for i in intercepts):
        return arr
    slope = np.asarray(slopes, dtype=np.float32)[:, None, None]
    return arr * slope + np.asarray(intercepts, dtype=np.float32)[:, None, None]


def _load(paths: Sequence[Path], limits: LimitsConfig) -> _Series:
    if not paths:
        raise ValueError("read_dicom: no files given")
    files = sorted(map(Path, paths))
    try:
        return _assemble(files, limits)
    except InputError:
        raise
    except Exception as err:  # header values pydicom parses lazily (bad IS/DS strings, odd sequences) fail here
        raise UnreadableInputError(files[0], f"malformed DICOM header: {type(err).__name__}: {err}") from err


def _assemble(files: list[Path], limits: LimitsConfig) -> _Series:
    headers = [_read_header(p) for p in files]
    frames = [_check(p, ds, limits) for p, ds in zip(files, headers, strict=True)]
    shape = _pixel_shape(headers[0])
    for p, ds in zip(files[1:], headers[1:], strict=True):
        if _pixel_shape(ds) != shape:
            raise UnreadableInputError(
                p, f"image shape {_pixel_shape(ds)} differs from {shape} of {files[0].name} in the same series"
            )
    total = sum(frames)
    rows, cols, channels = shape
    if total > limits.max_frames:
        raise InputTooLargeError(files[0], f"series has {total} frames, limit {limits.max_frames}")
    if total * rows * cols > limits.max_voxels:
        raise InputTooLargeError(files[0], f"series has {total * rows * cols} voxels, limit {limits.max_voxels}")

    order, positions = _order(headers, frames)
    # Destination of each (file, frame): decoding then fills the output file by file.
    destination = {source: t for t, source in enumerate(order)}
    values = np.empty((total, rows, cols) + ((3,) if channels == 3 else ()), dtype=np.float32)
    for f, (path, ds, n) in enumerate(zip(files, headers, frames, strict=True)):
        values[[destination[(f, k)] for k in range(n)]] = _decode(path, ds, n)
    ref = headers[order[0][0]]
    return _Series(values, _meta(ref, total, rows, cols, channels, _spacing(ref, positions)), ref)


def _pixel_shape(ds: Dataset) -> tuple[int, int, int]:
    colour = int(ds.get("SamplesPerPixel") or 1) == 3 or ds.get("PhotometricInterpretation") == "PALETTE COLOR"
    return int(ds.Rows), int(ds.Columns), 3 if colour else 1


# --------------------------------------------------------------------------------------------------- meta
def _meta(ref: Dataset, n: int, rows: int, cols: int, channels: int, spacing: list[float] | None) -> dict[str, Any]:
    modality = str(ref.get("Modality") or "").upper()
    kind = "image" if n == 1 else "video" if modality in VIDEO_MODALITIES else "volume"
    return {
        "kind": kind,
        "modality": MODALITIES.get(modality, "other"),
        "body_part": str(ref.get("BodyPartExamined") or "").lower(),
        "spacing": spacing,
        "n_frames": n,
        "height": rows,
        "width": cols,
        "channels": channels,
        "header": _header(ref),
        "ids": {
            "patient": str(ref.get("PatientID") or ""),
            "study": str(ref.get("StudyInstanceUID") or ""),
            "series": str(ref.get("SeriesInstanceUID") or ""),
        },
    }


def _header(ds: Dataset) -> dict[str, Any]:
    """HEADER_ALLOWLIST fields present in `ds` (TransferSyntaxUID from the file meta), as plain JSON types."""
    out: dict[str, Any] = {}
    for keyword in HEADER_ALLOWLIST:
        source = ds.file_meta if keyword == "TransferSyntaxUID" else ds
        value = _plain(source.get(keyword))
        if value not in (None, "", []):
            out[keyword] = value
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, MultiValue | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float):  # DSfloat is a float
        return float(value)
    if isinstance(value, int):  # IS is an int
        return int(value)
    if value is None or isinstance(value, bytes | Dataset):
        return None
    return str(value)
