import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from m3ret.config import EvaluateConfig, IndexConfig, ModelConfig, PreprocessConfig, ReadConfig, ReadoutConfig, replace
from m3ret.eval.benchmark import item_means, load_benchmark, raw_pixel_frames
from m3ret.eval.index_evaluation import (
    benchmark_grid_rows,
    evaluate_benchmark,
    evaluate_in_index,
    evaluate_vectors_in_index,
    format_comparison,
    write_evaluation_outputs,
)
from m3ret.eval.retrieval_metrics import evaluate_embeddings
from m3ret.index.milvus_index import MilvusIndex
from m3ret.index.rows import index_table
from m3ret.models.encoder import build_encoder

sys.path.insert(0, str(Path(__file__).parent))
from test_benchmark import _write_folder, _write_medmnist  # noqa: E402


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _synthetic(seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """3 datasets (2 modalities) x 2 labels, 12-d clusters. Every query has a near-copy of itself in its own group
    in the gallery, carrying the *other* label: if own-group exclusion failed, P@1 would collapse."""
    rng = np.random.default_rng(seed)
    rows, vecs = [], []
    for dataset, modality in [("d0", "mri"), ("d1", "mri"), ("d2", "xray")]:
        centres = rng.normal(size=(2, 12))
        for label in (0, 1):
            for i in range(10):
                vecs.append(centres[label] + 0.9 * rng.normal(size=12))
                rows.append((dataset, modality, f"{dataset}-g{label}-{i // 2}", f"c{label}", "gallery"))
            for i in range(4):
                q = centres[label] + 0.9 * rng.normal(size=12)
                group = f"{dataset}-q{label}-{i}"
                vecs += [q, q + 0.01 * rng.normal(size=12)]
                rows += [(dataset, modality, group, f"c{label}", "query")]
                rows += [(dataset, modality, group, f"c{1 - label}", "gallery")]
    table = pd.DataFrame(rows, columns=["dataset", "modality", "group", "label", "split"])
    return table, _unit(np.stack(vecs))


def _flat(tmp_path: Path) -> IndexConfig:
    return IndexConfig(uri=str(tmp_path / "eval.db"), index_type="FLAT")


def test_flat_index_matches_in_memory_protocol(tmp_path):
    table, vecs = _synthetic()
    got = evaluate_vectors_in_index(_flat(tmp_path), table, vecs, k=10, label_column="label", version="eval_t")
    want = evaluate_embeddings(vecs, table["label"], table["group"], table["split"], table["dataset"], k=10)

    assert set(got.result.per_dataset) == {"d0", "d1", "d2"}
    for name, metrics in want.per_dataset.items():
        assert got.result.per_dataset[name] == pytest.approx(metrics, abs=1e-9)
    assert got.result.mean == pytest.approx(want.mean, abs=1e-9)
    assert got.ann_recall == 1.0
    # the near-copies of the other label are the queries' nearest neighbours, yet never returned
    queries = table[table["split"] == "query"].reset_index(drop=True)
    gallery = table[table["split"] == "gallery"].reset_index(drop=True)
    assert (got.topk >= 0).all()
    assert not (gallery["group"].to_numpy()[got.topk] == queries["group"].to_numpy()[:, None]).any()
    assert got.result.mean["P@1"] > 0.6
    assert np.all(np.diff(got.scores, axis=1) <= 1e-6)  # best first

    # per modality: the mri queries of d0 and d1 pooled, each ranked in its own dataset
    assert set(got.per_modality) == {"mri", "xray"}
    assert got.per_modality["mri"]["n_query"] == 16
    mri = [want.per_dataset[d]["P@1"] for d in ("d0", "d1")]
    assert got.per_modality["mri"]["P@1"] == pytest.approx(np.mean(mri))
    assert got.per_modality["xray"]["mAP@10"] == pytest.approx(want.per_dataset["d2"]["mAP@10"])

    flat = got.to_metrics()
    assert flat["mAP@10"] == got.result.mean["mAP@10"] and flat["ann_recall"] == 1.0
    assert "dataset/d2/P@1" in flat and "modality/mri/R@10" in flat and "same_modality_share/all" in flat
    # the throw-away collection is gone
    index = MilvusIndex(_flat(tmp_path))
    try:
        assert index.collections() == []
    finally:
        index.close()


def test_hnsw_index_recall_is_reported(tmp_path):
    table, vecs = _synthetic(seed=1)
    cfg = replace(_flat(tmp_path), index_type="HNSW")
    got = evaluate_vectors_in_index(cfg, table, vecs, k=5, label_column="label", version="eval_h")
    assert 0.9 <= got.ann_recall <= 1.0
    assert set(got.result.mean) >= {"P@1", "P@5", "R@5", "mAP@5"}


def test_cross_modal_share_on_constructed_case(tmp_path):
    """Dataset A (modality a, 3 gallery items near e1), B (modality b, 5 near e2). With k=4 over the whole gallery,
    the A query sees 3 A + 1 B hits, the B query 4 B hits."""
    e1, e2 = np.eye(4)[0], np.eye(4)[1]
    rng = np.random.default_rng(0)
    gallery_vecs = _unit(np.stack([e1 + 0.05 * rng.normal(size=4) for _ in range(3)] + [e2 + 0.3 * e1] * 5))
    gallery_vecs[3:] = _unit(gallery_vecs[3:] + 0.05 * rng.normal(size=(5, 4)))
    gallery = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(8)],
            "dataset": ["A"] * 3 + ["B"] * 5,
            "modality": ["a"] * 3 + ["b"] * 5,
            "group": [f"g{i}" for i in range(8)],
            "label": "x",
            "split": "gallery",
            "series_hash": "",
            "kind": "image",
            "path": "",
        }
    )
    queries = pd.DataFrame(
        {"dataset": ["A", "B"], "modality": ["a", "b"], "group": ["qa", "qb"], "label": "x"},
    )
    query_vecs = _unit(np.stack([e1, e2]))
    index = MilvusIndex(_flat(tmp_path))
    try:
        name = index.ensure_collection("cross", 4)
        index.write(index_table(gallery, "series", "cross"), gallery_vecs, collection=name)
        got = evaluate_in_index(index, name, queries, query_vecs, gallery, gallery_vecs, k=4)
    finally:
        index.close()
    assert got.same_modality_share == pytest.approx({"a": 0.75, "b": 1.0, "all": 7 / 8})
    # within a dataset A has only 3 items: the 4th slot stays empty
    assert got.topk[0, 3] == -1 and got.result.per_dataset["A"]["P@1"] == 1.0


