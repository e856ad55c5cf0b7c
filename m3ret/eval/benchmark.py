"""A labeled benchmark (a medbench-layout folder or a MedMNIST npz) loaded on the pipeline's own path; encoders
evaluated on it.

Loading runs the ingest and preprocess stages themselves (`m3ret.data.ingest.ingest`, then
`m3ret.data.preprocess.preprocess` with the caller's read and preprocess settings) into a cache folder, so a
benchmark image becomes exactly the frames it would be as a pipeline source (one path for every image). A folder's
manifest.csv follows the rules of `m3ret.data.sources`. A MedMNIST npz follows the MedMNIST protocol of the medbench
README: test entries are queries, train entries the gallery, val is not used. Only items with role query or gallery
take part. Files that ingest or preprocess quarantine (unreadable, a bad role, missing, a byte-identical copy of
another file) are left out and listed in one warning.

An item's `group` is the split stage's leakage unit (`group_keys`): the manifest's group_id (a keyed hash of it, equal
ids giving equal groups), else the item itself (every MedMNIST image is its own group).

Vectors: every frame through the encoder's readout, the whitening fitted on the gallery items' frames (the benchmark
stands for an index of its own), then per item the renormalised mean of its frame vectors (`item_vectors`, as the
embed stage makes series vectors): a 2D image is its one frame, a volume the mean of its slices.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from m3ret.config import IngestConfig, PreprocessConfig, ReadConfig, ReadoutConfig, SourceConfig, replace, to_dict
from m3ret.data.errors import UnreadableInputError, UnsupportedInputError
from m3ret.data.frame_store import FrameStore
from m3ret.data.ingest import file_digest, ingest
from m3ret.data.medmnist_reader import entry_subset
from m3ret.data.preprocess import frame_settings, preprocess
from m3ret.data.sniff import sniff_kind
from m3ret.data.sources import BENCHMARK_ROLES, MANIFEST_NAME
from m3ret.data.splits import group_keys
from m3ret.eval.baselines import floor_vectors, random_init_like, raw_pixel_embeddings
from m3ret.eval.retrieval_metrics import RetrievalResult, evaluate_embeddings
from m3ret.models.encoder import Encoder
from m3ret.models.frame_vectors import item_vectors
from m3ret.models.readout import Readout, fit_and_project

ITEM_COLUMNS = ("item_id", "dataset", "label", "group", "split", "modality", "kind", "path", "entry")
# Bump when what a cache folder holds changes, so stale ones are not reused.
_CACHE_VERSION = "3"
_ITEMS, _LEFT_OUT, _FRAMES = "items.parquet", "left_out.csv", "frames"
# Ingest keys hashes with a salt. Benchmark group ids are published labels of public data sets, not patient data,
# and a cached benchmark must hash them the same on every machine and run: a fixed salt does, and keeps equal
# group_ids equal groups. (A deployment's secret salt protects patient ids; it would buy nothing here.)
_BENCHMARK_SALT = b"m3ret-benchmark-groups-v1"
# The medbench README's MedMNIST protocol leaves val out; the reader gives val entries the gallery role (the pipeline
# indexes train + val), so the benchmark skips them by subset.
_UNUSED_MEDMNIST_SUBSETS = ("val",)


@dataclass
class Benchmark:
    """A loaded benchmark.

    root: the folder or npz (resolved); items: one row per item taking part, index 0..M-1, columns ITEM_COLUMNS
    (split "query" | "gallery"); store: the FrameStore holding their frames, uint8 [S,S,3] each; frame_ids int64 [F]:
    the store rows of the benchmark's frames, item by item; frame_item int64 [F]: the `items` row of each of them;
    left_out: what ingest and preprocess quarantined (path, reason, stage).
    """

    root: Path
    items: pd.DataFrame
    store: FrameStore
    frame_ids: np.ndarray
    frame_item: np.ndarray
    left_out: pd.DataFrame

    def frames(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The benchmark's frames start..stop (frame_ids order): uint8 [n, S, S, 3]."""
        return self.store.get(self.frame_ids[start:stop])

    def preview(self, row: int) -> np.ndarray:
        """uint8 [S, S, 3]: the middle frame of items[row] (a 2D image: its frame; a volume: its middle slice)."""
        positions = np.flatnonzero(self.frame_item == row)
        return self.store.get(self.frame_ids[[positions[len(positions) // 2]]])[0]

    def subset(self, rows: np.ndarray) -> Benchmark:
        """The benchmark restricted to items[rows] (positions, kept in items order), their frames with them."""
        keep = np.zeros(len(self.items), dtype=bool)
        keep[np.asarray(rows, dtype=np.int64)] = True
        new_row = np.cumsum(keep) - 1
        frames = keep[self.frame_item]
        items = self.items[keep].reset_index(drop=True)
        return Benchmark(
            self.root, items, self.store, self.frame_ids[frames], new_row[self.frame_item[frames]], self.left_out
        )


def _cache_key(root: Path, read: ReadConfig, prep: PreprocessConfig) -> str:
    """24 hex digits over what decides the frames: the manifest's bytes (folder) or the file's digest (npz), the
    resolved path, the read settings, the frame-relevant preprocess settings and the cache version."""
    content = (root / MANIFEST_NAME).read_bytes() if root.is_dir() else file_digest(root).encode()
    facts = {"root": str(root), "read": to_dict(read), "frames": frame_settings(prep), "version": _CACHE_VERSION}
    return hashlib.sha256(content + json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


def _taking_part(manifest: pd.DataFrame) -> pd.Series:
    """bool per ingested item: a query or gallery role, and not a MedMNIST subset the protocol leaves out."""
    unused = manifest["entry"].map(entry_subset).isin(_UNUSED_MEDMNIST_SUBSETS)
    return manifest["role"].isin(BENCHMARK_ROLES) & ~unused


def _build(root: Path, read: ReadConfig, prep: PreprocessConfig, folder: Path) -> None:
    """Ingest + preprocess `root` into `folder` (built under a temporary name, then renamed: a crash never leaves a
    folder that looks complete, and of two processes building the same key one wins). Ingest's per-file facts are
    cached next to it (`ingest/`), keyed by content as in the pipeline."""
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ingest_cfg = IngestConfig(
        sources=(SourceConfig(path=str(root)),),
        out=str(tmp / "manifest.parquet"),
        quarantine=str(tmp / "ingest_quarantine.csv"),
        cache_dir=str(folder.parent / "ingest"),
        workers=prep.workers,
    )
    manifest, ingest_quarantine = ingest(ingest_cfg, read, _BENCHMARK_SALT)
    manifest = manifest.assign(group=group_keys(manifest, "patient"))[_taking_part(manifest)]
    frames, prep_quarantine = preprocess(manifest, replace(prep, out=str(tmp / _FRAMES)), read)
    items = manifest[manifest["item_id"].isin(frames["item_id"])].rename(columns={"role": "split"})
    items[list(ITEM_COLUMNS)].reset_index(drop=True).to_parquet(tmp / _ITEMS, index=False)
    pd.concat([ingest_quarantine, prep_quarantine], ignore_index=True).to_csv(tmp / _LEFT_OUT, index=False)
    try:
        tmp.rename(folder)
    except OSError:  # another process finished the same key first; its folder holds the same frames
        shutil.rmtree(tmp, ignore_errors=True)


def load_benchmark(path: Path, read: ReadConfig, preprocess: PreprocessConfig, cache_dir: Path) -> Benchmark:
    """A benchmark folder (with manifest.csv) or MedMNIST npz at `path`, ingested and preprocessed with `read` and
    `preprocess` (its `out` redirected) into `cache_dir`/benchmark-<key> (module docstring). A later load with the
    same key opens the items and frames stored there and decodes nothing; edits to image files after caching are not
    seen (change the manifest or clear the cache). Quarantined files are listed in one warning, on every load.
    """
    root = Path(path).resolve()
    if not root.exists():
        raise FileNotFoundError(f"benchmark {root} does not exist")
    if root.is_dir() and not (root / MANIFEST_NAME).is_file():
        raise UnreadableInputError(root / MANIFEST_NAME, "no manifest.csv in the benchmark folder")
    if root.is_file() and sniff_kind(root) != "npz":
        raise UnsupportedInputError(root, "a benchmark is a folder with manifest.csv or a MedMNIST .npz file")
    folder = Path(cache_dir) / f"benchmark-{_cache_key(root, read, preprocess)}"
    cached = folder.is_dir()
    if not cached:
        _build(root, read, preprocess, folder)
    items = pd.read_parquet(folder / _ITEMS)
    left_out = pd.read_csv(folder / _LEFT_OUT, dtype=str, keep_default_na=False)
    store = FrameStore(folder / _FRAMES)
    frame_item = pd.Index(items["item_id"]).get_indexer(store.table["item_id"]).astype(np.int64)
    _warn_left_out(left_out, cached)
    if not (items["split"] == "query").any() or not (items["split"] == "gallery").any():
        raise UnreadableInputError(root, f"no query and gallery items to evaluate: {len(items)} item(s) taking part")
    return Benchmark(root, items, store, np.arange(len(store), dtype=np.int64), frame_item, left_out)


def _warn_left_out(left_out: pd.DataFrame, cached: bool) -> None:
    if len(left_out):
        listing = "\n".join(f"  {row.path}: {row.reason}" for row in left_out.itertuples())
        origin = " (recorded in the cache)" if cached else ""
        warnings.warn(f"left out {len(left_out)} quarantined benchmark file(s){origin}:\n{listing}", stacklevel=3)


def _frame_batches(bench: Benchmark, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(bench.frame_ids), batch_size):
        yield bench.frames(start, start + batch_size)


def item_means(bench: Benchmark, frame_vectors: np.ndarray) -> np.ndarray:
    """Frame vectors [F, D] (frame_ids order) -> item vectors float32 [M, D] in items order: per item the mean of its
    frames' vectors, renormalised (`item_vectors`)."""
    ids, vectors = item_vectors(np.asarray(frame_vectors), bench.frame_item)
    out = np.zeros((len(bench.items), vectors.shape[1]), dtype=np.float32)
    out[ids.astype(np.int64)] = vectors
    return out


def gallery_rows(bench: Benchmark) -> Tensor:
    """bool [F]: the frames of the benchmark's gallery items, the rows a readout's whitening is fitted on (never its
    queries)."""
    return torch.from_numpy((bench.items["split"].to_numpy() == "gallery")[bench.frame_item])


def embed_frames(embed_fn: Callable[[np.ndarray], np.ndarray], bench: Benchmark, batch_size: int = 256) -> np.ndarray:
    """embed_fn: uint8 [B,S,S,3] -> [B,D], run over the benchmark's frames in batches -> unit vectors float32 [F,D]."""
    chunks = []
    for batch in _frame_batches(bench, batch_size):
        emb = np.asarray(embed_fn(batch), dtype=np.float32)
        if emb.ndim != 2 or len(emb) != len(batch):
            raise ValueError(f"embed_fn returned shape {emb.shape} for a batch of {len(batch)} frames; expected [B,D]")
        chunks.append(emb)
    emb = np.concatenate(chunks)
    # Cosine needs unit vectors; renormalising is a no-op for a conforming embed_fn and guards against drift.
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb


def _pooled(encoder: Encoder, bench: Benchmark, readout: ReadoutConfig, batch_size: int) -> tuple[Readout, Tensor]:
    """A copy of `encoder`'s readout set to `readout` (unfitted) and the pooled vectors [F, D'] of every frame."""
    model = copy.deepcopy(encoder)
    model.set_readout(readout.pooling, readout.grid)
    chunks = [model.pooled(batch, batch_size) for batch in _frame_batches(bench, batch_size)]
    return model.readout, torch.cat(chunks) if chunks else torch.zeros(0, model.readout.pooled_dim)


def benchmark_vectors(encoder: Encoder, bench: Benchmark, readout: ReadoutConfig, batch_size: int = 256) -> np.ndarray:
    """Unit vectors float32 [M, K] of every benchmark item through `encoder` with the readout `readout`: its whitening
    fitted on the gallery items' frames, then each item's frame vectors averaged (`item_means`). `encoder` is
    unchanged."""
    fitted, pooled = _pooled(encoder, bench, readout, batch_size)
    return item_means(bench, fit_and_project(fitted, readout, pooled, gallery_rows(bench)).numpy())


def raw_pixel_frames(bench: Benchmark, batch_size: int = 1024) -> np.ndarray:
    """The raw-pixel floor of every stored frame (`raw_pixel_embeddings`, 32x32 grey, centred): float32 [F, 1024]."""
    chunks = [raw_pixel_embeddings(batch) for batch in _frame_batches(bench, batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros((0, 32 * 32), np.float32)


def benchmark_model_vectors(
    encoder: Encoder, bench: Benchmark, readout: ReadoutConfig, baselines: bool = True
) -> dict[str, np.ndarray]:
    """Item vectors [M, K] per model: "encoder" through `readout`, then with `baselines` the floors of `floor_vectors`
    (random init of the same architecture, seed 0, and raw pixels of the stored frames), every whitening fitted on
    the gallery items' frames and every item the mean of its frames' vectors."""
    out = {"encoder": benchmark_vectors(encoder, bench, readout)}
    if baselines:
        fitted, pooled = _pooled(random_init_like(encoder), bench, readout, 256)
        floors = floor_vectors(fitted, readout, pooled, raw_pixel_frames(bench), gallery_rows(bench))
        out.update({name: item_means(bench, vectors) for name, vectors in floors.items()})
    return out


def evaluate_vectors(vectors: np.ndarray, bench: Benchmark) -> RetrievalResult:
    """Unit vectors [M, D] in bench.items order under the medbench protocol (`evaluate_embeddings`)."""
    t = bench.items
    return evaluate_embeddings(
        vectors, t["label"].to_numpy(), t["group"].to_numpy(), t["split"].to_numpy(), t["dataset"].to_numpy()
    )


def evaluate_encoder(
    embed_fn: Callable[[np.ndarray], np.ndarray], bench: Benchmark, batch_size: int = 256
) -> RetrievalResult:
    """embed_fn: uint8 [B,S,S,3] -> [B,D], run over the benchmark's frames (`embed_frames`), averaged per item
    (`item_means`), then the medbench protocol with the benchmark's labels, groups, splits and datasets."""
    return evaluate_vectors(item_means(bench, embed_frames(embed_fn, bench, batch_size)), bench)


def flat_metrics(result: RetrievalResult) -> dict[str, float]:
    """Mean metrics under their own names plus `<dataset>/<metric>` entries, for metric loggers."""
    flat = {name: float(value) for name, value in result.mean.items()}
    for dataset, metrics in result.per_dataset.items():
        flat.update({f"{dataset}/{name}": float(v) for name, v in metrics.items() if not name.startswith("n_")})
    return flat


def benchmark_evaluator(
    bench: Benchmark, readout: ReadoutConfig, batch_size: int = 256
) -> Callable[[Encoder], dict[str, float]]:
    """A callback for the pretraining loop: encoder -> flat retrieval metrics on `bench` with the readout `readout`
    (`benchmark_vectors`), so the learning curve measures the vector that will be indexed."""

    def evaluate(encoder: Encoder) -> dict[str, float]:
        return flat_metrics(evaluate_vectors(benchmark_vectors(encoder, bench, readout, batch_size), bench))

    return evaluate
