"""Incremental refresh: new or changed source files -> frames -> embeddings -> upserted into the published collection.

Items are known by content hash (ingest's item id), so an unchanged file is skipped, a changed file is a new item
whose old rows are deleted, and a file that vanished has its rows deleted. Only new items are preprocessed and
embedded, with the published model; the ledger (`m3ret.index.ledger`) is updated after the index holds the batch.
Ingest, preprocess and embed run on the `engine` section's engine; only this process writes the index.

A new model (the encoder's version differs from the published collection's) is not mixed into the old collection:
`rebuild_for_new_model` builds its own collection from the embed stage's output, and publishes it only when the
evaluation gate passes.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from m3ret.config import Params, replace
from m3ret.data.ingest import content_hash, ingest
from m3ret.data.phi import ingest_salt
from m3ret.data.preprocess import preprocess
from m3ret.data.splits import make_splits
from m3ret.engines import Engine, open_engine
from m3ret.index.ledger import (
    BATCH_REPORT,
    BATCHES_DIR,
    LEDGER_COLUMNS,
    drop_unfinished_batches,
    load_ledger,
    reconcile,
    save_ledger,
)
from m3ret.index.rows import embedding_rows
from m3ret.index.vector_index import VectorIndex, open_index
from m3ret.models.embedding_set import EmbeddingSet
from m3ret.models.encoder import load_encoder
from m3ret.models.model_version import model_version
from m3ret.stages import embed
from m3ret.stages.evaluate import evaluate_pipeline_outputs
from m3ret.stages.index import build_collection

log = logging.getLogger(__name__)


class ModelVersionError(RuntimeError):
    """The encoder's model version is not the published collection's: a new model must be gated first."""


@dataclass
class RefreshReport:
    """What one refresh did. `added`: item id -> path; `quarantined`: (path, reason); `deleted`: old item ids of
    files that changed or vanished; `skipped`: items already known (indexed or quarantined before)."""

    batch: str
    model_version: str
    added: dict[str, str] = field(default_factory=dict)
    skipped: int = 0
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class RebuildReport:
    """A new model's collection: built, gated, and `published` (alias moved to it) only when the gate passed."""

    model_version: str
    collection: str
    published: bool
    dropped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def encoder_version(params: Params) -> str:
    """The model version vectors made now would carry (retrieval model bytes + preprocessing)."""
    return model_version(params.embed.model, params.preprocess, params.read)


def new_model_version(params: Params) -> str | None:
    """The retrieval model's version when the alias does not point at its collection yet (a new model), else None.
    A changed encoder or readout is first turned into a retrieval model by the embed stage (a no-op when current)."""
    version = embed.run(params)["model_version"]
    index = open_index(params.index)
    try:
        return None if index.current() == index.collection_name(version) else version
    finally:
        index.close()


def rebuild_for_new_model(params: Params) -> RebuildReport:
    """Embed stage output (computed now unless up to date) -> the new version's collection -> the evaluate stage,
    whose gate publishes it (alias swap, old collections beyond `index.retain` dropped) only when it passes."""
    embed.run(params)
    embeddings = EmbeddingSet.load(params.embed.out)
    encoder = load_encoder(params.embed.model)
    index = open_index(params.index)
    try:
        name = build_collection(index, embeddings)
        gate = evaluate_pipeline_outputs(index, name, embeddings, encoder, params)
    finally:
        index.close()
    log.info("new model %s: gate %s", embeddings.model_version, gate["reason"])
    return RebuildReport(embeddings.model_version, name, gate["passed"], gate["dropped"])


def refresh(
    params: Params,
    state_dir: Path,
    on_step: Callable[[str], None] | None = None,
) -> RefreshReport:
    """Bring the published collection up to date with `params.ingest.sources` (module docstring).

    `on_step(name)` is called after each durable step ("upsert frame", "upsert series", "delete") for progress
    reporting; an exception it raises stops the refresh there, as a crash would, leaving the ledger untouched.
    Raises ModelVersionError when the encoder is not the published model (run `rebuild_for_new_model` first).
    """
    state_dir = Path(state_dir)
    batch = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    with closing(open_index(params.index)) as index, open_engine(params.engine) as engine:
        version = encoder_version(params)
        collection = index.current()
        if collection != index.collection_name(version):
            raise ModelVersionError(
                f"retrieval model {params.embed.model} is model {version}, but alias {params.index.alias!r} points at "
                f"{collection or 'no collection'}: build, gate and publish the new model first"
            )
        drop_unfinished_batches(state_dir)
        manifest, rejects = _scan(params, state_dir, engine)
        ledger = reconcile(load_ledger(state_dir), index, collection, version, manifest)
        report = RefreshReport(batch=batch, model_version=version)
        new = manifest[~manifest["item_id"].isin(ledger["item_id"])]
        report.skipped = len(manifest) - len(new)
        gone = ledger[(ledger["status"] == "indexed") & ~ledger["item_id"].isin(manifest["item_id"])]
        report.deleted = sorted(gone["item_id"])
        fresh_rejects = rejects[~rejects["item_id"].isin(ledger["item_id"]) | (rejects["item_id"] == "")]
        report.quarantined = list(zip(fresh_rejects["path"], fresh_rejects["reason"], strict=True))
        entries = [_quarantined_entries(fresh_rejects[~fresh_rejects["item_id"].isin(manifest["item_id"])], batch)]
        batch_dir = state_dir / BATCHES_DIR / batch
        if len(new):
            indexed, failed = _index_batch(params, index, engine, collection, new, batch_dir, on_step)
            report.added = dict(zip(indexed["item_id"], indexed["path"], strict=True))
            report.quarantined += list(zip(failed["path"], failed["reason"], strict=True))
            entries += [_ledger_rows(indexed, "indexed", version, batch), _quarantined_entries(failed, batch)]
        if report.deleted:
            index.delete_items(report.deleted, collection=collection)
            if on_step:
                on_step("delete")
        if report.added or report.deleted or report.quarantined:
            batch_dir.mkdir(parents=True, exist_ok=True)
            (batch_dir / BATCH_REPORT).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        # quarantined content no source holds any more (a fixed or removed file) is forgotten with it
        seen = ledger["item_id"].isin(manifest["item_id"]) | ledger["item_id"].isin(rejects["item_id"])
        kept = ledger[seen & ~ledger["item_id"].isin(gone["item_id"])].set_index("item_id")
        # unchanged content found at another path (a moved file) keeps its rows; the ledger follows the file
        kept.update(manifest.set_index("item_id")[["path"]])
        parts = [kept.reset_index(), *(e for e in entries if len(e))]
        save_ledger(state_dir, pd.concat(parts, ignore_index=True))
        log.info(
            "refresh %s: %d added, %d skipped, %d quarantined, %d deleted",
            batch, len(report.added), report.skipped, len(report.quarantined), len(report.deleted),
        )  # fmt: skip
        return report


