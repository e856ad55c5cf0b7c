"""2D images (PNG, JPEG, TIFF, BMP) to display-ready uint8 frames `[1, H, W, C]`, decoded by Pillow.

Grey stays one channel, everything with colour (or a palette, or alpha) becomes RGB:

- `1`, `L`: 8-bit grey kept as stored (`1` becomes 0/255).
- `I;16*`, `I`, `F` (16-bit, 32-bit integer, float grey): scaled to uint8 over the `read.windowing.percentiles`
  range of the image's own values, like an uncalibrated DICOM.
- `RGB`, `RGBA`, `LA`, `P`, `PA`, `CMYK`, `YCbCr`, ...: converted to RGB, alpha dropped (not composited).

The EXIF orientation tag is applied (camera JPEGs: dermoscopy, fundus), and a multi-page TIFF gives its first page.
With `read.jpeg_draft_side`, a JPEG much larger than that is decoded at 1/2, 1/4 or 1/8 scale by libjpeg itself
(the header keeps the stored size, `decoded_shape` the decoded one).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from m3ret.config import ReadConfig
from m3ret.data.errors import InputTooLargeError, UnreadableInputError
from m3ret.data.intensity import percentile_range, window_to_uint8

_GREY_8BIT = {"1", "L"}
_GREY_WIDE = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}

# what a corrupt or truncated file raises from inside Pillow's decoders
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error)


def read_image(path: Path, cfg: ReadConfig) -> tuple[np.ndarray, dict]:
    """Read one image: uint8 frames `[1, H, W, C]` (C = 1 grey, 3 RGB) and its meta dict (kind "image").

    The header's size is checked against `cfg.limits` before any pixel is decoded; Pillow's own
    decompression-bomb guard also raises InputTooLargeError. Truncated or corrupt files raise UnreadableInputError.
    """
    path = Path(path)
    limits = cfg.limits
    if path.stat().st_size > limits.max_file_mb * 2**20:
        raise InputTooLargeError(path, f"file is {path.stat().st_size / 2**20:.0f} MB > {limits.max_file_mb} MB")
    try:
        with Image.open(path) as img:
            width, height = img.size
            if max(width, height) > limits.max_side:
                raise InputTooLargeError(path, f"image is {height}x{width} > max_side {limits.max_side}")
            if width * height > limits.max_voxels:
                raise InputTooLargeError(path, f"{width * height} pixels > max_voxels {limits.max_voxels}")
            header = {
                "format": img.format or "",
                "mode": img.mode,
                "shape": [height, width],
                "n_pages": int(getattr(img, "n_frames", 1)),
            }
            if cfg.jpeg_draft_side and img.format == "JPEG":
                img.draft(None, (cfg.jpeg_draft_side, cfg.jpeg_draft_side))
                header["decoded_shape"] = [img.size[1], img.size[0]]
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # without a copy of the decoded pixels
            pixels, window = _to_uint8(img, cfg)
    except Image.DecompressionBombError as err:
        raise InputTooLargeError(path, f"Pillow decompression-bomb guard: {err}") from err
    except _DECODE_ERRORS as err:
        raise UnreadableInputError(path, f"cannot decode the image: {err}") from err

    if window is not None:
        header["window"] = window
    frames = pixels[None] if pixels.ndim == 3 else pixels[None, ..., None]
    meta = {
        "kind": "image",
        "modality": "",
        "body_part": "",
        "spacing": None,
        "n_frames": 1,
        "height": int(frames.shape[1]),
        "width": int(frames.shape[2]),
        "channels": int(frames.shape[3]),
        "header": header,
        "ids": {"patient": "", "study": "", "series": ""},
    }
    return frames, meta


def _to_uint8(img: Image.Image, cfg: ReadConfig) -> tuple[np.ndarray, list[float] | None]:
    """`(H, W)` grey or `(H, W, 3)` RGB uint8, and the [low, high] window used for wide grey (else None)."""
    if img.mode in _GREY_8BIT:
        return np.asarray(img.convert("L")), None
    if img.mode in _GREY_WIDE:
        values = np.asarray(img).astype(np.float32)
        low, high = percentile_range(values, cfg.windowing.percentiles)
        np.nan_to_num(values, copy=False, nan=low, posinf=high, neginf=low)
        return window_to_uint8(values, low, high), [low, high]
    if img.mode in ("P", "PA"):
        # a palette with a transparent index converts to RGB cleanly only by way of RGBA (Pillow warns otherwise)
        img = img.convert("RGBA")
    return np.asarray(img.convert("RGB")), None
