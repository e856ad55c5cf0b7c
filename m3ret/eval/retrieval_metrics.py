"""In-memory image-to-image retrieval metrics under the medbench protocol.

Protocol (shared/data/medbench/README.md): per dataset, rank that dataset's gallery for each query by cosine
similarity after dropping the gallery items of the query's own `group_id` (they count neither as hit nor as miss);
a retrieved item is relevant when it has the query's label. Reported per dataset, then averaged over datasets.

Metrics of one query with relevance vector rel_1..rel_K over its ranked top K:
- P@K  = (1/K) sum_{k<=K} rel_k, averaged over queries.
- R@K  = 1 if any rel_k = 1 for k <= K (hit rate, not recall), averaged over queries.
- AP@10 = sum_{k<=10} P@k rel_k / sum_{k<=10} rel_k, and 0 when the top 10 holds no relevant item; mAP@10 is its mean.
  Normalising by the hits inside the top 10 (not by min(10, relevant items in the gallery)) is the definition that
  reproduces the README raw-pixel table exactly (all four datasets to 3 decimals); the min(10, n_relevant)
  variant gives a mean of 0.391 instead of 0.624. It is reported as "mAP@10_rel" when `n_relevant` is given.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

# Float32 similarity entries per chunk: 2**24 entries = 64 MiB whatever the gallery size.
_CHUNK_ENTRIES = 2**24
_TABLE_METRICS = ("P@1", "mAP@10", "R@10")


@dataclass
class RetrievalResult:
    """`per_dataset[name]` holds the metrics plus "n_query"/"n_gallery"; `mean` is the unweighted mean of the
    metrics over datasets (every dataset weighs the same, as in the README)."""

    per_dataset: dict[str, dict[str, float]]
    mean: dict[str, float]


def rank_gallery(
    query_emb: np.ndarray,
    gallery_emb: np.ndarray,
    query_groups: np.ndarray,
    gallery_groups: np.ndarray,
    k: int,
    *,
    chunk_size: int | None = None,
) -> np.ndarray:
    """Top-k gallery indices per query by descending cosine, own-group gallery items excluded.

    query_emb [Q,D] and gallery_emb [G,D] are L2-normalised (cosine = dot product); query_groups [Q] and
    gallery_groups [G] are group ids of any comparable type. Own-group similarities are set to -inf before the
    top-k, so they never appear; a slot with no eligible item left (fewer than k candidates) holds -1.
    Ties are broken by the lower gallery index. Queries are processed `chunk_size` at a time (default: enough
    rows for a 64 MiB similarity block) so memory stays bounded for large galleries.
    Returns int64 [Q,k].
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q = np.ascontiguousarray(query_emb, dtype=np.float32)
    g = np.ascontiguousarray(gallery_emb, dtype=np.float32)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"embeddings must be [Q,D] and [G,D], got {q.shape} and {g.shape}")
    if len(query_groups) != len(q) or len(gallery_groups) != len(g):
        raise ValueError("one group id per embedding is required")
    n_q, n_g = len(q), len(g)
    out = np.full((n_q, k), -1, dtype=np.int64)
    if n_q == 0 or n_g == 0:
        return out
    # Integer codes shared by both sides turn the own-group mask into one cheap integer comparison.
    codes, _ = pd.factorize(pd.Series(np.concatenate([np.asarray(query_groups), np.asarray(gallery_groups)])))
    q_codes, g_codes = codes[:n_q], codes[n_q:]
    k_eff = min(k, n_g)
    step = chunk_size if chunk_size is not None else max(1, _CHUNK_ENTRIES // n_g)
    for start in range(0, n_q, step):
        stop = min(start + step, n_q)
        sim = q[start:stop] @ g.T
        sim[q_codes[start:stop, None] == g_codes[None, :]] = -np.inf
        if k_eff < n_g:
            idx = np.argpartition(-sim, k_eff - 1, axis=1)[:, :k_eff]
        else:
            idx = np.broadcast_to(np.arange(n_g), sim.shape)
        score = np.take_along_axis(sim, idx, axis=1)
        order = np.lexsort((idx, -score), axis=1)
        idx = np.take_along_axis(idx, order, axis=1)
        score = np.take_along_axis(score, order, axis=1)
        out[start:stop, :k_eff] = np.where(np.isneginf(score), -1, idx)
    return out


def retrieval_metrics(
    topk: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    n_relevant: np.ndarray | None = None,
) -> dict[str, float]:
    """P@K and R@K (hit rate) for K in `ks`, and mAP@10 (module docstring) for one query set.

    topk [Q,K'] gallery indices from `rank_gallery` (-1 = empty slot, never relevant); query_labels [Q];
    gallery_labels [G]. Every K in ks must be <= K'; mAP uses the first min(10, K') ranks (key "mAP@{that}").
    n_relevant [Q]: relevant gallery items per query after own-group exclusion; when given, also reports
    "mAP@10_rel", AP normalised by min(10, n_relevant) (which also penalises relevant items missed by the top 10).
    """
    topk = np.asarray(topk)
    if topk.ndim != 2 or len(topk) == 0:
        raise ValueError(f"topk must be a non-empty [Q,K] array, got shape {topk.shape}")
    bad = [kk for kk in ks if kk > topk.shape[1] or kk < 1]
    if bad:
        raise ValueError(f"ks {bad} outside 1..{topk.shape[1]} (columns of topk)")
    query_labels = np.asarray(query_labels)
    gallery_labels = np.asarray(gallery_labels)
    valid = topk >= 0
    rel = valid & (gallery_labels[np.where(valid, topk, 0)] == query_labels[:, None])

    out: dict[str, float] = {}
    for kk in ks:
        out[f"P@{kk}"] = float(rel[:, :kk].mean())
    for kk in ks:
        out[f"R@{kk}"] = float(rel[:, :kk].any(axis=1).mean())

    m = min(10, topk.shape[1])
    r = rel[:, :m]
    precision_at = np.cumsum(r, axis=1) / np.arange(1, m + 1)
    ap_sum = (precision_at * r).sum(axis=1)
    hits = r.sum(axis=1)
    out[f"mAP@{m}"] = float(np.divide(ap_sum, hits, out=np.zeros_like(ap_sum), where=hits > 0).mean())
    if n_relevant is not None:
        denom = np.minimum(m, np.asarray(n_relevant))
        ap_rel = np.divide(ap_sum, denom, out=np.zeros_like(ap_sum), where=denom > 0)
        out[f"mAP@{m}_rel"] = float(ap_rel.mean())
    return out


def count_relevant(
    q_labels: np.ndarray, q_groups: np.ndarray, g_labels: np.ndarray, g_groups: np.ndarray
) -> np.ndarray:
    """[Q] gallery items sharing the query's label, minus those of the query's own group (they are dropped)."""
    per_label = pd.Series(g_labels).value_counts()
    per_label_group = pd.Series(1, index=pd.MultiIndex.from_arrays([g_labels, g_groups])).groupby(level=[0, 1]).sum()
    same_label = per_label.reindex(q_labels).fillna(0).to_numpy()
    own_group = per_label_group.reindex(pd.MultiIndex.from_arrays([q_labels, q_groups])).fillna(0).to_numpy()
    return (same_label - own_group).astype(np.int64)


def report_ks(k: int) -> tuple[int, ...]:
    """The cut-offs reported for a top-k ranking: 1, 5, 10 where they fit in k, and min(k, 10) for mAP."""
    return tuple(sorted({kk for kk in (1, 5, 10) if kk <= k} | {min(k, 10)}))


def mean_over_datasets(per_dataset: dict[str, dict[str, float]]) -> dict[str, float]:
    """Unweighted mean of each metric over datasets (counts, keys "n_*", are not averaged)."""
    metric_keys = [key for key in next(iter(per_dataset.values())) if not key.startswith("n_")]
    return {key: float(np.mean([m[key] for m in per_dataset.values()])) for key in metric_keys}


def evaluate_embeddings(
    emb: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    roles: np.ndarray,
    datasets: np.ndarray,
    k: int = 10,
) -> RetrievalResult:
    """Medbench protocol over one embedding table.

    emb [N,D] L2-normalised; labels, groups, roles ("query"/"gallery"), datasets: [N] each. Per dataset, its
    queries rank its own gallery (`rank_gallery`, top k), then `retrieval_metrics` with ks = (1, 5, 10) capped at k.
    A dataset without queries or without gallery is skipped with a warning.
    """
    emb = np.asarray(emb)
    labels, groups, roles, datasets = (np.asarray(a) for a in (labels, groups, roles, datasets))
    if not all(len(a) == len(emb) for a in (labels, groups, roles, datasets)):
        raise ValueError("emb, labels, groups, roles and datasets must have the same length")
    unknown = sorted(set(roles.tolist()) - {"query", "gallery"})
    if unknown:
        raise ValueError(f"roles must be 'query' or 'gallery', got {unknown}")
    ks = report_ks(k)
    per_dataset: dict[str, dict[str, float]] = {}
    for name in sorted(set(datasets.tolist())):
        qm = (datasets == name) & (roles == "query")
        gm = (datasets == name) & (roles == "gallery")
        if not qm.any() or not gm.any():
            warnings.warn(f"dataset {name!r} skipped: {qm.sum()} queries, {gm.sum()} gallery items", stacklevel=2)
            continue
        topk = rank_gallery(emb[qm], emb[gm], groups[qm], groups[gm], k)
        n_rel = count_relevant(labels[qm], groups[qm], labels[gm], groups[gm])
        metrics = retrieval_metrics(topk, labels[qm], labels[gm], ks=ks, n_relevant=n_rel)
        per_dataset[name] = {**metrics, "n_query": float(qm.sum()), "n_gallery": float(gm.sum())}
    if not per_dataset:
        raise ValueError("no dataset has both queries and gallery items")
    mean = mean_over_datasets(per_dataset)
    return RetrievalResult(per_dataset=per_dataset, mean=mean)


def format_table(result: RetrievalResult, title: str = "") -> str:
    """Markdown table: one row per dataset (queries / gallery, P@1, mAP@10, R@10), then the mean row."""
    cols = [c for c in _TABLE_METRICS if c in result.mean]
    lines = [f"### {title}", ""] if title else []
    lines.append("| dataset | queries / gallery | " + " | ".join(cols) + " |")
    lines.append("| --- | --- | " + " | ".join("---" for _ in cols) + " |")
    for name, m in result.per_dataset.items():
        counts = f"{int(m['n_query'])} / {int(m['n_gallery'])}"
        lines.append(f"| {name} | {counts} | " + " | ".join(f"{m[c]:.3f}" for c in cols) + " |")
    n_q = sum(int(m["n_query"]) for m in result.per_dataset.values())
    n_g = sum(int(m["n_gallery"]) for m in result.per_dataset.values())
    lines.append(f"| **mean** | {n_q} / {n_g} | " + " | ".join(f"{result.mean[c]:.3f}" for c in cols) + " |")
    return "\n".join(lines)
