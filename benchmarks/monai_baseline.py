"""MONAI as the preprocessing baseline of `benchmarks/preprocess.py`: the same work as m3ret's reader + item_frames.

Per item: `LoadImage(image_only=True)` (PydicomReader for a DICOM file or series folder: it sorts the slices and
applies RescaleSlope/Intercept; NibabelReader for NIfTI), `ScaleIntensityRange` onto 0..255 with m3ret's CT preset
window for CT, `ScaleIntensityRangePercentiles` with m3ret's percentiles for everything else (m3ret's NIfTI and
non-CT DICOM windowing), then every `slice_stride`-th slice (at most `max_slices_per_plane`, evenly thinned, as
m3ret keeps them) `Resize`d bilinearly to `size` x `size` in one call (slices as channels), cast to uint8.
MONAI is a benchmark-only dependency (`pip install -e .[bench]`), imported only when this runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from m3ret.config import PreprocessConfig, ReadConfig
from m3ret.data.intensity import center_width_to_range

MONAI_KINDS = ("dicom", "nifti")


def import_monai():
    """The monai.transforms module, or SystemExit naming the install command when MONAI is missing."""
    try:
        import monai.transforms as transforms
    except ImportError as err:
        raise SystemExit(
            f"the MONAI baseline needs MONAI ({err}): pip install -e '.[bench]' (monai==1.6.1), or pass --no-monai"
        ) from err
    return transforms


def kept_slices(n: int, cfg: PreprocessConfig) -> np.ndarray:
    """The slice indices m3ret keeps from a volume of `n` slices none of which is blank (`_select_slices`)."""
    index = np.arange(0, n, cfg.slice_stride)
    if len(index) > cfg.max_slices_per_plane:
        index = index[np.linspace(0, len(index) - 1, cfg.max_slices_per_plane).round().astype(int)]
    return index


def monai_pipeline(kind: str, cfg: PreprocessConfig, read_cfg: ReadConfig) -> Callable[[list[Path]], np.ndarray]:
    """files of one item -> uint8 [N, size, size]: MONAI's load, intensity scaling and resize of the kept slices."""
    transforms = import_monai()
    import torch

    load = transforms.LoadImage(reader="PydicomReader" if kind == "dicom" else "NibabelReader", image_only=True)
    low, high = center_width_to_range(*read_cfg.windowing.presets[read_cfg.windowing.ct_preset])
    ct_window = transforms.ScaleIntensityRange(low, high, 0.0, 255.0, clip=True)
    p_low, p_high = read_cfg.windowing.percentiles
    percentile_window = transforms.ScaleIntensityRangePercentiles(p_low, p_high, 0.0, 255.0, clip=True)
    resize = transforms.Resize((cfg.size, cfg.size), mode="bilinear")

    def run(files: list[Path]) -> np.ndarray:
        if kind == "dicom":
            # a series is its folder (PydicomReader reads and sorts every file of it); a single file is itself
            image = load(str(files[0].parent) if len(files) > 1 else str(files[0]))
            is_ct = len(files) > 1  # the benchmark's series are CT, its single files CR (m3ret: percentiles)
        else:
            image = load(str(files[0]))
            is_ct = False  # the benchmark's NIfTI volumes are MR-like: m3ret windows them by percentiles
        image = ct_window(image) if is_ct else percentile_window(image)
        # one 2-D image [W, H] -> [1, W, H]; a volume [W, H, Z] -> its kept slices as channels [N, W, H]
        is_image = image.ndim == 2
        stack = image[None] if is_image else image[..., kept_slices(image.shape[-1], cfg)].permute(2, 0, 1)
        return resize(stack).round().to(dtype=torch.uint8).numpy()

    return run
