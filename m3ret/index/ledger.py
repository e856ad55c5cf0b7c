"""The refresh ledger: which source items are already in the published collection, and which were quarantined.

One parquet file (`<state_dir>/ledger.parquet`), one row per item id (the content hash prefix ingest assigns), so a
file whose bytes change is a new item and its old id is what gets deleted. The ledger is rewritten atomically and
only after the index holds what it says: a refresh that dies half-way leaves the ledger as it was, and the next
one redoes that batch (row ids are stable, so the redone upserts replace rows instead of adding copies).

Batches live in `<state_dir>/batches/<batch>/`: frames, item vectors + metadata (the drift flow's latest window) and
`report.json`, written last, which marks the batch complete.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd

from m3ret.index.filters import SearchFilter
from m3ret.index.vector_index import VectorIndex
from m3ret.models.embedding_set import ITEM_VECTORS

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


def reconcile(
    ledger: pd.DataFrame, index: VectorIndex, collection: str, version: str, manifest: pd.DataFrame
) -> pd.DataFrame:
    """Align the ledger's indexed rows with `collection` when they may disagree: before the first refresh (the
    pipeline built the collection) and after a new model was published (its collection was built from the
    pipeline's embeddings, so items earlier refreshes added are missing from it). Indexed rows the collection does
    not hold are dropped, so the coming refresh embeds them again; items it holds are recorded as indexed, with
    their path from the sources' current `manifest` (the index holds no paths)."""
    indexed = ledger["status"] == "indexed"
    if len(ledger) and (ledger.loc[indexed, "model_version"] == version).all():
        return ledger
    present = index.rows(collection, SearchFilter(level="series"), ("item_id",)).drop_duplicates("item_id")
    keep = ledger[~indexed | ledger["item_id"].isin(present["item_id"])].copy()
    keep.loc[keep["status"] == "indexed", "model_version"] = version
    learnt = present[~present["item_id"].isin(keep["item_id"])]
    seeded = pd.DataFrame(
        {
            "item_id": learnt["item_id"],
            "content_hash": "",
            "path": learnt["item_id"].map(manifest.set_index("item_id")["path"]).fillna(""),
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
