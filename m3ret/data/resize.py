"""Frames to the model's square input: resized keeping the physical aspect ratio, padded with black (letterbox)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def letterbox(frame: np.ndarray, size: int, pixel_aspect: float = 1.0) -> np.ndarray:
    """uint8 [H,W,C] (C = 1 or 3) -> uint8 [size,size,C], whole frame kept, centred.

    `pixel_aspect` is row spacing / column spacing (e.g. slice thickness over in-plane spacing for a coronal cut of an
    anisotropic volume), so anatomy keeps its true proportions.
    """
    height, width, channels = frame.shape
    physical_h, physical_w = height * pixel_aspect, float(width)
    scale = size / max(physical_h, physical_w)
    new_h = max(1, min(size, round(physical_h * scale)))
    new_w = max(1, min(size, round(physical_w * scale)))
    # PIL resizes 2-D grey ('L') and [H,W,3] ('RGB') uint8 arrays directly
    source = frame[:, :, 0] if channels == 1 else frame
    resized = np.asarray(Image.fromarray(source).resize((new_w, new_h), Image.BILINEAR, reducing_gap=3.0))
    out = np.zeros((size, size, channels), dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top : top + new_h, left : left + new_w] = resized.reshape(new_h, new_w, channels)
    return out
