"""The embed stage: frame vectors equal the encoder's, item vectors are renormalised means, reruns do nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from m3ret.config import EmbedConfig, ModelConfig, PreprocessConfig, ReadConfig, ReadoutConfig, to_dict
from m3ret.data.frame_store import FRAME_COLUMNS, ShardWriter, write_frames_table
from m3ret.index.rows import embedding_rows
from m3ret.index.schema import row_id
from m3ret.models.embedding_set import EMBED_INFO, EmbeddingSet
from m3ret.models.encoder import build_encoder, load_encoder
from m3ret.models.frame_vectors import item_vectors
from m3ret.models.model_version import model_version
from m3ret.stages.embed import embed_store
from m3ret.train.checkpoint import save_encoder

SIZE = 32
ITEMS = {"a": 3, "b": 1, "c": 2}  # item -> frames


@pytest.fixture()
def pipeline(tmp_path):
    rng = np.random.default_rng(0)
    n = sum(ITEMS.values())
    frames = rng.integers(0, 256, size=(n, SIZE, SIZE, 3), dtype=np.uint8)
    writer = ShardWriter(tmp_path / "frames", size=SIZE, shard_frames=4)
    locations = writer.append(frames)
    writer.close()
    table = pd.DataFrame(
        {
            "frame_id": np.arange(n),
            "item_id": [item for item, count in ITEMS.items() for _ in range(count)],
            "plane": "",
            "volume_index": 0,
            "frame_index": [i for count in ITEMS.values() for i in range(count)],
            "timestamp": np.nan,
            "shard": [s for s, _ in locations],
            "row": [r for _, r in locations],
        }
    )[list(FRAME_COLUMNS)]
    write_frames_table(tmp_path / "frames", table, SIZE)
    manifest = pd.DataFrame(
        {
            "item_id": list(ITEMS),
            "dataset": "demo",
            "modality": ["ct", "mri", "video"],
            "kind": ["volume", "image", "video"],
            "label": "",
            "path": [f"src/{i}" for i in ITEMS],
            "series_hash": ["sa", "sb", "sc"],
        }
    )
    splits = pd.DataFrame(
        {"item_id": list(ITEMS), "group": ["g1", "g2", "g3"], "split": ["gallery", "query", "pretrain"]}
    )
    torch.manual_seed(0)
    encoder = build_encoder(ModelConfig(name="vit_tiny_patch16_224", img_size=SIZE, patch_size=8))
    save_encoder(tmp_path / "encoder.pt", encoder, to_dict(encoder.cfg))
    cfg = EmbedConfig(
        encoder=str(tmp_path / "encoder.pt"),
        model=str(tmp_path / "retrieval.pt"),
        out=str(tmp_path / "emb"),
        batch_size=4,
        workers=0,
    )
    return cfg, tmp_path / "frames", manifest, splits, frames


PLAIN = ReadoutConfig(whiten=False)


def test_vectors_match_the_encoder_and_items_are_renormalised_means(pipeline):
    cfg, frames_dir, manifest, splits, frames = pipeline
    summary = embed_store(cfg, PLAIN, frames_dir, manifest, splits, PreprocessConfig(size=SIZE), ReadConfig())
    emb = EmbeddingSet.load(cfg.out)
    expected = load_encoder(cfg.encoder).embed(frames).numpy()
    np.testing.assert_allclose(load_encoder(cfg.model).embed(frames).numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(emb.frame_vectors, expected, atol=1e-5)
    assert summary["frames"] == 6 and summary["items"] == 3 and summary["dim"] == 192
    assert list(emb.items.item_id) == ["a", "b", "c"]
    mean_a = expected[:3].mean(axis=0)
    np.testing.assert_allclose(emb.item_vectors[0], mean_a / np.linalg.norm(mean_a), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb.item_vectors, axis=1), 1.0, atol=1e-5)
    assert list(emb.frames.split) == ["gallery"] * 3 + ["query"] + ["pretrain"] * 2
    rows, vectors = embedding_rows(emb)
    assert len(rows) == len(vectors) == 9 and rows["id"].is_unique
    assert rows.loc[rows.level == "series", "frame_index"].eq(-1).all()
    assert rows["id"].iloc[1] == row_id("frame", "a", "", 0, 1)
    assert set(rows.columns) >= {"group_id", "model_version"}
    assert not {"header", "source_path", "path"} & set(rows.columns)


def test_rerun_with_unchanged_model_and_frames_does_nothing(pipeline):
    cfg, frames_dir, manifest, splits, _frames = pipeline
    prep, read = PreprocessConfig(size=SIZE), ReadConfig()
    first = embed_store(cfg, PLAIN, frames_dir, manifest, splits, prep, read)
    vectors_file = f"{cfg.out}/frame_vectors.npy"
    mtime = os.stat(vectors_file).st_mtime_ns
    assert embed_store(cfg, PLAIN, frames_dir, manifest, splits, prep, read) == first
    assert first == json.loads((Path(cfg.out) / EMBED_INFO).read_text())
    assert os.stat(vectors_file).st_mtime_ns == mtime
    # another preprocessing of the same checkpoint is another model version: everything is embedded again
    assert model_version(cfg.model, PreprocessConfig(size=64), read) != first["model_version"]
    assert model_version(cfg.model, PreprocessConfig(size=SIZE, workers=7), read) == first["model_version"]
    # another readout is another retrieval model and another version
    grid = embed_store(cfg, ReadoutConfig(pooling="mean+grid", whiten=False), frames_dir, manifest, splits, prep, read)
    assert grid["model_version"] != first["model_version"] and grid["dim"] == 192 * 5


def test_whitening_is_fitted_on_fit_splits_only_and_queries_share_it(pipeline):
    cfg, frames_dir, manifest, splits, frames = pipeline
    readout = ReadoutConfig(pooling="mean", whiten=True, whiten_shrinkage=0.5, fit_splits=("gallery", "pretrain"))
    summary = embed_store(cfg, readout, frames_dir, manifest, splits, PreprocessConfig(size=SIZE), ReadConfig())
    emb = EmbeddingSet.load(cfg.out)
    model = load_encoder(cfg.model)
    assert model.readout.whitened and summary["dim"] == 192
    # the whitening mean is the mean pooled vector of the gallery + pretrain frames (rows 0-2 and 4-5), not the query
    pooled = load_encoder(cfg.encoder).pooled(frames)
    fit = pooled[[0, 1, 2, 4, 5]]
    np.testing.assert_allclose(model.readout.whiten_mean.numpy(), fit.mean(0).numpy(), atol=1e-5)
    # a query embedded with the retrieval model lands exactly on its stored vector
    np.testing.assert_allclose(model.embed(frames[3:4]).numpy()[0], emb.frame_vectors[3], atol=1e-5)
    # whitened vectors decorrelate the fitted frames: their Gram off-diagonal shrinks relative to the plain ones
    plain = torch.nn.functional.normalize(fit, dim=-1)
    off = ~np.eye(5, dtype=bool)
    white = torch.from_numpy(emb.frame_vectors[[0, 1, 2, 4, 5]])
    assert (white @ white.T).numpy()[off].mean() < (plain @ plain.T).numpy()[off].mean()


def test_whitening_without_enough_fit_frames_is_a_clear_error(pipeline):
    cfg, frames_dir, manifest, splits, _frames = pipeline
    only_query_groups = splits.assign(split=["query", "query", "query"])
    with pytest.raises(ValueError, match="fewer than 2 frames in readout.fit_splits"):
        embed_store(
            cfg, ReadoutConfig(), frames_dir, manifest, only_query_groups, PreprocessConfig(size=SIZE), ReadConfig()
        )


def test_item_vectors_group_by_item_in_first_seen_order():
    frames = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0], [1.0, 1.0]], dtype=np.float32)
    ids, vecs = item_vectors(frames, np.array(["y", "x", "y", "x"]))
    assert list(ids) == ["y", "x"]
    np.testing.assert_allclose(vecs[0], np.array([4.0, 4.0]) / np.hypot(4, 4), atol=1e-6)
    np.testing.assert_allclose(vecs[1], np.array([1.0, 2.0]) / np.hypot(1, 2), atol=1e-6)