def test_medmnist_npz_test_split_queries_train_gallery(tmp_path):
    rng = np.random.default_rng(0)
    npz = tmp_path / "tinymnist.npz"
    _write_medmnist(npz, rng, (12, 12))
    bench = load_benchmark(npz, ReadConfig(), PreprocessConfig(size=16, workers=1), tmp_path / "cache")
    vecs = item_means(bench, raw_pixel_frames(bench))
    got = evaluate_vectors_in_index(_flat(tmp_path), bench.items, vecs, k=4, label_column="label", version="eval_mnist")
    assert got.result.per_dataset["tinymnist"]["n_query"] == 4
    assert got.result.per_dataset["tinymnist"]["n_gallery"] == 8  # val left out
    assert got.result.mean["P@1"] == 1.0


def test_evaluate_benchmark_end_to_end(tmp_path):
    root = tmp_path / "bench"
    _write_folder(root)
    encoder = build_encoder(ModelConfig(name="vit_tiny_patch16_224", img_size=32, patch_size=8))
    cfg = EvaluateConfig(k=5, cache=str(tmp_path / "cache"), grid_queries=1)
    index_cfg = IndexConfig(uri=str(tmp_path / "bench.db"))
    read, prep = ReadConfig(), PreprocessConfig(size=32, workers=1)
    with pytest.warns(UserWarning, match="corrupt.png"):
        results = evaluate_benchmark(root, encoder, cfg, ReadoutConfig(), index_cfg, read, prep)
    assert list(results) == ["encoder", "random init", "raw pixels", "random init unwhitened", "raw pixels whitened"]
    for evaluation in results.values():
        assert set(evaluation.result.per_dataset) == {"d1", "d2"}
        assert evaluation.result.per_dataset["d1"]["n_query"] == 2
    # stripes vs plain is trivially separable by raw pixels
    assert results["raw pixels"].result.mean["P@1"] == 1.0

    table = format_comparison(results)
    lines = table.splitlines()
    assert lines[0].startswith("| dataset | queries / gallery | P@1 encoder | mAP@5 encoder | R@5 encoder |")
    assert lines[2].startswith("| d1 | 2 / 4 |") and lines[4].startswith("| **mean** |")
    assert "ANN recall" in table

    with pytest.warns(UserWarning, match="corrupt.png"):
        rows = benchmark_grid_rows(root, results["encoder"], cfg, read, prep)
    # 1 query per dataset, 4 readable gallery images each
    assert [len(hits) for _, _, hits in rows] == [4, 4]
    out = tmp_path / "report"
    metrics = write_evaluation_outputs(results, out, grid_rows=rows)
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)
    assert metrics["raw_pixels/P@1"] == 1.0 and "random_init/dataset/d2/mAP@5" in metrics
    per_dataset = pd.read_csv(out / "per_dataset.csv")
    assert list(per_dataset.columns) == ["dataset", "model", "P@1", "mAP@5", "R@5"]
    assert len(per_dataset) == 15 and set(per_dataset["dataset"]) == {"d1", "d2", "mean"}
    with Image.open(out / "retrieval_grid.png") as img:
        assert img.format == "PNG" and img.width > img.height
