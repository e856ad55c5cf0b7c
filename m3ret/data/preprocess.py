"""The preprocess stage: every manifest item to model-ready frames uint8 [S,S,3] in shards + a frames manifest.

2-D images give one frame, videos their sampled frames, volumes their slices along the configured planes.
Items that fail to decode now (a file changed since ingest) are quarantined, never dropped silently.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from m3ret.config import PreprocessConfig, ReadConfig, to_dict
from m3ret.data.errors import InputError
from m3ret.data.frame_store import FRAME_COLUMNS, ShardWriter, write_frames_table
from m3ret.data.ingest import QUARANTINE_COLUMNS
from m3ret.data.parallel import ItemCrash, ItemMap, parallel_map
from m3ret.data.readers import read_item
from m3ret.data.resize import letterbox

# a slice whose grey levels vary less than this (std, 0..255) is background: air around a body, padding slices
BLANK_STD = 2.0
_STD_CHUNK_VALUES = 1 << 21
# preprocess keys that change speed or location only, never the frames a model sees
SPEED_ONLY = ("workers", "shard_frames", "out")


def frame_settings(cfg: PreprocessConfig) -> dict[str, Any]:
    """The preprocess settings that decide what the frames are (all but SPEED_ONLY), for cache keys and versions."""
    return {k: v for k, v in to_dict(cfg).items() if k not in SPEED_ONLY}


def to_rgb(frames: np.ndarray, channels: str) -> np.ndarray:
    """[T,H,W,1|3] -> [T,H,W,3]: grey replicated; colour kept (`replicate`) or made luminance (`grey`, ITU-R 601)."""
    if frames.shape[-1] == 1:
        return np.repeat(frames, 3, axis=-1)
    if channels == "grey":
        luma = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.repeat(np.clip(luma.round(), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    return frames


def _spacing(spacing: list[float | None] | None) -> tuple[float, float, float]:
    """(slice, row, column) spacing for the aspect of cuts: the reader's, with what it does not know filled in (no
    in-plane spacing: square pixels; no slice spacing: the column spacing, voxels as deep as they are wide)."""
    if not spacing or len(spacing) != 3:
        return 1.0, 1.0, 1.0
    dz, dy, dx = spacing
    if not (dy and dx):
        dy = dx = 1.0
    return float(dz or dx), float(dy), float(dx)


def _plane_stacks(volume: np.ndarray, spacing: list[float | None] | None, planes: tuple[str, ...]):
    """Yield (plane, slices [N,h,w,C], row/col pixel aspect) from an axial stack [Z,Y,X,C] (slice 0 inferior).

    Coronal and sagittal cuts put superior at the top (z reversed), as radiologists view them.
    """
    dz, dy, dx = _spacing(spacing)
    for plane in planes:
        if plane == "axial":
            yield plane, volume, dy / dx
        elif plane == "coronal":
            yield plane, volume.transpose(1, 0, 2, 3)[:, ::-1], dz / dx
        else:
            yield plane, volume.transpose(2, 0, 1, 3)[:, ::-1], dz / dy


def _select_slices(slices: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Indices kept: every `slice_stride`-th non-blank slice, evenly thinned to `max_slices_per_plane`."""
    index = np.arange(0, len(slices), cfg.slice_stride)
    if cfg.drop_blank_slices and len(index) > 1:
        # a few slices at a time: std works in float64, 8x a whole uint8 volume at once (a 512x512x600 CT: 600 MB)
        step = max(1, _STD_CHUNK_VALUES // max(1, slices[0].size))
        chunks = [index[i : i + step] for i in range(0, len(index), step)]
        spread = np.concatenate([slices[c].reshape(len(c), -1).std(axis=1) for c in chunks])
        kept = index[spread >= BLANK_STD]
        index = kept if len(kept) else index[[len(index) // 2]]
    if len(index) > cfg.max_slices_per_plane:
        index = index[np.linspace(0, len(index) - 1, cfg.max_slices_per_plane).round().astype(int)]
    return index


def item_frames(frames: np.ndarray, meta: dict[str, Any], cfg: PreprocessConfig) -> tuple[np.ndarray, list[dict]]:
    """One decoded item -> model-ready frames uint8 [N,S,S,3] and one record per frame (plane, indices, time)."""
    records: list[dict] = []
    out: list[np.ndarray] = []
    if meta["kind"] == "volume" and len(frames) > 1:
        n_volumes = int(meta.get("n_volumes", 1))
        per_volume = len(frames) // n_volumes
        for v in range(n_volumes):
            volume = frames[v * per_volume : (v + 1) * per_volume]
            for plane, slices, aspect in _plane_stacks(volume, meta.get("spacing"), cfg.planes):
                for i in _select_slices(slices, cfg):
                    out.append(letterbox(np.ascontiguousarray(slices[i]), cfg.size, aspect))
                    records.append({"plane": plane, "volume_index": v, "frame_index": int(i), "timestamp": np.nan})
    else:
        timestamps = meta.get("timestamps") or [np.nan] * len(frames)
        _dz, dy, dx = _spacing(meta.get("spacing"))  # one slice of a volume keeps its pixel aspect as in the volume
        for i, frame in enumerate(frames):
            out.append(letterbox(frame, cfg.size, dy / dx))
            records.append({"plane": "", "volume_index": 0, "frame_index": i, "timestamp": float(timestamps[i])})
    return to_rgb(np.stack(out), cfg.channels), records


@dataclass(frozen=True)
class _Job:
    """The items of one file (or DICOM series): one, or every requested entry of an npz, read in this order."""

    reader: str
    paths: tuple[str, ...]
    item_ids: tuple[str, ...]
    entries: tuple[str, ...]
    cfg: PreprocessConfig
    read: ReadConfig


_Result = tuple[str, np.ndarray | None, list[dict] | str, list[tuple[str, str]]]


def _preprocess_one(job: _Job) -> list[_Result]:
    """[(item_id, frames, records, dropped)] or [(item_id, None, reason, [])] per item of the job, `dropped` the
    (path, reason) of files a DICOM series left out now (changed since ingest); never raises on bad input.
    The entries of one npz are read in a row in one process, so each of its subsets is decompressed once."""
    paths = [Path(p) for p in job.paths]
    results: list[_Result] = []
    for item_id, entry in zip(job.item_ids, job.entries, strict=True):
        try:
            frames, meta = read_item(job.reader, paths, entry, job.read)
            results.append((item_id, *item_frames(frames, meta, job.cfg), meta.get("dropped", [])))
        except InputError as err:
            results.append((item_id, None, err.reason, []))
        except Exception as err:  # a decoder bug must not end the run: the item is quarantined with the error
            results.append((item_id, None, f"unexpected {type(err).__name__}: {err}", []))
    return results


def _jobs(manifest: pd.DataFrame, cfg: PreprocessConfig, read_cfg: ReadConfig) -> tuple[list[_Job], list[str]]:
    """One job per file (or series): the items that share their files, in manifest order; and each job's key, a
    hash of what its result is a function of (files by path and content hash, entries, frame and read settings)."""
    jobs, keys = [], []
    settings = json.dumps([frame_settings(cfg), to_dict(read_cfg)], sort_keys=True)
    for paths, group in manifest.groupby("paths", sort=False):
        reader = group.reader.iloc[0]
        jobs.append(_Job(reader, tuple(json.loads(paths)), tuple(group.item_id), tuple(group.entry), cfg, read_cfg))
        inputs = json.dumps([reader, paths, list(group.content_hash), list(group.entry), settings])
        keys.append(hashlib.sha256(inputs.encode()).hexdigest())
    return jobs, keys


def preprocess(
    manifest: pd.DataFrame, cfg: PreprocessConfig, read_cfg: ReadConfig, map_items: ItemMap = parallel_map
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write shards and `frames.parquet` under cfg.out; returns (frames table, quarantine of failed items).
    `map_items` runs the per-item work (`_preprocess_one`): this machine's process pool, or an engine's cluster;
    the shards are written here, in manifest order, whichever ran it."""
    root = Path(cfg.out)
    writer = ShardWriter(root, cfg.size, cfg.shard_frames)
    tables: list[pd.DataFrame] = []
    rejects: list[tuple[str, str, str, str]] = []
    paths_of = {item_id: json.loads(paths) for item_id, paths in zip(manifest.item_id, manifest.paths, strict=True)}
    jobs, keys = _jobs(manifest, cfg, read_cfg)
    for job, results in zip(jobs, map_items(_preprocess_one, jobs, cfg.workers, "preprocess", keys), strict=True):
        if isinstance(results, ItemCrash):
            results = [(item_id, None, results.reason, []) for item_id in job.item_ids]
        for item_id, frames, records, dropped in results:
            rejects += [(path, reason, "preprocess", item_id) for path, reason in dropped]
            if frames is None:
                rejects += [(path, records, "preprocess", item_id) for path in paths_of[item_id]]
                continue
            table = pd.DataFrame(records)
            table["item_id"] = item_id
            table[["shard", "row"]] = writer.append(frames)
            tables.append(table)
    writer.close()
    frames_table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(FRAME_COLUMNS))
    frames_table["frame_id"] = np.arange(len(frames_table), dtype=np.int64)
    frames_table = frames_table[list(FRAME_COLUMNS)]
    write_frames_table(root, frames_table, cfg.size)
    return frames_table, pd.DataFrame(rejects, columns=list(QUARANTINE_COLUMNS))
