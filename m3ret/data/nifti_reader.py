"""NIfTI-1/2 volumes (`.nii`, `.nii.gz`, any file name) to display-ready uint8 slices.

Orientation is nibabel's: the image is reoriented to the closest canonical RAS+ axes
(`nibabel.as_closest_canonical`), so voxel axis 0 runs left -> right, axis 1 posterior -> anterior and
axis 2 inferior -> superior, whatever the file's storage order (LAS, LPS, oblique ...).

Display convention: frames are axial slices `[T=Z, H=Y, W=X]`, frame 0 the most inferior slice; rows are flipped
so that anterior is at the top of each slice, and columns run from the patient's left to their right (image
left = patient left, the neurological convention, which is what canonical RAS gives without a column flip).
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.fileholders import FileHolder
from nibabel.orientations import io_orientation
from nibabel.spatialimages import HeaderDataError

from m3ret.config import LimitsConfig, ReadConfig
from m3ret.data.errors import InputTooLargeError, UnreadableInputError, UnsupportedInputError
from m3ret.data.intensity import center_width_to_range, percentile_values, window_to_uint8

# "looks like HU": air and lung below -500, bone or contrast above 300 (MR and PET never go negative like this)
_HU_LOW_PCT, _HU_HIGH_PCT = 1.0, 99.0
_HU_LOW_MAX, _HU_HIGH_MIN = -500.0, 300.0

_HDR1_SIZE, _HDR2_SIZE = 348, 540
_UNIT_TO_MM = {"meter": 1000.0, "mm": 1.0, "micron": 0.001, "unknown": 1.0}

_LOAD_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, zlib.error, ValueError, struct.error)


def read_nifti(path: Path, cfg: ReadConfig) -> tuple[np.ndarray, dict]:
    """Read a NIfTI file into uint8 frames `[T, H, W, 1]` and its meta dict.

    3D `(X, Y, Z)` gives `T = Z` axial slices of `H = Y`, `W = X` (canonical RAS, anterior at the top).
    4D `(X, Y, Z, V)` (and higher, trailing axes flattened into V) stacks every volume, volume-major:
    `T = V * Z`, with `meta["n_volumes"] = V` and `meta["slices_per_volume"] = Z`.
    A 2D NIfTI (one slice, one volume) has kind "image".

    Intensities that look like CT Hounsfield units (1st percentile < -500 and 99th > 300) get the
    `cfg.windowing.ct_preset` window and modality "ct"; anything else the `cfg.windowing.percentiles` range.
    The header's shape is checked against `cfg.limits` before any voxel is read (InputTooLargeError);
    truncated or corrupt files raise UnreadableInputError.
    """
    path = Path(path)
    if path.stat().st_size > cfg.limits.max_file_mb * 2**20:
        raise InputTooLargeError(path, f"file is {path.stat().st_size / 2**20:.0f} MB > {cfg.limits.max_file_mb} MB")
    with _open(path) as fh:
        try:
            img = _load_header(path, fh)
        except _LOAD_ERRORS as err:
            raise UnreadableInputError(path, f"cannot parse the NIfTI header: {err}") from err
        shape = tuple(int(n) for n in img.header.get_data_shape())
        n_x, n_y, n_z, n_vol = _canonical_dims(path, img, shape)
        _check_limits(path, (n_x, n_y, n_z, n_vol), cfg.limits)
        try:
            raw, data, canonical = _load_canonical(img, shape)
        except _LOAD_ERRORS as err:
            raise UnreadableInputError(path, f"voxel data unreadable (truncated or corrupt?): {err}") from err

    # HU detection and the percentile window from one strided sample of the voxels in storage order
    qs = (_HU_LOW_PCT, _HU_HIGH_PCT, *cfg.windowing.percentiles)
    found = percentile_values(raw, qs)
    low_pct, high_pct, *window = found if found is not None else (0.0, 0.0, 0.0, 1.0)
    is_ct = low_pct < _HU_LOW_MAX and high_pct > _HU_HIGH_MIN
    if is_ct:
        low, high = center_width_to_range(*cfg.windowing.presets[cfg.windowing.ct_preset])
    else:
        low, high = float(window[0]), float(window[1])
    # non-finite voxels: window_to_uint8 maps NaN and -inf to 0 and +inf to 255 (as nan_to_num to low/high would)

    # (X, Y, Z, V) -> (V, Z, Y, X) -> (V*Z, Y, X); flipping Y puts anterior (largest Y in RAS) on row 0
    volumes = data.reshape(n_x, n_y, n_z, n_vol).transpose(3, 2, 1, 0).reshape(n_vol * n_z, n_y, n_x)
    frames = window_to_uint8(volumes[:, ::-1, :], low, high)[..., None]

    zooms = [float(z) for z in canonical.header.get_zooms()[:3]]
    to_mm = _UNIT_TO_MM.get(img.header.get_xyzt_units()[0], 1.0)
    is_image = frames.shape[0] == 1
    # [z, y, x] mm, also for a single slice (its z is the slice thickness), like the DICOM reader's [slice, row, col]
    spacing = [zooms[2] * to_mm, zooms[1] * to_mm, zooms[0] * to_mm]
    meta = {
        "kind": "image" if is_image else "volume",
        "modality": "ct" if is_ct else "",
        "body_part": "",
        "spacing": spacing,
        "n_frames": int(frames.shape[0]),
        "height": int(frames.shape[1]),
        "width": int(frames.shape[2]),
        "channels": 1,
        "n_volumes": n_vol,
        "slices_per_volume": n_z,
        "affine": np.asarray(canonical.affine, dtype=float).tolist(),
        "header": {
            "format": "nifti2" if isinstance(img, nib.Nifti2Image) else "nifti1",
            "dtype": str(img.header.get_data_dtype()),
            "shape": list(shape),
            "orientation": "".join(str(c) for c in nib.aff2axcodes(img.affine)),
            "window": [float(low), float(high)],
        },
        "ids": {"patient": "", "study": "", "series": ""},
    }
    return frames, meta


def _open(path: Path):
    """The file as a binary stream, gunzipped when its content (not its name) says gzip.

    A gzip file is inflated in one call (zlib's one-shot inflate; faster than reading the gzip stream in 8 kB
    steps); a truncated one yields the bytes it holds, so the voxel read fails as it would on the stream. A corrupt
    or multi-member stream falls back to the gzip module's stream."""
    with path.open("rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            return path.open("rb")
    raw = path.read_bytes()
    inflater = zlib.decompressobj(wbits=31)
    try:
        data = inflater.decompress(raw)
    except zlib.error:
        return gzip.open(path, "rb")
    if inflater.unused_data:
        return gzip.open(path, "rb")
    return io.BytesIO(data)


def _load_header(path: Path, fh) -> nib.Nifti1Image:
    """The image with its header parsed and its voxels not yet read, NIfTI-1 or -2 from sizeof_hdr (348 / 540).

    A single-file image is read from the open stream so that any file name works; a `ni1`/`ni2` header of an
    `.hdr`/`.img` pair needs nibabel's file-name pairing.
    """
    head = fh.read(_HDR2_SIZE)
    fh.seek(0)
    if len(head) < _HDR1_SIZE:
        raise UnreadableInputError(path, f"{len(head)} bytes, shorter than a NIfTI header")
    sizes = struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]
    if _HDR2_SIZE in sizes:
        cls, paired = nib.Nifti2Image, head[4:8] == b"ni2\x00"
    elif _HDR1_SIZE in sizes:
        cls, paired = nib.Nifti1Image, head[344:348] == b"ni1\x00"
    else:
        raise UnsupportedInputError(path, f"sizeof_hdr is {sizes[0]}, not 348 (NIfTI-1) or 540 (NIfTI-2)")
    if paired:
        return nib.load(path)
    return cls.from_file_map({"image": FileHolder(fileobj=fh)})


