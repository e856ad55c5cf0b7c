"""One entry point for every input kind: `read(path, cfg) -> (frames uint8 [T,H,W,C], meta)`, chosen by content.

A path is a file (DICOM, NIfTI, video, image) or a folder holding one DICOM series. Sources with many items
(folders of mixed files, MedMNIST npz, manifest folders) are enumerated by `m3ret.data.sources`; ingest and preprocess
then read every enumerated item with `item_entries` + `read_item`, the one place that knows a file may hold several
items (a MedMNIST npz: one per entry).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from m3ret.config import ReadConfig
from m3ret.data.dicom_reader import group_dicom_series, read_dicom
from m3ret.data.errors import UnsupportedInputError
from m3ret.data.image_reader import read_image
from m3ret.data.medmnist_reader import medmnist_entries, read_medmnist_entry
from m3ret.data.nifti_reader import read_nifti
from m3ret.data.sniff import sniff_kind
from m3ret.data.video_reader import read_video

Reader = Callable[[Path, ReadConfig], tuple[np.ndarray, dict]]

READERS: dict[str, Reader] = {
    "dicom": lambda path, cfg: read_dicom([path], cfg),
    "nifti": read_nifti,
    "video": read_video,
    "image": read_image,
}


def item_entries(reader: str, path: Path) -> list[str]:
    """The items an enumerated file holds, as `read_item` entries: every entry of a MedMNIST npz (`'train:0'` ..,
    from its headers, nothing decompressed), else `[""]` (the file, or the DICOM series it belongs to, is one item)."""
    return medmnist_entries(path) if reader == "npz" else [""]


def read_item(reader: str, paths: list[Path], entry: str, cfg: ReadConfig) -> tuple[np.ndarray, dict]:
    """Decode one enumerated item: a DICOM series (all its files), a MedMNIST entry (`entry` from `item_entries`;
    reading a file's entries in order decompresses each of its subsets once), or a single file."""
    if reader == "dicom":
        return read_dicom(paths, cfg)
    if reader == "npz":
        return read_medmnist_entry(paths[0], entry)
    if reader not in READERS:
        raise ValueError(f"unknown reader {reader!r}; valid: {sorted([*READERS, 'npz'])}")
    return READERS[reader](paths[0], cfg)


def read(path: str | Path, cfg: ReadConfig) -> tuple[np.ndarray, dict]:
    """Decode a single file, or a folder holding exactly one DICOM series."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        series, _rejects = group_dicom_series(files)
        if len(series) != 1:
            raise UnsupportedInputError(path, f"folder holds {len(series)} DICOM series; give one series per request")
        return read_dicom(series[0], cfg)
    kind = sniff_kind(path)
    if kind == "npz":
        raise UnsupportedInputError(path, "an npz holds many images; ingest it as a source")
    return READERS[kind](path, cfg)
