"""MedMNIST `.npz` files (Yang et al. 2023, MedMNIST v2) as retrieval items, one per image.

The official layout holds `{train,val,test}_images` and `{train,val,test}_labels`: 2D sets as `(N, H, W)` grey
or `(N, H, W, 3)` RGB, 3D sets as `(N, D, H, W)` cubes, all uint8; labels `(N,)` or `(N, L)` (multi-label).
The MedMNIST retrieval protocol queries with the test split against a gallery of train + val, so every entry
carries `role` "query" (test) or "gallery" (train, val).

npz members are zip-compressed, so they cannot be memory-mapped: `iter_medmnist` decompresses each subset once,
and `read_medmnist_entry` keeps the file's layout and the last three subsets it decompressed (or why they could not
be), so reading a file entry by entry in order decompresses each subset once and a broken file fails fast.
"""

from __future__ import annotations

import functools
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from m3ret.data.errors import UnreadableInputError, UnsupportedInputError

SUBSETS = ("train", "val", "test")
_ROLES = {"train": "gallery", "val": "gallery", "test": "query"}
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def medmnist_entries(path: Path) -> list[str]:
    """Entry names `'train:0' .. 'test:N-1'` in subset order, read from the npy headers without decompressing data.

    Raises UnsupportedInputError if the npz is not in the official MedMNIST layout.
    """
    return [f"{subset}:{i}" for subset, n in _layout(Path(path)).items() for i in range(n)]


def entry_subset(entry: str) -> str:
    """The subset an entry name belongs to: `'val:12'` -> `'val'` ("" for an entry that is not a MedMNIST one)."""
    subset, separator, _index = entry.partition(":")
    return subset if separator else ""


def iter_medmnist(path: Path) -> Iterator[tuple[str, np.ndarray, dict]]:
    """Yield `(entry, frames, meta)` for every image, subset by subset.

    frames: 2D `[1, H, W, C]` (C = 1 or 3), kind "image"; 3D `[D, H, W, 1]`, kind "volume". meta carries
    `label` (str; multi-label joined with ','), `role` ("query" | "gallery"), `subset` and `entry`.
    """
    path = Path(path)
    for subset in _layout(path):
        images, labels = _load_subset(path, subset)
        for i in range(len(images)):
            yield f"{subset}:{i}", *_item(images, labels, subset, i)


def read_medmnist_entry(path: Path, entry: str) -> tuple[np.ndarray, dict]:
    """One entry by name, e.g. `'test:12'`: `(frames, meta)` as in `iter_medmnist`.

    Raises UnreadableInputError for an entry the file does not hold.
    """
    path = Path(path)
    key = _cache_key(path)
    counts = _cached_layout(*key)
    subset, index = entry_subset(entry), entry.partition(":")[2]
    if subset not in counts or not index.isdigit() or int(index) >= counts[subset]:
        raise UnreadableInputError(path, f"no MedMNIST entry {entry!r}; subsets and sizes: {counts}")
    arrays = _cached_subset(*key, subset)
    if isinstance(arrays, str):
        raise UnreadableInputError(path, arrays)
    return _item(*arrays, subset, int(index))


def _layout(path: Path) -> dict[str, int]:
    """{subset: N} for the subsets present, checked against the official layout from the npy headers alone."""
    try:
        with zipfile.ZipFile(path) as zf:
            shapes = {}
            for name in zf.namelist():
                if name.endswith(".npy"):
                    with zf.open(name) as fh:
                        version = np.lib.format.read_magic(fh)
                        if version not in _HEADER_READERS:
                            raise ValueError(f"{name}: .npy format version {version} is not read here")
                        shape, _, dtype = _HEADER_READERS[version](fh)
                    shapes[name[: -len(".npy")]] = (shape, dtype)
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise UnsupportedInputError(path, f"not a readable npz archive: {err}") from err

    counts = {}
    for subset in SUBSETS:
        images, labels = shapes.get(f"{subset}_images"), shapes.get(f"{subset}_labels")
        if images is None and labels is None:
            continue
        if images is None or labels is None:
            raise UnsupportedInputError(path, f"MedMNIST layout needs both {subset}_images and {subset}_labels")
        (img_shape, img_dtype), (lab_shape, _) = images, labels
        if img_dtype != np.uint8 or len(img_shape) not in (3, 4):
            raise UnsupportedInputError(
                path, f"{subset}_images is {img_dtype} {img_shape}; MedMNIST stores uint8 (N,H,W[,3]) or (N,D,H,W)"
            )
        if len(lab_shape) not in (1, 2) or lab_shape[0] != img_shape[0]:
            raise UnsupportedInputError(path, f"{subset}_labels {lab_shape} does not match {subset}_images {img_shape}")
        counts[subset] = int(img_shape[0])
    if not counts:
        raise UnsupportedInputError(
            path, f"no MedMNIST {{train,val,test}}_images/_labels arrays; members: {sorted(shapes)}"
        )
    return counts


def _cache_key(path: Path) -> tuple[str, int, int]:
    """The file's identity for the array cache: a rewritten file (new mtime or size) is read again."""
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def _load_subset(path: Path, subset: str) -> tuple[np.ndarray, np.ndarray]:
    """`{subset}_images` and `{subset}_labels`, decompressed (npz members cannot be memory-mapped)."""
    try:
        with np.load(path) as npz:
            return npz[f"{subset}_images"], npz[f"{subset}_labels"]
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as err:
        raise UnreadableInputError(path, f"cannot decompress the {subset} arrays: {err}") from err


@functools.lru_cache(maxsize=8)
def _cached_layout(path: str, mtime_ns: int, size: int) -> dict[str, int]:
    """`_layout`, kept so that reading entry by entry opens the archive's headers once per file."""
    return _layout(Path(path))


@functools.lru_cache(maxsize=3)
def _cached_subset(path: str, mtime_ns: int, size: int, subset: str) -> tuple[np.ndarray, np.ndarray] | str:
    """`_load_subset`, kept for the next entries of the same file (read-only so cached arrays stay intact), or the
    reason it failed, kept too: the other entries of a broken subset fail without decompressing it again."""
    try:
        images, labels = _load_subset(Path(path), subset)
    except UnreadableInputError as err:
        return err.reason
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _item(images: np.ndarray, labels: np.ndarray, subset: str, index: int) -> tuple[np.ndarray, dict]:
    image = images[index]
    # (H, W, 3) is a colour image; 3D sets are cubes (D, H, W), whose last axis is 3 only if D is too
    is_rgb = image.ndim == 3 and image.shape[-1] == 3 and image.shape[0] != 3
    if image.ndim == 2:
        frames = image[None, :, :, None]
    elif is_rgb:
        frames = image[None]
    else:
        frames = image[..., None]
    frames = np.array(frames, dtype=np.uint8)
    meta = {
        "kind": "volume" if image.ndim == 3 and not is_rgb else "image",
        "modality": "",
        "body_part": "",
        "spacing": None,
        "n_frames": int(frames.shape[0]),
        "height": int(frames.shape[1]),
        "width": int(frames.shape[2]),
        "channels": int(frames.shape[3]),
        "header": {"format": "medmnist", "dtype": "uint8", "subset_shape": list(images.shape)},
        "ids": {"patient": "", "study": "", "series": ""},
        "label": ",".join(str(int(v)) for v in np.atleast_1d(labels[index])),
        "role": _ROLES[subset],
        "subset": subset,
        "entry": f"{subset}:{index}",
    }
    return frames, meta
