"""Content sniffing: which reader a file needs, decided by its first bytes, never by its extension alone.

Ingest sees folders of files whose names lie (an export tool that writes `.dcm` for everything, a `.png`
that is really a JPEG, DICOM files with no extension at all), so every file is classified by magic numbers:

- DICOM: `DICM` at offset 128 (PS3.10 7.1), or a preamble-less dataset whose first tag is in group 0002, 0008
  or 0010 and that pydicom parses (old ACR-NEMA-style exports).
- NIfTI-1 / NIfTI-2: `sizeof_hdr` 348 / 540 in either byte order plus the magic string, also inside gzip.
- video: ISO BMFF `ftyp` (mp4, mov, m4v), RIFF `AVI `, Matroska/WebM EBML.
- image: PNG, JPEG, TIFF, BMP.
- npz: a zip archive whose members are `.npy` arrays.
"""

from __future__ import annotations

import string
import struct
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Literal

import pydicom

from m3ret.data.errors import UnreadableInputError, UnsupportedInputError

FileKind = Literal["dicom", "nifti", "video", "image", "npz"]

# enough for the DICOM preamble (132), a NIfTI-2 header (540) and a BMP info header
_HEAD_BYTES = 544

# compressed bytes that surely hold the first _HEAD_BYTES of a gzip stream (gzip header fields included)
_GZIP_PEEK_BYTES = 1 << 16

# ISO BMFF major brands of still images, which decord cannot read as video
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}

# BITMAPINFOHEADER and its successors; OS/2 and core headers have sizes 12, 16 and 64
_BMP_DIB_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}

# groups that can open a preamble-less dataset: file meta, identifying info, patient
_DICOM_FIRST_GROUPS = {0x0002, 0x0008, 0x0010}


def sniff_kind(path: Path) -> FileKind:
    """The reader `path` needs, from its content.

    Raises UnreadableInputError for an empty or unreadable file, UnsupportedInputError (saying what the first
    bytes look like) for content of no kind m3ret reads.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(_HEAD_BYTES)
    except OSError as err:
        raise UnreadableInputError(path, f"cannot open: {err.strerror or err}") from err
    if not head:
        raise UnreadableInputError(path, "empty file (0 bytes)")

    if head[128:132] == b"DICM":
        return "dicom"
    if _is_nifti_header(head):
        return "nifti"
    if head[:2] == b"\x1f\x8b":
        if _is_nifti_header(_gunzip_head(path)):
            return "nifti"
        raise UnsupportedInputError(path, "gzip-compressed, but not a NIfTI header inside")
    if _is_video(head):
        return "video"
    if _is_image(head):
        return "image"
    if head[:4] == b"PK\x03\x04":
        if _is_npz(path):
            return "npz"
        raise UnsupportedInputError(path, "zip archive without .npy members (not an npz)")
    if _is_preambleless_dicom(path, head):
        return "dicom"
    raise UnsupportedInputError(path, f"unrecognised content: {_describe_head(head)}")


def _is_nifti_header(head: bytes) -> bool:
    """NIfTI-1: sizeof_hdr 348 and magic `n+1\\0`/`ni1\\0` at 344; NIfTI-2: 540 and `n+2\\0`/`ni2\\0` at 4."""
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return 348 in (struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0])
    if len(head) >= 12 and head[4:8] in (b"n+2\x00", b"ni2\x00"):
        return 540 in (struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0])
    return False


def _gunzip_head(path: Path) -> bytes:
    """The first decompressed bytes of a gzip file, also when the stream is truncated or corrupt further on."""
    with path.open("rb") as fh:
        compressed = fh.read(_GZIP_PEEK_BYTES)
    try:
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(compressed, _HEAD_BYTES)
    except zlib.error:
        return b""


def _is_video(head: bytes) -> bool:
    if head[4:8] == b"ftyp":
        # HEIF/AVIF stills share the ISO BMFF container with mp4
        return head[8:12] not in _HEIF_BRANDS
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return True
    return head[:4] == b"\x1a\x45\xdf\xa3"


def _is_image(head: bytes) -> bool:
    if head[:8] == b"\x89PNG\r\n\x1a\n" or head[:3] == b"\xff\xd8\xff":
        return True
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return True
    # 'BM' alone would match any text starting with "BM"; the DIB header size pins it down
    return head[:2] == b"BM" and len(head) >= 18 and struct.unpack("<I", head[14:18])[0] in _BMP_DIB_SIZES


def _is_npz(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return bool(names) and all(name.endswith(".npy") for name in names)


def _is_preambleless_dicom(path: Path, head: bytes) -> bool:
    """A dataset without the 128-byte preamble: the first tag must be in a group that opens a dataset.

    pydicom with force=True reads almost any bytes as *something*, so the group check comes first and the parse
    only confirms that the elements are well formed.
    """
    if len(head) < 8:
        return False
    if not {struct.unpack("<H", head[:2])[0], struct.unpack(">H", head[:2])[0]} & _DICOM_FIRST_GROUPS:
        return False  # neither little- nor big-endian (ExplVR_BigEndNoMeta.dcm) opens with a dataset's group
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
            return len(ds) > 0 or len(ds.file_meta) > 0
    except Exception:  # pydicom's parser fails on garbage in many ways; each means "not DICOM"
        return False


def _describe_head(head: bytes) -> str:
    """A short human description of a file's first bytes for quarantine reasons.

    Text is never quoted: a stray report or note could carry patient details into the quarantine list.
    """
    sample = head[:64]
    printable = set(string.printable.encode())
    if all(b in printable for b in sample):
        return "looks like text"
    known = {
        b"%PDF": "a PDF document",
        b"GIF8": "a GIF image (not supported)",
        b"Rar!": "a RAR archive",
        b"7z\xbc\xaf": "a 7-zip archive",
        b"\x93NUMPY": "a bare .npy array (only .npz archives are read)",
    }
    if sample[4:8] == b"ftyp":
        return f"an ISO BMFF still image (brand {sample[8:12]!r}, not supported)"
    for magic, what in known.items():
        if sample.startswith(magic):
            return what
    if sample[:4] == b"RIFF":
        return f"a RIFF container of type {sample[8:12]!r} (only AVI is read)"
    return f"binary, first bytes {sample[:16].hex(' ')}"
