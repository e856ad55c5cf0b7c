"""The ingest stage: sources -> manifest of items (content hash, kind, modality, hashed ids) + quarantine report,
and the restricted re-identification table of the DICOM items (`m3ret.data.reidentify`).

Sources are folders and files on disk or DICOMweb servers (fetched into a local cache first, then read as files).
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
from m3ret.data.dicomweb_source import enumerate_dicomweb
from m3ret.data.errors import InputError
from m3ret.data.parallel import ItemCrash, ItemMap, parallel_map
from m3ret.data.phi import anonymise, salted_hash
from m3ret.data.readers import item_entries, read_item
from m3ret.data.reidentify import ReidentifyTable
from m3ret.data.sources import ItemRef, enumerate_source

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
    "slice_gaps",
    "header",
)
# `item_id`: the item a file belonged to (a series that keeps its other files, or one that failed whole), else ""
QUARANTINE_COLUMNS = ("path", "reason", "stage", "item_id")
# a quarantined file: (path, reason, item id or "")
Rejected = tuple[str, str, str]
log = logging.getLogger(__name__)
# bump when the cached facts change shape, so old cache entries are not reused
_CACHE_VERSION = 2


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
        "slice_gaps": int(meta.get("slice_gaps", 0)),  # slices missing between a series' kept positions
        "header": json.dumps(meta.get("header", {}), sort_keys=True, default=str),
    }


def _decode(ref: ItemRef, job: _Job) -> list[tuple[str, dict[str, Any], list[int], list[tuple[int, str]]]]:
    """(entry, facts, members, dropped) for every item behind `ref` (`item_entries`: one, or each entry of an npz):
    `members` the positions in `ref.paths` of the files the item is made of, `dropped` (position, reason) of those
    a DICOM series left out (positions, not paths, so a cache entry holds for the same content found elsewhere).
    The first entry that fails rejects the whole file: its entries come from the file's own headers."""
    paths = [Path(p) for p in ref.paths]
    position = {str(p): i for i, p in enumerate(paths)}
    decoded = []
    for entry in item_entries(ref.reader, paths[0]):
        _frames, meta = read_item(ref.reader, paths, entry, job.read)
        members = [position[p] for p in meta.pop("members", [str(p) for p in paths])]
        dropped = [(position[p], reason) for p, reason in meta.pop("dropped", [])]
        decoded.append((entry, _facts(anonymise(meta, job.salt)), members, dropped))
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


def _ingest_one(job: _Job) -> tuple[list[dict[str, Any]], list[Rejected]]:
    """Rows for one ItemRef, from the cache when its content was seen before; never raises on bad input. Every file
    of the ref ends in a row's `paths` or in the rejects: a series that fails whole rejects all its files with its
    reason and item id, one that keeps most of its files rejects the others with theirs."""
    ref = job.ref
    try:
        digest = content_hash(ref.paths)
    except OSError as err:
        return [], [(p, f"cannot read file: {err}", "") for p in ref.paths]
    series_id = digest[:16] if len(ref.paths) > 1 else ""
    cache_file = Path(job.cache_dir) / f"{digest}-{job.cache_key}.json"
    try:
        decoded = json.loads(cache_file.read_text()) if cache_file.exists() else None
    except (OSError, json.JSONDecodeError):
        decoded = None
    if decoded is None:
        try:
            decoded = _decode(ref, job)
        except InputError as err:
            return [], [(p, err.reason, series_id) for p in ref.paths]
        except Exception as err:  # a decoder bug must not end the run: the item is quarantined with the error
            return [], [(p, f"unexpected {type(err).__name__}: {err}", series_id) for p in ref.paths]
        _store_in_cache(cache_file, decoded)
    rows, rejects = [], []
    for entry, facts, members, dropped in decoded:
        item_hash = digest if not entry else hashlib.sha256(f"{digest}:{entry}".encode()).hexdigest()
        row = {
            "item_id": item_hash[:16],
            "content_hash": item_hash,
            "dataset": ref.dataset,
            "reader": ref.reader,
            "path": ref.paths[members[0]],
            "paths": json.dumps([ref.paths[i] for i in members]),
            "entry": entry,
            **facts,
            "group_hash": salted_hash(ref.group, job.salt),
        }
        row["modality"] = ref.modality or row["modality"] or "other"
        row["label"] = ref.label or row["label"]
        row["role"] = ref.role or row["role"]
        rows.append(row)
        rejects += [(ref.paths[i], reason, row["item_id"]) for i, reason in dropped]
    return rows, rejects


def ingest(
    cfg: IngestConfig, read_cfg: ReadConfig, salt: bytes, map_items: ItemMap = parallel_map
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scan cfg.sources, decode-check every item (parallel, cached by content), write the manifest parquet, the
    quarantine CSV and the re-identification table. Returns (manifest, quarantine). The same content found twice is
    one item; the copy is reported. A DICOMweb source that cannot be listed raises SourceUnavailableError.
    `map_items` runs the per-item work (`_ingest_one`): this machine's process pool, or an engine's cluster."""
    refs: list[ItemRef] = []
    rejects: list[Rejected] = []
    for source in cfg.sources:
        source_refs, source_rejects = (
            enumerate_dicomweb(source, cfg, salt) if source.dicomweb else enumerate_source(source)
        )
        refs += source_refs
        rejects += [(path, reason, "") for path, reason in source_rejects]
    cache_key = hashlib.sha256(
        json.dumps([_CACHE_VERSION, to_dict(read_cfg), salted_hash("cache", salt)], sort_keys=True).encode()
    ).hexdigest()[:12]
    jobs = [_Job(ref, read_cfg, salt, cfg.cache_dir, cache_key) for ref in refs]
    rows: list[dict[str, Any]] = []
    origins: dict[str, str] = {}  # item id -> its source, for the re-identification table
    for job, result in zip(jobs, map_items(_ingest_one, jobs, cfg.workers, "ingest"), strict=True):
        if isinstance(result, ItemCrash):
            rejects += [(p, result.reason, "") for p in job.ref.paths]
            continue
        rows += result[0]
        rejects += result[1]
        for row in result[0]:
            origins.setdefault(row["item_id"], job.ref.source)
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    first = manifest.drop_duplicates("item_id", keep="first")
    for dup in manifest[manifest.duplicated("item_id", keep="first")].itertuples():
        original = first.loc[first.item_id == dup.item_id, "path"].iloc[0]
        reason = f"duplicate content of {original}{' ' + dup.entry if dup.entry else ''}"
        rejects += [(p, reason, dup.item_id) for p in json.loads(dup.paths)]
    manifest = first.sort_values(["dataset", "path", "entry"], kind="stable").reset_index(drop=True)
    quarantine = pd.DataFrame([(p, r, "ingest", i) for p, r, i in rejects], columns=list(QUARANTINE_COLUMNS))
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    manifest.to_parquet(cfg.out, index=False)
    Path(cfg.quarantine).parent.mkdir(parents=True, exist_ok=True)
    quarantine.to_csv(cfg.quarantine, index=False)
    ReidentifyTable.from_manifest(manifest, origins).write(cfg.reidentify_table)
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