def _scan(params: Params, state_dir: Path, engine: Engine) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ingest every source (the content-hash cache makes unchanged files cheap, the DICOMweb cache fetches only new
    instances) -> (manifest, rejects with the item id their bytes would have, "" when unreadable). Manifest and
    quarantine go to the state folder; the re-identification table is the pipeline's (`ingest.reidentify_table`),
    rewritten for the sources' current items, so it covers what this refresh indexes."""
    scan = state_dir / "scan"
    cfg = replace(params.ingest, out=str(scan / "manifest.parquet"), quarantine=str(scan / "quarantine.csv"))
    manifest, rejects = ingest(cfg, params.read, ingest_salt(params.ingest), engine.map_items)
    rejects = rejects.assign(item_id=[_item_id_of(p) for p in rejects["path"]])
    return manifest, rejects.drop_duplicates("path")


def _item_id_of(path: str) -> str:
    try:
        return content_hash((path,))[:16]
    except OSError:
        return ""


def _index_batch(
    params: Params,
    index: VectorIndex,
    engine: Engine,
    collection: str,
    new: pd.DataFrame,
    batch_dir: Path,
    on_step: Callable[[str], None] | None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Preprocess, split, embed and upsert the new items -> (indexed manifest rows, failed [item_id, path, reason])."""
    batch_dir.mkdir(parents=True, exist_ok=True)
    new.to_parquet(batch_dir / "manifest.parquet", index=False)
    frames_dir = batch_dir / "frames"
    frames, rejects = preprocess(new, replace(params.preprocess, out=str(frames_dir)), params.read, engine.map_items)
    done = new[new["item_id"].isin(frames["item_id"])]
    reasons = dict(zip(rejects["path"], rejects["reason"], strict=False))
    failed = new.loc[~new["item_id"].isin(done["item_id"]), ["item_id", "path"]]
    failed = failed.assign(reason=[reasons.get(p, "no frames after preprocessing") for p in failed["path"]])
    if done.empty:
        return done, failed
    # the split rule is a keyed hash of the group, so these items land where a full rerun would put them
    splits = make_splits(done, params.split)
    summary = embed.embed_with_retrieval_model(
        replace(params.embed, out=str(batch_dir)), frames_dir, done, splits, params.preprocess, params.read, engine
    )
    if index.collection_name(summary["model_version"]) != collection:
        raise ModelVersionError(f"the encoder changed during the refresh (now {summary['model_version']})")
    embeddings = EmbeddingSet.load(batch_dir)
    for level in ("frame", "series"):
        rows, vectors = embedding_rows(embeddings, (level,))
        index.write(rows, vectors, collection=collection)
        if on_step:
            on_step(f"upsert {level}")
    return done, failed


def _ledger_rows(items: pd.DataFrame, status: str, version: str, batch: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": items["item_id"],
            "content_hash": items["content_hash"],
            "path": items["path"],
            "status": status,
            "reason": "",
            "model_version": version,
            "batch": batch,
        }
    )[list(LEDGER_COLUMNS)]


def _quarantined_entries(rejects: pd.DataFrame, batch: str) -> pd.DataFrame:
    """Ledger rows for quarantined content, so the same bytes are not retried and reported every refresh."""
    known = rejects[rejects["item_id"] != ""].drop_duplicates("item_id")
    return pd.DataFrame(
        {
            "item_id": known["item_id"],
            "content_hash": "",
            "path": known["path"],
            "status": "quarantined",
            "reason": known["reason"],
            "model_version": "",
            "batch": batch,
        }
    )[list(LEDGER_COLUMNS)]


def run(params: Params, state_dir: Path) -> dict[str, Any]:
    """One refresh without a scheduler: a new retrieval model is built, gated and published first (its collection
    stays unpublished and the refresh is skipped when the gate fails); then new and changed files are indexed.
    Returns {"rebuild": RebuildReport dict or None, "refresh": RefreshReport dict or None}."""
    rebuild = rebuild_for_new_model(params).to_dict() if new_model_version(params) is not None else None
    report = None if rebuild and not rebuild["published"] else refresh(params, state_dir).to_dict()
    return {"rebuild": rebuild, "refresh": report}