def _canonical_dims(path: Path, img: nib.Nifti1Image, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(X, Y, Z, V) after RAS reorientation, from the header alone: the affine only permutes the first 3 axes."""
    if not shape or 0 in shape:
        raise UnreadableInputError(path, f"header declares an empty image, shape {list(shape)}")
    spatial = list(shape[:3]) + [1] * (3 - min(len(shape), 3))
    try:
        ornt = io_orientation(img.affine)
    except ValueError as err:
        raise UnreadableInputError(path, f"affine gives no orientation: {err}") from err
    canon = [1, 1, 1]
    for axis, (target, _) in enumerate(ornt):
        # a degenerate affine column leaves NaN: that axis keeps its place
        canon[axis if math.isnan(target) else int(target)] = spatial[axis]
    return canon[0], canon[1], canon[2], math.prod(shape[3:])


def _check_limits(path: Path, dims: tuple[int, int, int, int], limits: LimitsConfig) -> None:
    n_x, n_y, n_z, n_vol = dims
    if max(n_x, n_y) > limits.max_side:
        raise InputTooLargeError(path, f"slice is {n_y}x{n_x} > max_side {limits.max_side}")
    if n_z * n_vol > limits.max_frames:
        raise InputTooLargeError(path, f"{n_vol} volume(s) x {n_z} slices > max_frames {limits.max_frames}")
    if n_x * n_y * n_z * n_vol > limits.max_voxels:
        raise InputTooLargeError(path, f"{n_x * n_y * n_z * n_vol} voxels > max_voxels {limits.max_voxels}")


def _load_canonical(img: nib.Nifti1Image, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Image]:
    """The float32 voxels as stored (contiguous), the same voxels in canonical RAS+ order (X, Y, Z, ...; a view),
    and the canonical image (for affine and zooms).

    The voxels are read once as float32 and wrapped in an in-memory image, so the reorientation is a view of
    them rather than a second (float64) copy; a 2D NIfTI gets a one-slice Z axis, which as_closest_canonical needs.
    """
    data = img.get_fdata(dtype=np.float32)
    data = data.reshape(shape + (1,) * (3 - len(shape)))
    canonical = nib.as_closest_canonical(img.__class__(data, img.affine, img.header))
    return data, np.asarray(canonical.dataobj), canonical
