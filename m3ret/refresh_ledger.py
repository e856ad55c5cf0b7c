"""The refresh ledger: which source items are already in the published collection, and which were quarantined.

One parquet file (`<state_dir>/ledger.parquet`), one row per item id (the content hash prefix ingest assigns), so a
file whose bytes change is a new item and its old id is what gets deleted. The ledger is rewritten atomically and
only after the index holds what it says: a refresh that dies half-way leaves the ledger as it was, and the next
one redoes that batch (row ids are stable, so the redone upserts replace rows instead of adding copies).

Batches live in `<state_dir>/batches/<batch>/`: frames, item vectors + metadata (the drift flow's latest window) and
`report.json`, written last, which marks the batch complete.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from m3ret.config import DriftConfig
from m3ret.index.filters import SearchFilter
from m3ret.index.milvus_index import MilvusIndex
from m3ret.models.embeddings import EMBED_INFO, ITEM_VECTORS, ITEMS_META

LEDGER_FILE = "ledger.parquet"
LEDGER_COLUMNS = ("item_id", "content_hash", "path", "status", "reason", "model_version", "batch")
STATUSES = ("indexed", "quarantined")
BATCHES_DIR = "batches"
BATCH_REPORT = "report.json"
# the batch name of ledger rows learnt from the collection itself (built by the pipeline, not by a refresh)
FROM_COLLECTION = "collection"
log = logging.getLogger(__name__)


def load_ledger(state_dir: Path) -> pd.DataFrame:
    """The ledger (columns LEDGER_COLUMNS), empty before the first refresh."""
    path = Path(state_dir) / LEDGER_FILE
    if not path.exists():
        return pd.DataFrame({c: pd.Series(dtype=str) for c in LEDGER_COLUMNS})
    return pd.read_parquet(path)[list(LEDGER_COLUMNS)]


def save_ledger(state_dir: Path, ledger: pd.DataFrame) -> None:
    """Replace the ledger atomically (write a temp file, rename), one row per item id."""
    if ledger["item_id"].duplicated().any():
        raise ValueError(f"ledger rows repeat item ids: {sorted(ledger.item_id[ledger.item_id.duplicated()])[:5]}")
    bad = sorted(set(ledger["status"]) - set(STATUSES))
    if bad:
        raise ValueError(f"ledger status {bad}; valid: {list(STATUSES)}")
    path = Path(state_dir) / LEDGER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.parquet")
    ledger[list(LEDGER_COLUMNS)].sort_values("item_id").to_parquet(tmp, index=False)
    tmp.replace(path)


def collection_items(index: MilvusIndex, collection: str, batch_size: int = 1000) -> pd.DataFrame:
    """[item_id, source_path] of every item with a series row in `collection` (one query iterator pass)."""
    index.client.load_collection(collection)
    iterator = index.client.query_iterator(
        collection,
        batch_size=batch_size,
        filter=SearchFilter(level="series").expression(),
        output_fields=["item_id", "source_path"],
    )
    rows: list[dict] = []
    try:
        while page := iterator.next():
            rows += page
    finally:
        iterator.close()
    return pd.DataFrame(rows, columns=["item_id", "source_path"]).drop_duplicates("item_id")


def reconcile(ledger: pd.DataFrame, index: MilvusIndex, collection: str, version: str) -> pd.DataFrame:
    """Align the ledger's indexed rows with `collection` when they may disagree: before the first refresh (the
    pipeline built the collection) and after a new model was published (its collection was built from the
    pipeline's embeddings, so items earlier refreshes added are missing from it). Indexed rows the collection does
    not hold are dropped, so the coming refresh embeds them again; items it holds are recorded as indexed."""
    indexed = ledger["status"] == "indexed"
    if len(ledger) and (ledger.loc[indexed, "model_version"] == version).all():
        return ledger
    present = collection_items(index, collection)
    keep = ledger[~indexed | ledger["item_id"].isin(present["item_id"])].copy()
    keep.loc[keep["status"] == "indexed", "model_version"] = version
    learnt = present[~present["item_id"].isin(keep["item_id"])]
    seeded = pd.DataFrame(
        {
            "item_id": learnt["item_id"],
            "content_hash": "",
            "path": learnt["source_path"],
            "status": "indexed",
            "reason": "",
            "model_version": version,
            "batch": FROM_COLLECTION,
        }
    )
    log.info("ledger reconciled with %s: %d kept, %d learnt from the collection", collection, len(keep), len(seeded))
    return pd.concat([keep, seeded], ignore_index=True)[list(LEDGER_COLUMNS)]


def drop_unfinished_batches(state_dir: Path) -> list[str]:
    """Remove batch folders a crashed refresh left without `report.json`; returns their names."""
    root = Path(state_dir) / BATCHES_DIR
    doomed = [d for d in sorted(root.glob("*")) if d.is_dir() and not (d / BATCH_REPORT).exists()]
    for folder in doomed:
        shutil.rmtree(folder)
        log.info("removed unfinished refresh batch %s", folder.name)
    return [d.name for d in doomed]


def latest_batch(state_dir: Path) -> Path | None:
    """The newest complete batch that added items (its item vectors are the drift flow's current window)."""
    root = Path(state_dir) / BATCHES_DIR
    done = [d for d in sorted(root.glob("*")) if (d / BATCH_REPORT).exists() and (d / ITEM_VECTORS).exists()]
    return done[-1] if done else None


def load_window(folder: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Item metadata and item vectors float32 [M, D] of a batch or of the embed stage's output folder."""
    folder = Path(folder)
    return pd.read_parquet(folder / ITEMS_META), np.load(folder / ITEM_VECTORS)


def batch_drift(embed_dir: Path, batch_dir: Path, cfg: DriftConfig) -> dict:
    """Drift of a batch's items (current) against the embed stage's items of `cfg.reference_splits` (reference),
    written to `cfg.out/<batch>`; the drift summary plus "batch" and "model_version". Raises ValueError when the two
    sides were embedded by different models (their vectors are not comparable)."""
    # Evidently is imported only here: a refresh never needs it, and it is slow to import
    from m3ret.monitoring.drift import write_drift_report

    embed_dir, batch_dir = Path(embed_dir), Path(batch_dir)
    versions = [json.loads((d / EMBED_INFO).read_text())["model_version"] for d in (embed_dir, batch_dir)]
    if versions[0] != versions[1]:
        raise ValueError(f"{batch_dir} holds model {versions[1]} vectors, {embed_dir} {versions[0]}: not comparable")
    ref_items, reference = load_window(embed_dir)
    cur_items, current = load_window(batch_dir)
    keep = ref_items["split"].isin(cfg.reference_splits).to_numpy()
    summary = write_drift_report(
        reference[keep],
        ref_items["modality"].to_numpy()[keep],
        current,
        cur_items["modality"].to_numpy(),
        cfg,
        Path(cfg.out) / batch_dir.name,
    )
    return {**summary, "batch": batch_dir.name, "model_version": versions[0]}
