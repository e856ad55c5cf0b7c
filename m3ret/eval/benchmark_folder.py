"""A labeled benchmark (a medbench-layout folder or a MedMNIST npz) decoded into memory; encoders evaluated on it.

A folder's manifest.csv has one row per image: dataset, path (relative to the folder), label, group_id, role
(query/gallery), and optionally modality. A MedMNIST npz follows the MedMNIST protocol: test images are queries,
train images the gallery, val is not used; every image is its own group. Every image is letterboxed to S x S RGB
uint8 so any encoder input size can be served.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm import tqdm

from m3ret.config import ReadConfig, ReadoutConfig
from m3ret.data.errors import InputError, UnreadableInputError
from m3ret.data.image_reader import read_image
from m3ret.data.medmnist_reader import iter_medmnist
from m3ret.data.preprocess import to_rgb
from m3ret.data.resize import letterbox
from m3ret.eval.baselines import floor_vectors, random_init_like
from m3ret.eval.retrieval_metrics import RetrievalResult, evaluate_embeddings
from m3ret.models.encoder import Encoder
from m3ret.models.readout import Readout, fit_and_project

REQUIRED_COLUMNS = ("dataset", "path", "label", "group_id", "role")
# Bump when decoding or letterboxing changes, so stale caches are not reused.
_CACHE_VERSION = "2"
_READ = ReadConfig()


@dataclass
class BenchmarkFolder:
    """root: the folder; table: manifest rows of the images kept (columns dataset, path (absolute), label,
    group_id, role, modality; index 0..N-1 aligned with `images`); images: uint8 [N,S,S,3] letterboxed."""

    root: Path
    table: pd.DataFrame
    images: np.ndarray


def _read_manifest(root: Path) -> pd.DataFrame:
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        raise UnreadableInputError(manifest, "no manifest.csv in the benchmark folder")
    # Everything as text: group ids and labels like "1" or "NA" must stay the strings they are.
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise UnreadableInputError(manifest, f"missing required column(s) {missing}; found {list(table.columns)}")
    bad_roles = sorted(set(table["role"]) - {"query", "gallery"})
    if bad_roles:
        raise UnreadableInputError(manifest, f"column 'role' must be 'query' or 'gallery', found {bad_roles}")
    if "modality" not in table.columns:
        table["modality"] = ""
    table = table[[*REQUIRED_COLUMNS, "modality"]].copy()
    table["path"] = [str(root / p) for p in table["path"]]
    return table


def _cache_key(root: Path, size: int) -> str:
    digest = hashlib.sha256()
    digest.update((root / "manifest.csv").read_bytes())
    digest.update(f"|size={size}|root={root}|v={_CACHE_VERSION}".encode())
    return digest.hexdigest()[:24]


def _decode_all(paths: list[str], size: int, workers: int, desc: str) -> tuple[np.ndarray, list[str | None]]:
    """uint8 [N,S,S,3] (rows of failed images left zero) and, per image, None or the failure reason."""
    images = np.zeros((len(paths), size, size, 3), dtype=np.uint8)

    def decode_into(i: int) -> str | None:
        try:
            # the pipeline's own reader and frame preparation, so benchmark images look like the training frames
            frames, _meta = read_image(Path(paths[i]), _READ)
            images[i] = _frame_to_rgb(frames[0], size)
        except InputError as err:
            return err.reason
        return None

    # Threads, not processes: PIL releases the GIL while decoding and resizing, and each thread writes straight
    # into the shared array instead of pickling every image back through a pipe.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        bar = tqdm(pool.map(decode_into, range(len(paths))), total=len(paths), desc=desc, unit="img")
        reasons = list(bar)
    return images, reasons


def _frame_to_rgb(frame: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H,W,1|3] -> letterboxed uint8 [size,size,3], as the pipeline prepares a frame."""
    return to_rgb(letterbox(frame, size)[None], "replicate")[0]


