"""Retrieval quality measured through the Milvus index, under the medbench protocol, with baselines beside it.

The same numbers as `evaluate_embeddings` (P@1/5/10, hit rate R@K, mAP@10 per dataset, per modality, mean over
datasets), but every ranking comes from the index: each query searches the collection with a typed filter
(its dataset, the gallery split, one level, its own group excluded). Two checks of the index ride along:
- ANN recall@k: |index top-k ∩ exact top-k| / |exact top-k|, the exact top-k recomputed in numpy (`rank_gallery`);
- cross-modal share: searching the whole gallery (no dataset filter), the share of hits with the query's modality.
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from m3ret.config import EvaluateConfig, IndexConfig, PreprocessConfig, ReadConfig, ReadoutConfig
from m3ret.eval.benchmark import benchmark_model_vectors, load_benchmark
from m3ret.eval.per_dataset_chart import PER_DATASET_PNG, per_dataset_chart
from m3ret.eval.retrieval_grid import GridRow, grid_rows_from_rankings, retrieval_grid
from m3ret.eval.retrieval_metrics import (
    RetrievalResult,
    count_relevant,
    mean_over_datasets,
    rank_gallery,
    report_ks,
    retrieval_metrics,
)
from m3ret.index.filters import SearchFilter
from m3ret.index.milvus_index import MilvusIndex
from m3ret.index.rows import index_table
from m3ret.models.encoder import Encoder

# Benchmarks carry their class in `label`.
BENCH_LABEL = "label"
GRID_FILE = "retrieval_grid.png"


@dataclass
class IndexEvaluation:
    """result: per dataset + mean (as `evaluate_embeddings` returns); per_modality: metrics over the queries of
    each modality (each ranked in its own dataset); ann_recall: mean ANN recall@k of the index against exact search;
    same_modality_share: {modality: share, "all": share} of cross-dataset hits that have the query's modality.
    topk int64 [Q,k] / scores float32 [Q,k]: per query row (queries table order) the gallery row positions and
    similarities the index returned (-1 / nan for empty slots), for pictures of the results."""

    result: RetrievalResult
    per_modality: dict[str, dict[str, float]]
    ann_recall: float
    same_modality_share: dict[str, float]
    topk: np.ndarray = field(repr=False, compare=False)
    scores: np.ndarray = field(repr=False, compare=False)

    def to_metrics(self) -> dict[str, float]:
        """Flat {name: value} for metrics.json: mean metrics, `dataset/<d>/<m>`, `modality/<mod>/<m>`, `ann_recall`,
        `same_modality_share/<mod>`."""
        out = {name: float(v) for name, v in self.result.mean.items()}
        for prefix, table in (("dataset", self.result.per_dataset), ("modality", self.per_modality)):
            for name, metrics in table.items():
                out.update({f"{prefix}/{name}/{m}": float(v) for m, v in metrics.items() if not m.startswith("n_")})
        out["ann_recall"] = float(self.ann_recall)
        out.update({f"same_modality_share/{m}": float(v) for m, v in self.same_modality_share.items()})
        return out


def _search_by_group(
    index: MilvusIndex,
    collection: str,
    vectors: np.ndarray,
    groups: np.ndarray,
    k: int,
    positions: pd.Series,
    where: dict,
) -> tuple[np.ndarray, np.ndarray]:
    """One search call per query group (its own group excluded by the filter, the rest of `where` shared):
    gallery positions int64 [Q,k] (-1 where Milvus returned fewer than k hits) and scores float32 [Q,k]."""
    topk = np.full((len(vectors), k), -1, dtype=np.int64)
    scores = np.full((len(vectors), k), np.nan, dtype=np.float32)
    for group, rows in pd.Series(groups).groupby(groups, sort=False).indices.items():
        where_group = SearchFilter(exclude_groups=(str(group),), **where)
        hits = index.search(vectors[rows], k, where_group, collection=collection, fields=("item_id",))
        for row, row_hits in zip(rows, hits, strict=True):
            ids = [h.fields["item_id"] for h in row_hits]
            unknown = [i for i in ids if i not in positions.index]
            if unknown:
                raise ValueError(f"{collection}: hits {unknown[:3]} are not rows of the gallery table")
            topk[row, : len(ids)] = positions.loc[ids].to_numpy()
            scores[row, : len(ids)] = [h.score for h in row_hits]
    return topk, scores


def _ann_recall(found: np.ndarray, exact: np.ndarray) -> list[float]:
    """Per query with a non-empty exact top-k: |found ∩ exact| / |exact| (both int [Q,k], -1 = empty)."""
    out = []
    for f, e in zip(found, exact, strict=True):
        e = e[e >= 0]
        if len(e):
            out.append(len(np.intersect1d(f[f >= 0], e)) / len(e))
    return out


def evaluate_in_index(
    index: MilvusIndex,
    collection: str,
    queries: pd.DataFrame,
    query_vectors: np.ndarray,
    gallery: pd.DataFrame,
    gallery_vectors: np.ndarray,
    k: int = 10,
    label_column: str = "label",
    *,
    level: str = "series",
    gallery_split: str = "gallery",
) -> IndexEvaluation:
    """The medbench protocol with rankings from `collection` (module docstring).

    queries [Q rows] / query_vectors float32 [Q,D]; gallery [G rows] / gallery_vectors [G,D], L2-normalised. Both
    tables have columns dataset, modality, group, `label_column`; gallery also `item_id`, the rows already written to
    `collection` at `level` with split `gallery_split` (as `index_table` makes them). A dataset without queries or
    gallery is skipped with a warning. Relevance = equal `label_column`.
    """
    need = ["dataset", "modality", "group", label_column]
    for name, table in (("queries", queries), ("gallery", gallery)):
        missing = [c for c in need + (["item_id"] if name == "gallery" else []) if c not in table.columns]
        if missing:
            raise ValueError(f"{name} table lacks column(s) {missing}")
    if len(queries) != len(query_vectors) or len(gallery) != len(gallery_vectors):
        raise ValueError("one vector per query row and per gallery row is required")
    q = queries.reset_index(drop=True)
    g = gallery.reset_index(drop=True)
    qv = np.ascontiguousarray(query_vectors, dtype=np.float32)
    gv = np.ascontiguousarray(gallery_vectors, dtype=np.float32)
    q_labels, g_labels = q[label_column].astype(str).to_numpy(), g[label_column].astype(str).to_numpy()
    q_groups, g_groups = q["group"].astype(str).to_numpy(), g["group"].astype(str).to_numpy()
    positions = pd.Series(np.arange(len(g)), index=g["item_id"].astype(str))
    if not positions.index.is_unique:
        raise ValueError("gallery item_id values must be unique")
    ks = report_ks(k)

    topk = np.full((len(q), k), -1, dtype=np.int64)
    scores = np.full((len(q), k), np.nan, dtype=np.float32)
    n_relevant = np.zeros(len(q), dtype=np.int64)
    evaluated = np.zeros(len(q), dtype=bool)
    recalls: list[float] = []
    per_dataset: dict[str, dict[str, float]] = {}
    for name in sorted(set(q["dataset"])):
        qi = np.flatnonzero(q["dataset"].to_numpy() == name)
        gi = np.flatnonzero(g["dataset"].to_numpy() == name)
        if len(gi) == 0:
            warnings.warn(f"dataset {name!r} skipped: {len(qi)} queries, no gallery items", stacklevel=2)
            continue
        where = {"dataset": (name,), "level": level, "split": (gallery_split,)}
        topk[qi], scores[qi] = _search_by_group(index, collection, qv[qi], q_groups[qi], k, positions, where)
        exact = rank_gallery(qv[qi], gv[gi], q_groups[qi], g_groups[gi], k)
        recalls += _ann_recall(topk[qi], np.where(exact >= 0, gi[np.maximum(exact, 0)], -1))
        n_relevant[qi] = count_relevant(q_labels[qi], q_groups[qi], g_labels[gi], g_groups[gi])
        metrics = retrieval_metrics(topk[qi], q_labels[qi], g_labels, ks=ks, n_relevant=n_relevant[qi])
        per_dataset[name] = {**metrics, "n_query": float(len(qi)), "n_gallery": float(len(gi))}
        evaluated[qi] = True
    if not per_dataset:
        raise ValueError("no dataset has both queries and gallery items")
    mean = mean_over_datasets(per_dataset)

    q_modality, g_modality = q["modality"].astype(str).to_numpy(), g["modality"].astype(str).to_numpy()
    per_modality = {}
    for modality in sorted(set(q_modality[evaluated])):
        rows = np.flatnonzero(evaluated & (q_modality == modality))
        metrics = retrieval_metrics(topk[rows], q_labels[rows], g_labels, ks=ks, n_relevant=n_relevant[rows])
        per_modality[modality] = {**metrics, "n_query": float(len(rows))}

    # Cross-modal check: the whole gallery (every dataset), own group still excluded.
    rows = np.flatnonzero(evaluated)
    where = {"level": level, "split": (gallery_split,)}
    anywhere, _ = _search_by_group(index, collection, qv[rows], q_groups[rows], k, positions, where)
    found = anywhere >= 0
    same = found & (g_modality[np.maximum(anywhere, 0)] == q_modality[rows, None])
    share = {"all": float(same.sum() / max(found.sum(), 1))}
    for modality in per_modality:
        mine = q_modality[rows] == modality
        share[modality] = float(same[mine].sum() / max(found[mine].sum(), 1))
    return IndexEvaluation(
        result=RetrievalResult(per_dataset=per_dataset, mean=mean),
        per_modality=per_modality,
        ann_recall=float(np.mean(recalls)) if recalls else float("nan"),
        same_modality_share=share,
        topk=topk,
        scores=scores,
    )


def evaluate_vectors_in_index(
    index_cfg: IndexConfig,
    table: pd.DataFrame,
    vectors: np.ndarray,
    k: int,
    label_column: str,
    version: str,
) -> IndexEvaluation:
    """Vectors evaluated through a throw-away collection `<prefix>_<version>` in `index_cfg.uri`.

    table [N rows]: dataset, modality, group, `label_column`, split ("query" | "gallery"; other rows are ignored),
    optionally item_id; vectors float32 [N,D] L2-normalised. The gallery rows are written at series level,
    the query rows search them (`evaluate_in_index`), and the collection is dropped afterwards.
    """
    table = table.reset_index(drop=True)
    n = len(table)
    facts = pd.DataFrame(
        {
            "item_id": table["item_id"].astype(str) if "item_id" in table else [f"row{i}" for i in range(n)],
            "series_hash": "",
            "group": table["group"].astype(str),
            "modality": table["modality"].astype(str),
            "dataset": table["dataset"].astype(str),
            "split": table["split"].astype(str),
            "label": table[label_column].astype(str),
            "kind": "image",
        }
    )
    facts[label_column] = table[label_column].astype(str)
    is_query, is_gallery = (facts["split"] == "query").to_numpy(), (facts["split"] == "gallery").to_numpy()
    index = MilvusIndex(index_cfg)
    name = index.collection_name(version)
    try:
        # a collection left by an interrupted run would mix its rows into this one
        if index.client.has_collection(name):
            index.client.drop_collection(name)
        index.ensure_collection(version, vectors.shape[1])
        index.write(index_table(facts[is_gallery], "series", version), vectors[is_gallery], collection=name)
        return evaluate_in_index(
            index, name, facts[is_query], vectors[is_query], facts[is_gallery], vectors[is_gallery], k, label_column
        )
    finally:
        with contextlib.suppress(Exception):  # the evaluation's own error matters more than a failed cleanup
            index.client.drop_collection(name)
        index.close()


def evaluate_benchmark(
    bench_path: Path,
    encoder: Encoder,
    cfg: EvaluateConfig,
    readout: ReadoutConfig,
    index_cfg: IndexConfig,
    read: ReadConfig,
    preprocess: PreprocessConfig,
) -> dict[str, IndexEvaluation]:
    """A labeled benchmark folder or MedMNIST npz (`load_benchmark`: ingested and preprocessed with `read` and
    `preprocess`, cached under `cfg.cache`) evaluated through the index at `index_cfg.uri` (pass a temporary Milvus
    Lite file).

    The benchmark stands for an index of its own: every model's readout whitening is fitted on its gallery items'
    frames, and an item's vector is the mean of its frames'. Keys: "encoder", and with `cfg.baselines` the floors of
    `benchmark_model_vectors` (random init under the same readout, raw pixels; plain and whitened). Relevance is the
    benchmark's label. `topk` rows follow the benchmark's query items in items order and index its gallery items in
    items order (`benchmark_grid_rows`).
    """
    bench = load_benchmark(Path(bench_path), read, preprocess, Path(cfg.cache))
    vectors = benchmark_model_vectors(encoder, bench, readout, cfg.baselines)
    return {
        name: evaluate_vectors_in_index(index_cfg, bench.items, v, cfg.k, BENCH_LABEL, collection_version(name))
        for name, v in vectors.items()
    }


def collection_version(model_name: str) -> str:
    """A throw-away collection name for an evaluated model ("raw pixels whitened" -> "eval_rawpixelswhitened")."""
    return "eval_" + re.sub(r"[^a-z0-9]", "", model_name.lower())


def benchmark_grid_rows(
    bench_path: Path, evaluation: IndexEvaluation, cfg: EvaluateConfig, read: ReadConfig, preprocess: PreprocessConfig
) -> list[GridRow]:
    """`cfg.grid_queries` queries per dataset of a benchmark evaluated by `evaluate_benchmark` (same path, cfg, read
    and preprocess, so the same items and cached frames), with their hits (each item's middle frame), for
    `retrieval_grid`."""
    bench = load_benchmark(Path(bench_path), read, preprocess, Path(cfg.cache))
    items = bench.items
    q_pos = np.flatnonzero(items["split"].to_numpy() == "query")
    g_pos = np.flatnonzero(items["split"].to_numpy() == "gallery")
    return grid_rows_from_rankings(
        items.iloc[q_pos],
        items.iloc[g_pos],
        evaluation.topk,
        evaluation.scores,
        lambda i: bench.preview(q_pos[i]),
        lambda j: bench.preview(g_pos[j]),
        per_dataset=cfg.grid_queries,
        label_column=BENCH_LABEL,
    )


def _table_metrics(mean: dict[str, float]) -> list[str]:
    """["P@1", "mAP@m", "R@m"], m = min(k, 10): the three numbers the tables and plots show."""
    m = next(key for key in mean if key.startswith("mAP@") and not key.endswith("_rel"))[len("mAP@") :]
    return ["P@1", f"mAP@{m}", f"R@{m}"]


def format_comparison(results: dict[str, IndexEvaluation]) -> str:
    """Markdown: per dataset, P@1 / mAP@10 / R@10 of every model side by side (results' order), the mean row, then
    each model's ANN recall and same-modality share of cross-dataset hits."""
    names = list(results)
    first = results[names[0]].result
    cols = _table_metrics(first.mean)
    head = " | ".join(f"{m} {name}" for name in names for m in cols)
    lines = [f"| dataset | queries / gallery | {head} |", "| --- | --- |" + " ---: |" * (len(names) * 3)]
    for dataset, counts in first.per_dataset.items():
        got = [results[name].result.per_dataset.get(dataset) for name in names]
        cells = [f"{row[m]:.3f}" if row else "-" for row in got for m in cols]
        lines.append(f"| {dataset} | {int(counts['n_query'])} / {int(counts['n_gallery'])} | {' | '.join(cells)} |")
    means = [f"**{results[name].result.mean[m]:.3f}**" for name in names for m in cols]
    lines.append(f"| **mean** | | {' | '.join(means)} |")
    lines.append("")
    recall = ", ".join(f"{name} {results[name].ann_recall:.3f}" for name in names)
    lines.append(f"ANN recall@k of the index against exact search: {recall}.")
    share = ", ".join(f"{name} {results[name].same_modality_share['all']:.3f}" for name in names)
    lines.append(f"Same-modality share of top-k hits over the whole gallery: {share}.")
    return "\n".join(lines)


def write_evaluation_outputs(
    results: dict[str, IndexEvaluation], out_dir: Path, grid_rows: list[GridRow] | None = None
) -> dict[str, float]:
    """Write `out_dir`/metrics.json (flat `<model>/<metric>`, spaces in model names as '_', for `dvc metrics`),
    per_dataset.csv (dataset, model, P@1, mAP@10, R@10 per row (@k for k < 10), datasets then "mean", for
    `dvc plots`) and, with `grid_rows`, retrieval_grid.png. Returns the flat metrics."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {}
    records = []
    cols = _table_metrics(next(iter(results.values())).result.mean)
    for name, evaluation in results.items():
        key = name.replace(" ", "_")
        metrics.update({f"{key}/{m}": v for m, v in evaluation.to_metrics().items()})
        rows = {**evaluation.result.per_dataset, "mean": evaluation.result.mean}
        records += [{"dataset": d, "model": name, **{m: rows[d][m] for m in cols}} for d in rows]
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    pd.DataFrame.from_records(records, columns=["dataset", "model", *cols]).to_csv(
        out_dir / "per_dataset.csv", index=False
    )
    per_dataset_chart(pd.DataFrame.from_records(records)).savefig(out_dir / PER_DATASET_PNG)
    if grid_rows:
        retrieval_grid(grid_rows, out_dir / GRID_FILE)
    return metrics
