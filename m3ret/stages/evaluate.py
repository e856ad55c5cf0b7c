"""The evaluate stage: the candidate collection measured through the index, baselines beside it, the gate, the swap.

What is measured: the pipeline's own query split against its gallery split (relevance: `evaluate.label_column`,
the modality by default), and, with `evaluate.bench`, a labeled benchmark folder or MedMNIST npz (relevance: its
labels). The gate compares the candidate's mean mAP@10 (the benchmark's when there is one: labels written by people
are the better judge) with the published model's, and only a passing candidate gets the alias.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from m3ret.config import EvaluateConfig, Params, PreprocessConfig, ReadConfig, ReadoutConfig
from m3ret.data.frame_store import FrameStore
from m3ret.data.thumbnails import Thumbnails
from m3ret.eval.baselines import floor_vectors, random_init_like, raw_pixel_embeddings
from m3ret.eval.gate import decide_gate, record_published
from m3ret.eval.index_evaluation import (
    IndexEvaluation,
    benchmark_grid_rows,
    collection_version,
    evaluate_benchmark,
    evaluate_in_index,
    evaluate_vectors_in_index,
    format_comparison,
    write_evaluation_outputs,
)
from m3ret.eval.retrieval_grid import GridRow, grid_rows_from_rankings
from m3ret.index.vector_index import VectorIndex, open_index, scratch_config
from m3ret.models.embedding_set import EmbeddingSet
from m3ret.models.encoder import Encoder, load_encoder
from m3ret.models.frame_vectors import item_vectors

GATE_REPORT, COMPARISON = "gate.json", "comparison.md"
log = logging.getLogger(__name__)


def _baseline_item_vectors(
    frames_dir: Path, embeddings: EmbeddingSet, encoder: Encoder, readout: ReadoutConfig
) -> dict[str, np.ndarray]:
    """Item vectors [M, D'] (rows in `embeddings.items` order) of the floors (`floor_vectors`: random init of the same
    architecture under `readout`, raw pixels; with whitening fitted on the frames of `readout.fit_splits` as the
    encoder's was), each the renormalised mean over the item's frames."""
    store = FrameStore(frames_dir)
    random = random_init_like(encoder)
    random.set_readout(readout.pooling, readout.grid)
    raw, pooled = [], []
    for start in range(0, len(store), 1024):
        frames = store.get(np.arange(start, min(start + 1024, len(store))))
        raw.append(raw_pixel_embeddings(frames))
        pooled.append(random.pooled(frames))
    split_of = embeddings.items.set_index("item_id")["split"]
    frame_items = store.table["item_id"].to_numpy()
    fit_rows = torch.from_numpy(split_of.reindex(frame_items).isin(readout.fit_splits).to_numpy())
    per_frame = floor_vectors(random.readout, readout, torch.cat(pooled), np.concatenate(raw), fit_rows)
    order = embeddings.items["item_id"].to_numpy()
    out = {}
    for name, vectors in per_frame.items():
        ids, items = item_vectors(vectors, frame_items)
        out[name] = items[pd.Index(ids).get_indexer(order)]
    return out


def evaluate_splits(
    index: VectorIndex,
    collection: str,
    embeddings: EmbeddingSet,
    frames_dir: Path,
    encoder: Encoder,
    cfg: EvaluateConfig,
    readout: ReadoutConfig,
) -> tuple[dict[str, IndexEvaluation], list[GridRow]]:
    """The pipeline's query items searched in `collection` (series level, gallery split); with `cfg.baselines`
    the floors on the same items. Empty when the splits hold no query or no gallery item."""
    items = embeddings.items.reset_index(drop=True)
    queries, gallery = (items["split"] == "query").to_numpy(), (items["split"] == "gallery").to_numpy()
    if not queries.any() or not gallery.any():
        log.warning(
            "evaluate: the splits hold %d query and %d gallery items; nothing to rank", queries.sum(), gallery.sum()
        )
        return {}, []
    vectors = embeddings.item_vectors
    k, label = cfg.k, cfg.label_column
    results = {
        "encoder": evaluate_in_index(
            index, collection, items[queries], vectors[queries], items[gallery], vectors[gallery], k, label
        )
    }
    if cfg.baselines:
        with tempfile.TemporaryDirectory(prefix="m3ret-eval-") as scratch:
            for name, floor in _baseline_item_vectors(frames_dir, embeddings, encoder, readout).items():
                results[name] = evaluate_vectors_in_index(
                    scratch_config(index.cfg, Path(scratch)), items, floor, k, label, collection_version(name)
                )
    thumbnails = Thumbnails(frames_dir, size=96)
    q_ids, g_ids = items.loc[queries, "item_id"].to_numpy(), items.loc[gallery, "item_id"].to_numpy()
    grid = grid_rows_from_rankings(
        items[queries],
        items[gallery],
        results["encoder"].topk,
        results["encoder"].scores,
        lambda i: thumbnails.frame(str(q_ids[i])),
        lambda j: thumbnails.frame(str(g_ids[j])),
        per_dataset=cfg.grid_queries,
        label_column=label,
    )
    return results, grid


def evaluate_stage(
    index: VectorIndex,
    collection: str,
    embeddings: EmbeddingSet,
    frames_dir: Path,
    encoder: Encoder,
    cfg: EvaluateConfig,
    readout: ReadoutConfig,
    read: ReadConfig,
    preprocess: PreprocessConfig,
) -> dict[str, Any]:
    """Measure `collection`, decide the gate, publish it when it passes; writes `cfg.out` (metrics.json,
    per_dataset.csv, retrieval_grid.png, gate.json, comparison.md). Returns the gate report."""
    splits, grid = evaluate_splits(index, collection, embeddings, frames_dir, encoder, cfg, readout)
    bench: dict[str, IndexEvaluation] = {}
    if cfg.bench:
        with tempfile.TemporaryDirectory(prefix="m3ret-bench-") as scratch:
            scratch_cfg = scratch_config(index.cfg, Path(scratch))
            bench = evaluate_benchmark(Path(cfg.bench), encoder, cfg, readout, scratch_cfg, read, preprocess)
        grid += benchmark_grid_rows(Path(cfg.bench), bench["encoder"], cfg, read, preprocess)
    results = {f"splits {name}": value for name, value in splits.items()}
    results.update({f"bench {name}": value for name, value in bench.items()})
    if not results:
        raise ValueError("evaluate: no query/gallery items in the splits and no evaluate.bench: nothing to measure")
    judge = "bench encoder" if cfg.bench else "splits encoder"
    candidate = results[judge].result.mean["mAP@10"]
    decision = decide_gate(candidate, Path(cfg.gate_file), cfg.gate_min_ratio)
    dropped = index.publish(collection) if decision.passed else []
    if decision.passed:
        record_published(Path(cfg.gate_file), collection, embeddings.model_version, candidate)
    out = Path(cfg.out)
    write_evaluation_outputs(results, out, grid)
    tables = [(f"pipeline splits (relevance: {cfg.label_column})", splits), (f"benchmark {cfg.bench}", bench)]
    (out / COMPARISON).write_text("".join(f"## {t}\n\n{format_comparison(r)}\n\n" for t, r in tables if r))
    report = {
        **dataclasses.asdict(decision),
        "judged_by": judge,
        "collection": collection,
        "published": index.current(),
        "dropped": dropped,
    }
    (out / GATE_REPORT).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report


def evaluate_pipeline_outputs(
    index: VectorIndex, collection: str, embeddings: EmbeddingSet, encoder: Encoder, params: Params
) -> dict[str, Any]:
    """`evaluate_stage` of `collection` with the pipeline's own frame store and params.yaml's sections."""
    return evaluate_stage(
        index,
        collection,
        embeddings,
        Path(params.preprocess.out),
        encoder,
        params.evaluate,
        params.readout,
        params.read,
        params.preprocess,
    )


def run(params: Params) -> dict[str, Any]:
    """The evaluate stage on the pipeline's outputs: the collection of `embed.out`'s model version, measured and
    gated; returns the gate report (the comparison tables are in `evaluate.out`/COMPARISON)."""
    encoder = load_encoder(params.embed.model)
    embeddings = EmbeddingSet.load(params.embed.out)
    index = open_index(params.index)
    try:
        return evaluate_pipeline_outputs(
            index, index.collection_name(embeddings.model_version), embeddings, encoder, params
        )
    finally:
        index.close()


def run_bench(params: Params, bench: Path) -> tuple[dict[str, IndexEvaluation], Path]:
    """`embed.model` and the floors on one labeled folder or MedMNIST npz, no gate, no publish; writes
    `evaluate.out/bench-<name>`. Returns (results per model, that folder)."""
    encoder = load_encoder(params.embed.model)
    with tempfile.TemporaryDirectory(prefix="m3ret-bench-") as scratch:
        scratch_cfg = scratch_config(params.index, Path(scratch))
        results = evaluate_benchmark(
            bench, encoder, params.evaluate, params.readout, scratch_cfg, params.read, params.preprocess
        )
    out = Path(params.evaluate.out) / f"bench-{bench.stem}"
    write_evaluation_outputs(results, out)
    return results, out