def _load_medmnist(path: Path, size: int) -> BenchmarkFolder:
    """A MedMNIST npz as a benchmark: test -> query, train -> gallery, val skipped; a 3D cube is represented by its
    middle slice (the benchmark holds one image per item). dataset = file stem, group_id = the entry itself."""
    rows, images = [], []
    for entry, frames, meta in iter_medmnist(path):
        if meta["subset"] == "val":
            continue
        images.append(_frame_to_rgb(frames[len(frames) // 2], size))
        rows.append((path.stem, f"{path}:{entry}", meta["label"], entry, meta["role"], meta["modality"]))
    table = pd.DataFrame(rows, columns=[*REQUIRED_COLUMNS, "modality"])
    stack = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return BenchmarkFolder(path, table, stack)


def load_benchmark_folder(root: Path, size: int, workers: int = 2, cache_dir: Path | None = None) -> BenchmarkFolder:
    """Read `root`/manifest.csv and decode every image letterboxed to `size` (uint8 [N,size,size,3]); `root` may
    also be a MedMNIST .npz file (module docstring), which is decoded directly (small files, no cache).

    Unreadable images are dropped with one warning listing each file and reason. With `cache_dir`, the decoded
    array is stored as .npy keyed by a hash of (manifest content, root, size); a later load memory-maps it
    instead of decoding again, so `images` is then a read-only np.memmap (edits to image files after caching
    are not seen: clear the cache or change the manifest).
    """
    root = Path(root).resolve()
    if root.suffix == ".npz":
        return _load_medmnist(root, size)
    table = _read_manifest(root)
    cache_base = None
    if cache_dir is not None:
        cache_base = Path(cache_dir) / f"benchmark-{_cache_key(root, size)}"
        meta_path = cache_base.with_suffix(".json")
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            images = np.load(cache_base.with_suffix(".npy"), mmap_mode="r")
            _warn_dropped(meta["dropped"], cached=True)
            return BenchmarkFolder(root, table.iloc[meta["kept"]].reset_index(drop=True), images)

    paths = table["path"].tolist()
    images, reasons = _decode_all(paths, size, workers, desc=f"decode {root.name}")
    kept = [i for i, r in enumerate(reasons) if r is None]
    dropped = [(paths[i], r) for i, r in enumerate(reasons) if r is not None]
    if dropped:
        images = images[kept]
    _warn_dropped(dropped, cached=False)
    if cache_base is not None:
        cache_base.parent.mkdir(parents=True, exist_ok=True)
        # Write to temporary names and rename: a crash mid-write never leaves a cache that looks complete.
        # The .json is written last and marks the entry as complete.
        tmp_npy = cache_base.with_name(cache_base.name + f".tmp{os.getpid()}.npy")
        np.save(tmp_npy, images)
        os.replace(tmp_npy, cache_base.with_suffix(".npy"))
        tmp_json = cache_base.with_name(cache_base.name + f".tmp{os.getpid()}.json")
        tmp_json.write_text(json.dumps({"kept": kept, "dropped": dropped, "size": size}))
        os.replace(tmp_json, cache_base.with_suffix(".json"))
    return BenchmarkFolder(root, table.iloc[kept].reset_index(drop=True), images)


def _warn_dropped(dropped: list, cached: bool) -> None:
    if dropped:
        listing = "\n".join(f"  {path}: {reason}" for path, reason in dropped)
        origin = " (recorded in the cache)" if cached else ""
        warnings.warn(f"dropped {len(dropped)} unreadable image(s){origin}:\n{listing}", stacklevel=3)


def embed_images(embed_fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """embed_fn: uint8 [B,S,S,3] -> [B,D], run over images uint8 [N,S,S,3] in batches -> L2-normalised float32 [N,D]."""
    chunks = []
    for start in range(0, len(images), batch_size):
        # A copy: cached images are a read-only memmap, and embed_fn may hand the batch to torch or edit it.
        batch = np.array(images[start : start + batch_size])
        emb = np.asarray(embed_fn(batch), dtype=np.float32)
        if emb.ndim != 2 or len(emb) != len(batch):
            raise ValueError(f"embed_fn returned shape {emb.shape} for a batch of {len(batch)} images; expected [B,D]")
        chunks.append(emb)
    emb = np.concatenate(chunks)
    # Cosine needs unit vectors; renormalising is a no-op for a conforming embed_fn and guards against drift.
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb


def gallery_rows(bench: BenchmarkFolder) -> torch.Tensor:
    """bool [N]: the benchmark's gallery images, the rows a readout's whitening is fitted on (never its queries)."""
    return torch.from_numpy((bench.table["role"] == "gallery").to_numpy())


def _pooled(
    encoder: Encoder, bench: BenchmarkFolder, readout: ReadoutConfig, batch_size: int
) -> tuple[Readout, Tensor]:
    """A copy of `encoder`'s readout set to `readout` (unfitted) and the pooled vectors [N, D'] of every image."""
    model = copy.deepcopy(encoder)
    model.set_readout(readout.pooling, readout.grid)
    chunks = [
        model.pooled(np.array(bench.images[start : start + batch_size]), batch_size)
        for start in range(0, len(bench.images), batch_size)
    ]
    return model.readout, torch.cat(chunks) if chunks else torch.zeros(0, model.readout.pooled_dim)


def benchmark_vectors(
    encoder: Encoder, bench: BenchmarkFolder, readout: ReadoutConfig, batch_size: int = 256
) -> np.ndarray:
    """Unit vectors float32 [N, K] of every benchmark image through `encoder` with the readout `readout`, its
    whitening fitted on the benchmark's gallery images (the benchmark stands for an index). `encoder` is unchanged."""
    fitted, pooled = _pooled(encoder, bench, readout, batch_size)
    return fit_and_project(fitted, readout, pooled, gallery_rows(bench)).numpy()


def benchmark_model_vectors(
    encoder: Encoder, bench: BenchmarkFolder, readout: ReadoutConfig, raw_pixels: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Vectors [N, K] per model: "encoder" through `readout`, then, unless `raw_pixels` is None, the floors of
    `floor_vectors` (random init of the same architecture, seed 0, and `raw_pixels` [N, D], the README floor as
    given), every whitening fitted on the gallery rows."""
    out = {"encoder": benchmark_vectors(encoder, bench, readout)}
    if raw_pixels is not None:
        fitted, pooled = _pooled(random_init_like(encoder), bench, readout, 256)
        out.update(floor_vectors(fitted, readout, pooled, raw_pixels, gallery_rows(bench)))
    return out


def evaluate_vectors(vectors: np.ndarray, bench: BenchmarkFolder) -> RetrievalResult:
    """Unit vectors [N, D] in bench.table order under the medbench protocol (`evaluate_embeddings`)."""
    t = bench.table
    return evaluate_embeddings(
        vectors, t["label"].to_numpy(), t["group_id"].to_numpy(), t["role"].to_numpy(), t["dataset"].to_numpy()
    )


def evaluate_encoder(
    embed_fn: Callable[[np.ndarray], np.ndarray], bench: BenchmarkFolder, batch_size: int = 256
) -> RetrievalResult:
    """embed_fn: uint8 [B,S,S,3] -> L2-normalised [B,D]; run over bench.images in batches (`embed_images`), then the
    medbench protocol (`evaluate_embeddings`) with the folder's labels, groups, roles and datasets."""
    return evaluate_vectors(embed_images(embed_fn, bench.images, batch_size), bench)


def flat_metrics(result: RetrievalResult) -> dict[str, float]:
    """Mean metrics under their own names plus `<dataset>/<metric>` entries, for metric loggers."""
    flat = {name: float(value) for name, value in result.mean.items()}
    for dataset, metrics in result.per_dataset.items():
        flat.update({f"{dataset}/{name}": float(v) for name, v in metrics.items() if not name.startswith("n_")})
    return flat


def benchmark_evaluator(
    bench: BenchmarkFolder, readout: ReadoutConfig, batch_size: int = 256
) -> Callable[[Encoder], dict[str, float]]:
    """A callback for the pretraining loop: encoder -> flat retrieval metrics on `bench` with the readout `readout`
    (`benchmark_vectors`), so the learning curve measures the vector that will be indexed."""

    def evaluate(encoder: Encoder) -> dict[str, float]:
        return flat_metrics(evaluate_vectors(benchmark_vectors(encoder, bench, readout, batch_size), bench))

    return evaluate
