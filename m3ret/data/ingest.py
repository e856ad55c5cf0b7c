"""The ingest stage: sources -> manifest of items (content hash, kind, modality, hashed ids) + quarantine report.

Every item is decoded once to prove it is usable; what fails is quarantined with its reason and the run goes on.
Decoded facts are cached by content hash, so re-running on unchanged inputs decodes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from m3ret.config import IngestConfig, ReadConfig, to_dict
from m3ret.data.errors import InputError
from m3ret.data.parallel import ItemCrash, parallel_map
from m3ret.data.phi import anonymise, salted_hash
from m3ret.data.readers import item_entries, read_item
from m3ret.data.sources import ItemRef, Reject, enumerate_source

MANIFEST_COLUMNS = (
    "item_id",
    "content_hash",
    "dataset",
    "reader",
    "path",
    "paths",
    "entry",
    "kind",
    "modality",
    "body_part",
    "label",
    "role",
    "group_hash",
    "patient_hash",
    "study_hash",
    "series_hash",
    "n_frames",
    "height",
    "width",
    "channels",
    "spacing",
    "header",
)
QUARANTINE_COLUMNS = ("path", "reason", "stage")
log = logging.getLogger(__name__)
# bump when the cached facts change shape, so old cache entries are not reused
_CACHE_VERSION = 1


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_hash(paths: tuple[str, ...]) -> str:
    """sha256 of the files' bytes; for a multi-file series, of the sorted per-file digests (order-free)."""
    if len(paths) == 1:
        return file_digest(Path(paths[0]))
    return hashlib.sha256("".join(sorted(file_digest(Path(p)) for p in paths)).encode()).hexdigest()


@dataclass(frozen=True)
class _Job:
    ref: ItemRef
    read: ReadConfig
    salt: bytes
    cache_dir: str
    cache_key: str


def _facts(meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": meta["kind"],
        "modality": meta.get("modality", ""),
        "body_part": meta.get("body_part", ""),
        "label": str(meta.get("label", "")),
        "role": meta.get("role", ""),
        "patient_hash": meta["patient_hash"],
        "study_hash": meta["study_hash"],
        "series_hash": meta["series_hash"],
        "n_frames": int(meta["n_frames"]),
        "height": int(meta["height"]),
        "width": int(meta["width"]),
        "channels": int(meta["channels"]),
        "spacing": json.dumps(meta.get("spacing")),
        "header": json.dumps(meta.get("header", {}), sort_keys=True, default=str),
    }


def _decode(ref: ItemRef, job: _Job) -> list[tuple[str, dict[str, Any]]]:
    """(entry, facts) for every item behind `ref` (`item_entries`: one, or each entry of an npz). The first entry
    that fails rejects the whole file: its entries come from the file's own headers, so the file is broken."""
    paths = [Path(p) for p in ref.paths]
    decoded = []
    for entry in item_entries(ref.reader, paths[0]):
        _frames, meta = read_item(ref.reader, paths, entry, job.read)
        decoded.append((entry, _facts(anonymise(meta, job.salt))))
    return decoded


def _store_in_cache(cache_file: Path, decoded: list) -> None:
    """Best effort: a cache write that fails costs a decode next time, never the run. Two workers may decode the
    same content (a duplicated file) at once, so each writes its own temp file before the atomic rename."""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(decoded))
        tmp.replace(cache_file)
    except OSError as err:
        log.warning("cannot cache %s: %s", cache_file, err)


def _ingest_one(job: _Job) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Rows for one ItemRef, from the cache when its content was seen before; never raises on bad input."""
    ref = job.ref
    try:
        digest = content_hash(ref.paths)
    except OSError as err:
        return [], [(ref.paths[0], f"cannot read file: {err}")]
    cache_file = Path(job.cache_dir) / f"{digest}-{job.cache_key}.json"
    try:
        decoded = json.loads(cache_file.read_text()) if cache_file.exists() else None
    except (OSError, json.JSONDecodeError):
        decoded = None
    if decoded is None:
        try:
            decoded = _decode(ref, job)
        except InputError as err:
            return [], [(err.path, err.reason)]
        except Exception as err:  # a decoder bug must not end the run: the item is quarantined with the error
            return [], [(ref.paths[0], f"unexpected {type(err).__name__}: {err}")]
        _store_in_cache(cache_file, decoded)
    rows = []
    for entry, facts in decoded:
        item_hash = digest if not entry else hashlib.sha256(f"{digest}:{entry}".encode()).hexdigest()
        row = {
            "item_id": item_hash[:16],
            "content_hash": item_hash,
            "dataset": ref.dataset,
            "reader": ref.reader,
            "path": ref.paths[0],
            "paths": json.dumps(list(ref.paths)),
            "entry": entry,
            **facts,
            "group_hash": salted_hash(ref.group, job.salt),
        }
        row["modality"] = ref.modality or row["modality"] or "other"
        row["label"] = ref.label or row["label"]
        row["role"] = ref.role or row["role"]
        rows.append(row)
    return rows, []


def ingest(cfg: IngestConfig, read_cfg: ReadConfig, salt: bytes) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scan cfg.sources, decode-check every item (parallel, cached by content), write the manifest parquet and the
    quarantine CSV. Returns (manifest, quarantine). The same content found twice is one item; the copy is reported."""
    refs: list[ItemRef] = []
    rejects: list[Reject] = []
    for source in cfg.sources:
        source_refs, source_rejects = enumerate_source(source)
        refs += source_refs
        rejects += source_rejects
    cache_key = hashlib.sha256(
        json.dumps([_CACHE_VERSION, to_dict(read_cfg), salted_hash("cache", salt)], sort_keys=True).encode()
    ).hexdigest()[:12]
    jobs = [_Job(ref, read_cfg, salt, cfg.cache_dir, cache_key) for ref in refs]
    rows: list[dict[str, Any]] = []
    for job, result in zip(jobs, parallel_map(_ingest_one, jobs, cfg.workers, desc="ingest"), strict=True):
        if isinstance(result, ItemCrash):
            rejects.append((job.ref.paths[0], result.reason))
            continue
        rows += result[0]
        rejects += result[1]
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    first = manifest.drop_duplicates("item_id", keep="first")
    for dup in manifest[manifest.duplicated("item_id", keep="first")].itertuples():
        original = first.loc[first.item_id == dup.item_id, "path"].iloc[0]
        rejects.append((dup.path, f"duplicate content of {original}{' ' + dup.entry if dup.entry else ''}"))
    manifest = first.sort_values(["dataset", "path", "entry"], kind="stable").reset_index(drop=True)
    quarantine = pd.DataFrame([(p, r, "ingest") for p, r in rejects], columns=list(QUARANTINE_COLUMNS))
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    manifest.to_parquet(cfg.out, index=False)
    Path(cfg.quarantine).parent.mkdir(parents=True, exist_ok=True)
    quarantine.to_csv(cfg.quarantine, index=False)
    return manifest, quarantine


def ingest_summary(manifest: pd.DataFrame, quarantine: pd.DataFrame) -> dict[str, Any]:
    """Counts for the dvc metrics file: items per kind and modality, frames, quarantined files."""
    return {
        "items": len(manifest),
        "frames": int(manifest["n_frames"].sum()),
        "quarantined": len(quarantine),
        "by_kind": {str(k): int(v) for k, v in manifest["kind"].value_counts().sort_index().items()},
        "by_modality": {str(k): int(v) for k, v in manifest["modality"].value_counts().sort_index().items()},
    }
