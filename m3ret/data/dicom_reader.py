"""DICOM series -> modality values (HU for CT) or display-ready uint8 frames, plus de-identified metadata.

pydicom does the parsing and decoding (pylibjpeg plugins for JPEG, JPEG-LS, JPEG 2000, RLE). Each file is parsed
once, its pixel data deferred, so grouping, PHI and size checks happen before any pixel data is read or decoded.
A series keeps its usable files when they are at least as many as its broken ones: a file that cannot be read or
decoded, repeats another's SOPInstanceUID, or has another image shape is left out and reported (meta["dropped"]).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from m3ret.config import LimitsConfig, ReadConfig
from m3ret.data.dicom_geometry import functional, slice_gaps, slice_order, slice_spacing
from m3ret.data.dicom_meta import series_meta
from m3ret.data.dicom_pixels import colour_full_scale, colour_to_uint8, grey_to_uint8
from m3ret.data.errors import DuplicateInputError, InputError, InputTooLargeError, PHIRiskError, UnreadableInputError

# Elements larger than this (the pixel data) are read from the file only when used: one header parse per file.
DEFER_BYTES = 4096


class _Series(NamedTuple):
    values: np.ndarray  # int16 or float32 [T,H,W] modality values, or float32 [T,H,W,3] colour samples
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


def dicom_uids(path: Path) -> tuple[str, str]:
    """(StudyInstanceUID, SeriesInstanceUID) from one file's header, "" where absent: for the re-identification
    table only (`m3ret.data.reidentify`), never for anything stored with the item."""
    ds = _read_header(Path(path))
    return str(ds.get("StudyInstanceUID") or ""), str(ds.get("SeriesInstanceUID") or "")


def read_dicom_hu(paths: Sequence[Path], limits: LimitsConfig) -> tuple[np.ndarray, dict]:
    """One series (one multi-frame file, one file, or many single-frame files) -> values + meta.

    Returns float32 [T,H,W] grey values with the modality LUT / RescaleSlope+Intercept applied (HU for CT), or
    float32 [T,H,W,3] RGB samples (YBR converted, palette applied) at their stored depth. Frames are sorted by
    ImagePositionPatient projected on the slice normal (row x column cosines), else by InstanceNumber; clips of
    VIDEO_MODALITIES keep their stored order. Dimensions are checked against `limits` before decoding.
    """
    series = _load(paths, limits)
    return series.values.astype(np.float32, copy=False), series.meta


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
def _read_header(path: Path, with_pixels: bool = False) -> Dataset:
    """The dataset without its pixel data, or, `with_pixels`, with the pixel data deferred (read from the file when
    first used, without parsing the header again); UnreadableInputError when it is not DICOM or cut short.
    Datasets written without the 128-byte preamble and file meta header are read too (pydicom's `force`)."""
    try:
        size = path.stat().st_size
    except OSError as err:
        raise UnreadableInputError(path, f"cannot open: {err.strerror}") from err
    if size == 0:
        raise UnreadableInputError(path, "empty file (0 bytes)")
    try:
        ds = dcmread(path, defer_size=DEFER_BYTES) if with_pixels else dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        ds = _read_without_preamble(path, with_pixels)
    except Exception as err:  # pydicom raises many types on corrupt headers; all mean the same here
        raise UnreadableInputError(path, f"DICOM header cannot be parsed: {type(err).__name__}: {err}") from err
    if "SOPClassUID" not in ds and "Rows" not in ds:
        raise UnreadableInputError(path, "no SOP Class UID and no image attributes in the dataset (truncated or empty)")
    return ds


def _read_without_preamble(path: Path, with_pixels: bool) -> Dataset:
    """A dataset saved without preamble and file meta (pydicom's `force`), accepted when it parses to image
    attributes; its transfer syntax is then pydicom's guess from the encoding."""
    try:
        ds = (
            dcmread(path, force=True, defer_size=DEFER_BYTES)
            if with_pixels
            else dcmread(path, force=True, stop_before_pixels=True)
        )
    except Exception as err:
        raise UnreadableInputError(path, f"not a DICOM file: {type(err).__name__}: {err}") from err
    if "SOPClassUID" not in ds and "Rows" not in ds:
        raise UnreadableInputError(path, "not a DICOM file: no preamble, and no DICOM dataset without one")
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        ds.file_meta.TransferSyntaxUID = syntax
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


# ----------------------------------------------------------------------------------------------- decoding
def _decode(path: Path, ds: Dataset, n_frames: int) -> np.ndarray:
    """Pixel data of one file -> [F,H,W] modality values (integers when stored values and rescale are integers, else
    float32) or float32 [F,H,W,3] RGB."""
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    try:
        # The deferred pixel data is read now, without parsing the header again; a deflated dataset was inflated in
        # memory, so it is read whole. YBR_FULL/YBR_FULL_422 come out as RGB; JPEG 2000 ICT/RCT are undone.
        arr = pixel_array(dcmread(path) if syntax == DeflatedExplicitVRLittleEndian else ds)
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
            if arr.dtype.kind in "iu":
                return arr.reshape(shape)
        return arr.reshape(shape).astype(np.float32, copy=False)
    except Exception as err:
        raise UnreadableInputError(path, f"cannot apply the {photometric or 'modality'} LUT: {err}") from err


def _modality_lut(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """[F,H,W] stored values -> modality values; enhanced objects keep their rescale in functional groups.

    An integer slope and intercept on integer stored values (CT's 1 and -1024) are applied in int32 / int64: the
    same values as pydicom's float64 arithmetic, without the float64 copy."""
    if ds.get("ModalityLUTSequence"):
        return apply_modality_lut(arr, ds)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        if not (arr.dtype.kind in "iu" and slope.is_integer() and intercept.is_integer()):
            return apply_modality_lut(arr, ds)
        # int32 holds any 16-bit stored value times a slope and plus an intercept below 2**15
        small = arr.dtype.itemsize <= 2 and abs(slope) < 2**15 and abs(intercept) < 2**15
        out = arr.astype(np.int32 if small else np.int64)
        if slope != 1:
            out *= int(slope)
        out += int(intercept)
        return out
    slopes, intercepts = [], []
    for k in range(arr.shape[0]):
        slopes.append(functional(ds, k, "RescaleSlope", "PixelValueTransformationSequence"))
        intercepts.append(functional(ds, k, "RescaleIntercept", "PixelValueTransformationSequence"))
    if any(s is None for s in slopes) or any(i is None for i in intercepts):
        return arr
    slope = np.asarray(slopes, dtype=np.float32)[:, None, None]
    return arr * slope + np.asarray(intercepts, dtype=np.float32)[:, None, None]


def _store(values: np.ndarray, rows: list[int], decoded: np.ndarray) -> np.ndarray:
    """Put one member's decoded frames at `rows` of the series array; an int16 series (the common CT/MR case, half
    the memory of float32) becomes float32 first when these values are fractional or do not fit int16."""
    fits = decoded.dtype in (np.int8, np.uint8, np.int16)
    if (
        values.dtype == np.int16
        and not fits
        and (decoded.dtype.kind == "f" or decoded.size and (decoded.min() < -(2**15) or decoded.max() >= 2**15))
    ):
        values = values.astype(np.float32)
    values[rows] = decoded
    return values


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


class _Member(NamedTuple):
    path: Path
    ds: Dataset  # parsed once; its pixel data is read from the file only when decoded (deferred)
    frames: int


def _members(files: list[Path], limits: LimitsConfig, dropped: list[InputError]) -> list[_Member]:
    """The series' files that may be usable: each parsed once (pixel data deferred) and checked; a file that fails,
    or has another image shape than most members, is left out and added to `dropped`."""
    members: list[_Member] = []
    for path in files:
        try:
            ds = _read_header(path, with_pixels=True)
            n = _check(path, ds, limits)
        except InputError as err:
            dropped.append(err)
            continue
        members.append(_Member(path, ds, n))
    shapes = Counter(_pixel_shape(m.ds) for m in members)
    if len(shapes) > 1:
        shape = max(shapes, key=lambda s: (shapes[s], s))
        for m in members:
            if _pixel_shape(m.ds) != shape:
                reason = f"image shape {_pixel_shape(m.ds)} differs from the series' {shape}"
                dropped.append(UnreadableInputError(m.path, reason))
        members = [m for m in members if _pixel_shape(m.ds) == shape]
    return members


def _require_most(files: list[Path], kept: int, dropped: list[InputError]) -> None:
    """A series is kept when it has a usable file and at least as many usable files as broken ones (copies of an
    instance count as neither); else it fails with the first broken file's error, for the whole series."""
    broken = [err for err in dropped if not isinstance(err, DuplicateInputError)]
    if kept == 0 or kept < len(broken):
        first = (broken or dropped)[0]
        if len(files) == 1:
            raise first
        prefix = f"{kept} of {len(files)} files of the series usable; {Path(first.path).name}: "
        raise type(first)(files[0], prefix + first.reason)


def _assemble(files: list[Path], limits: LimitsConfig) -> _Series:
    """The usable members (`_members`) decoded into one array in slice order; members whose pixel data cannot be
    decoded are left out too, and so is a second file of an instance already decoded (same SOPInstanceUID: a copy,
    or a truncated copy beside its original, whichever sorts first). meta["members"] lists the files used,
    meta["dropped"] the others with their reason, meta["slice_gaps"] the slices missing between the kept positions
    (0 when none or unknown)."""
    dropped: list[InputError] = []
    members = _members(files, limits, dropped)
    _require_most(files, len(members), dropped)
    rows, cols, channels = _pixel_shape(members[0].ds)
    total = sum(m.frames for m in members)
    if total > limits.max_frames:
        raise InputTooLargeError(files[0], f"series has {total} frames, limit {limits.max_frames}")
    if total * rows * cols > limits.max_voxels:
        raise InputTooLargeError(files[0], f"series has {total * rows * cols} voxels, limit {limits.max_voxels}")

    order, positions = slice_order([m.ds for m in members], [m.frames for m in members])
    # Destination of each (member, frame): decoding then fills the output member by member.
    destination = {source: t for t, source in enumerate(order)}
    # grey series are held as int16 until a member needs more (see _store): the series' one full-size copy
    values = np.empty(
        (total, rows, cols) + ((3,) if channels == 3 else ()), dtype=np.int16 if channels == 1 else np.float32
    )
    decoded = np.ones(total, dtype=bool)
    instances: dict[str, Path] = {}
    for f, m in enumerate(members):
        rows_of_member = [destination[(f, k)] for k in range(m.frames)]
        sop = str(m.ds.get("SOPInstanceUID") or "")
        try:
            if sop in instances:
                raise DuplicateInputError(m.path, f"duplicate instance: same SOPInstanceUID as {instances[sop].name}")
            values = _store(values, rows_of_member, _decode(m.path, m.ds, m.frames))
            if sop:
                instances[sop] = m.path
        except InputError as err:
            dropped.append(err)
            decoded[rows_of_member] = False
        if "PixelData" in m.ds:
            del m.ds.PixelData  # the pixels are in `values` now; do not hold them twice
    used = [m for f, m in enumerate(members) if decoded[destination[(f, 0)]]]
    _require_most(files, len(used), dropped)
    if not decoded.all():
        values = values[decoded]
        order = [source for source, ok in zip(order, decoded, strict=True) if ok]
        positions = None if positions is None else positions[decoded]
    ref = members[order[0][0]].ds
    meta = series_meta(ref, len(values), rows, cols, channels, slice_spacing(ref, positions))
    meta["members"] = [str(m.path) for m in used]
    meta["dropped"] = sorted((err.path, err.reason) for err in dropped)
    meta["slice_gaps"] = slice_gaps(positions)
    return _Series(values, meta, ref)


def _pixel_shape(ds: Dataset) -> tuple[int, int, int]:
    colour = int(ds.get("SamplesPerPixel") or 1) == 3 or ds.get("PhotometricInterpretation") == "PALETTE COLOR"
    return int(ds.Rows), int(ds.Columns), 3 if colour else 1


# --------------------------------------------------------------------------------------------------- meta
