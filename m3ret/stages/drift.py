"""The drift stage: Evidently embedding-drift reports, reference vs current item vectors, overall and per modality.

Two windows are compared: the pipeline's own splits (`drift.reference_splits` vs `drift.current_splits` of the
embed stage's items; the dvc stage) and a refresh batch against the same reference (the drift flow).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from m3ret.config import DriftConfig, Params
from m3ret.models.embedding_set import EmbeddingSet
from m3ret.monitoring.drift import write_drift_report

log = logging.getLogger(__name__)


def splits_drift(embeddings: EmbeddingSet, cfg: DriftConfig) -> dict[str, Any]:
    """Item vectors of `cfg.reference_splits` against those of `cfg.current_splits`, report into `cfg.out`; returns
    the drift summary. Raises ValueError naming the splits when either side has no items."""
    items = embeddings.items
    split = items["split"].fillna("").astype(str).to_numpy()
    modality = items["modality"].fillna("").astype(str).to_numpy()
    is_ref = np.isin(split, list(cfg.reference_splits))
    is_cur = np.isin(split, list(cfg.current_splits))
    for side, mask, wanted in (("reference", is_ref, cfg.reference_splits), ("current", is_cur, cfg.current_splits)):
        if not mask.any():
            raise ValueError(
                f"drift: no items for the {side} side in splits {list(wanted)}; the embeddings hold splits "
                f"{sorted(set(split))}"
            )
    vectors = embeddings.item_vectors
    summary = write_drift_report(vectors[is_ref], modality[is_ref], vectors[is_cur], modality[is_cur], cfg, cfg.out)
    flagged = [row["scope"] for row in summary["scopes"] if row["drifted"]]
    log.info("drift (%s, threshold %g): %s", cfg.method, summary["threshold"], flagged or "none")
    return summary


def batch_drift(embed_dir: Path, batch_dir: Path, cfg: DriftConfig) -> dict[str, Any]:
    """Drift of a refresh batch's items (current) against the embed stage's items of `cfg.reference_splits`
    (reference), written to `cfg.out/<batch>`; the drift summary plus "batch" and "model_version". Raises ValueError
    when the two sides were embedded by different models (their vectors are not comparable)."""
    ref_version, ref_items, reference = EmbeddingSet.load_items(embed_dir)
    cur_version, cur_items, current = EmbeddingSet.load_items(batch_dir)
    if ref_version != cur_version:
        raise ValueError(f"{batch_dir} holds model {cur_version} vectors, {embed_dir} {ref_version}: not comparable")
    keep = ref_items["split"].isin(cfg.reference_splits).to_numpy()
    summary = write_drift_report(
        reference[keep],
        ref_items["modality"].to_numpy()[keep],
        current,
        cur_items["modality"].to_numpy(),
        cfg,
        Path(cfg.out) / Path(batch_dir).name,
    )
    return {**summary, "batch": Path(batch_dir).name, "model_version": ref_version}


def run(params: Params) -> dict[str, Any]:
    """`splits_drift` of the pipeline's embeddings (`embed.out`) with the `drift` section."""
    return splits_drift(EmbeddingSet.load(params.embed.out), params.drift)
