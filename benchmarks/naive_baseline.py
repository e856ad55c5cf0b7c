"""The naive baseline of `benchmarks/preprocess.py`: a plain serial loop, each library's one-line read per file
(`pydicom.dcmread(...).pixel_array` stacked per series; `nibabel.load(...).get_fdata()`; decord decoding every frame
of a clip, then subsampling), every `stride`-th slice of a volume, min/max to uint8, PIL resize to `size` x `size`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image

from m3ret.data.video_reader import decord  # (loaded after torch)


def _minmax_resize(stack: np.ndarray, size: int) -> np.ndarray:
    """[T,H,W] or [T,H,W,3] any dtype -> uint8 [T,size,size(,3)]: min/max of the whole item, PIL per frame."""
    stack = stack.astype(np.float32)
    lo, hi = float(stack.min()), float(stack.max())
    u8 = ((stack - lo) * (255.0 / max(hi - lo, 1e-6))).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR)) for f in u8])


def naive_dicom(files: list[Path], size: int, num_frames: int, stride: int) -> np.ndarray:
    datasets = sorted((pydicom.dcmread(p) for p in files), key=lambda ds: int(ds.get("InstanceNumber", 0)))
    return _minmax_resize(np.stack([ds.pixel_array for ds in datasets])[::stride], size)


def naive_nifti(files: list[Path], size: int, num_frames: int, stride: int) -> np.ndarray:
    volume = nib.load(files[0]).get_fdata()  # [X,Y,Z] float64
    return _minmax_resize(np.moveaxis(volume, -1, 0)[::stride], size)


def naive_video(files: list[Path], size: int, num_frames: int, stride: int) -> np.ndarray:
    reader = decord.VideoReader(str(files[0]))
    every = reader.get_batch(list(range(len(reader)))).asnumpy()
    keep = np.linspace(0, len(every) - 1, num_frames).round().astype(int)
    return _minmax_resize(every[keep], size)


NAIVE: dict[str, Callable[[list[Path], int, int, int], np.ndarray]] = {
    "dicom": naive_dicom,
    "nifti": naive_nifti,
    "video": naive_video,
}
