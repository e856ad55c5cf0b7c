"""A labeled benchmark on the pipeline's own path (ingest + preprocess, cached): items, frames, quarantine, vectors."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from m3ret.config import ModelConfig, PreprocessConfig, ReadConfig, ReadoutConfig
from m3ret.data.errors import UnreadableInputError
from m3ret.data.preprocess import item_frames
from m3ret.data.readers import read, read_item
from m3ret.eval import benchmark as benchmark_module
from m3ret.eval.baselines import raw_pixel_embeddings
from m3ret.eval.benchmark import (
    ITEM_COLUMNS,
    benchmark_evaluator,
    benchmark_model_vectors,
    benchmark_vectors,
    evaluate_encoder,
    evaluate_vectors,
    gallery_rows,
    item_means,
    load_benchmark,
    raw_pixel_frames,
)
from m3ret.models.encoder import build_encoder

MEDBENCH = Path(__file__).resolve().parents[3] / "shared" / "data" / "medbench"
READ = ReadConfig()


def _prep(size: int = 16, **kw) -> PreprocessConfig:
    return PreprocessConfig(size=size, workers=1, **kw)


def _write_folder(root: Path) -> None:
    """Two datasets of striped/plain images (d1 grey PNG, d2 RGB JPEG; 20x10, non-square), a corrupt file, and a row
    with a role that is neither query nor gallery. d1/2.png and d1/3.png share a group."""
    rows = []
    rng = np.random.default_rng(0)
    for ds in ("d1", "d2"):
        (root / ds).mkdir(parents=True)
        for i in range(6):
            label = "stripes" if i % 2 else "plain"
            base = np.full((20, 10), 40 + 10 * i, dtype=np.uint8)
            if label == "stripes":
                base[::2] = 220
            if ds == "d1":
                name = f"{i}.png"
                Image.fromarray(base).save(root / ds / name)
            else:
                name = f"{i}.jpg"
                pixels = np.dstack([base, base, rng.permutation(base)])
                Image.fromarray(pixels).save(root / ds / name, quality=95)
            group = f"{ds}-g{2 if ds == 'd1' and i == 3 else i}"
            rows.append((ds, f"{ds}/{name}", label, group, "query" if i < 2 else "gallery", "xray"))
    (root / "d1" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    rows.append(("d1", "d1/corrupt.png", "plain", "d1-g9", "gallery", "xray"))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "d1" / "unused.png")
    rows.append(("d1", "d1/unused.png", "plain", "d1-g10", "reference", "xray"))
    pd.DataFrame(rows, columns=["dataset", "path", "label", "group_id", "role", "modality"]).to_csv(
        root / "manifest.csv", index=False
    )


def _write_medmnist(path: Path, rng: np.random.Generator, shape: tuple[int, ...]) -> None:
    """Official layout; label 0 = vertical, 1 = horizontal bands (on the last two axes), so raw pixels separate them."""
    height, width = shape[-2:]
    across = np.broadcast_to(((np.arange(height) // 3) % 2)[:, None], (height, width))
    along = np.broadcast_to(((np.arange(width) // 3) % 2)[None, :], (height, width))
    arrays = {}
    for subset, n in (("train", 8), ("val", 3), ("test", 4)):
        labels = np.arange(n) % 2
        bands = np.where(labels[:, None, None] == 1, across, along)
        bands = np.broadcast_to(bands.reshape(n, *([1] * (len(shape) - 2)), height, width), (n, *shape))
        arrays[f"{subset}_images"] = (40 + 150 * bands + rng.integers(0, 30, size=(n, *shape))).astype(np.uint8)
        arrays[f"{subset}_labels"] = labels[:, None].astype(np.uint8)
    np.savez_compressed(path, **arrays)


def test_folder_items_frames_quarantine_and_cache_reuse(tmp_path, monkeypatch):
    root, cache = tmp_path / "bench", tmp_path / "cache"
    _write_folder(root)
    with pytest.warns(UserWarning, match=r"left out 2 quarantined benchmark file\(s\):") as caught:
        bench = load_benchmark(root, READ, _prep(), cache)
    message = str(caught[0].message)
    assert "corrupt.png: cannot decode the image" in message and "unused.png: manifest role 'reference'" in message

    items = bench.items
    assert list(items.columns) == list(ITEM_COLUMNS) and len(items) == 12
    assert items["split"].value_counts().to_dict() == {"gallery": 8, "query": 4}
    assert (
        set(items["dataset"]) == {"d1", "d2"} and set(items["modality"]) == {"xray"} and set(items["kind"]) == {"image"}
    )
    assert not items["path"].str.endswith(("corrupt.png", "unused.png")).any()
    # one frame per 2D image; groups: equal group_ids are one group, others are not (hashed consistently)
    assert len(bench.frame_ids) == 12 and sorted(bench.frame_item) == list(range(12))
    group_of = dict(zip(items["path"].map(lambda p: Path(p).relative_to(root).as_posix()), items["group"], strict=True))
    assert group_of["d1/2.png"] == group_of["d1/3.png"] and len(set(group_of.values())) == 11
    assert "d1-g2" not in group_of.values()
    # grey replicated to 3 channels; 20x10 letterboxed to 16x8 centred, columns 0-3 and 12-15 padded
    img = bench.preview(int(np.flatnonzero(items["path"].str.endswith("d1/1.png"))[0]))
    assert img.shape == (16, 16, 3) and (img[..., 0] == img[..., 1]).all() and (img[..., 0] == img[..., 2]).all()
    assert img[:, :4].sum() == 0 and img[:, 12:].sum() == 0 and img[:, 4:12].min() > 0
    assert len(list(cache.glob("benchmark-*"))) == 1
    first_frames = bench.frames()

    # A second load with the same key decodes nothing: change an image on disk, and forbid the stages.
    Image.fromarray(np.zeros((20, 10), dtype=np.uint8)).save(root / "d1" / "1.png")

    def forbidden(*args, **kwargs):
        raise AssertionError("a cached benchmark was decoded again")

    monkeypatch.setattr(benchmark_module, "ingest", forbidden)
    monkeypatch.setattr(benchmark_module, "preprocess", forbidden)
    with pytest.warns(UserWarning, match=r"recorded in the cache[\s\S]*corrupt\.png"):
        again = load_benchmark(root, READ, _prep(), cache)
    np.testing.assert_array_equal(again.frames(), first_frames)
    pd.testing.assert_frame_equal(again.items, items)
    monkeypatch.undo()

    # Another frame size is another cache entry, decoded from the files as they are now.
    with pytest.warns(UserWarning, match="corrupt.png"):
        other = load_benchmark(root, READ, _prep(size=8), cache)
    assert other.frames().shape == (12, 8, 8, 3)
    assert other.preview(int(np.flatnonzero(other.items["path"].str.endswith("d1/1.png"))[0])).max() == 0
    assert len(list(cache.glob("benchmark-*"))) == 2


def test_missing_manifest_columns_and_folder_without_manifest_are_named(tmp_path):
    pd.DataFrame({"dataset": ["a"], "path": ["x.png"], "label": ["l"]}).to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(UnreadableInputError, match=r"manifest\.csv.*\['group_id', 'role'\]"):
        load_benchmark(tmp_path, READ, _prep(), tmp_path / "cache")
    with pytest.raises(UnreadableInputError, match="no manifest.csv"):
        load_benchmark(tmp_path / "cache", READ, _prep(), tmp_path / "cache2")


def test_medmnist_npz_test_queries_train_gallery_val_unused_volumes_as_slices(tmp_path):
    rng = np.random.default_rng(0)
    flat, cube = tmp_path / "tinymnist.npz", tmp_path / "cubemnist3d.npz"
    _write_medmnist(flat, rng, (12, 12))
    _write_medmnist(cube, rng, (6, 10, 10))

    bench = load_benchmark(flat, READ, _prep(), tmp_path / "cache")
    items = bench.items
    assert len(items) == 12 and (items["dataset"] == "tinymnist").all()  # val (3) left out
    assert items["split"].value_counts().to_dict() == {"gallery": 8, "query": 4}
    assert items.loc[items["split"] == "query", "entry"].str.startswith("test:").all()
    assert items.loc[items["split"] == "gallery", "entry"].str.startswith("train:").all()
    assert items["group"].is_unique and len(bench.frame_ids) == 12  # every image its own group, one frame each
    assert bench.left_out.empty

    volumes = load_benchmark(cube, READ, _prep(slice_stride=2, drop_blank_slices=False), tmp_path / "cache")
    assert len(volumes.items) == 12 and set(volumes.items["kind"]) == {"volume"}
    assert np.bincount(volumes.frame_item).tolist() == [3] * 12  # 6 slices, every 2nd
    assert gallery_rows(volumes).sum() == 8 * 3


def test_vectors_are_the_pipeline_path_per_file(tmp_path):
    """A benchmark item's frames are exactly `read` + `item_frames` of its file (`read_item` for an npz entry), and its
    vector the renormalised mean of the encoder's vectors of those frames, whitening fitted on the gallery frames."""
    root = tmp_path / "bench"
    _write_folder(root)
    _write_medmnist(tmp_path / "cubemnist3d.npz", np.random.default_rng(1), (6, 10, 10))
    prep = _prep(size=32, drop_blank_slices=False)
    encoder = build_encoder(ModelConfig(name="vit_tiny_patch16_224", img_size=32, patch_size=8))
    with pytest.warns(UserWarning, match="corrupt.png"):
        folder = load_benchmark(root, READ, prep, tmp_path / "cache")
    volumes = load_benchmark(tmp_path / "cubemnist3d.npz", READ, prep, tmp_path / "cache")

    for bench in (folder, volumes):
        per_item = []
        for row in bench.items.itertuples():
            decoded = read_item("npz", [Path(row.path)], row.entry, READ) if row.entry else read(row.path, READ)
            frames, _records = item_frames(*decoded, prep)
            np.testing.assert_array_equal(bench.frames()[bench.frame_item == row.Index], frames)
            per_item.append(frames)
        for whiten in (False, True):
            readout = ReadoutConfig(pooling="mean+grid", whiten=whiten)
            model = build_encoder(encoder.cfg)
            model.load_state_dict(encoder.state_dict())
            model.set_readout(readout.pooling, readout.grid)
            pooled = [model.pooled(frames) for frames in per_item]
            if whiten:
                gallery = [p for p, split in zip(pooled, bench.items["split"], strict=True) if split == "gallery"]
                model.readout.fit(torch.cat(gallery), readout.whiten_dim, readout.whiten_shrinkage)
            expected = np.stack([F.normalize(model.readout.project(p).mean(0), dim=0).numpy() for p in pooled])
            np.testing.assert_allclose(benchmark_vectors(encoder, bench, readout), expected, atol=2e-5)


def test_model_vectors_and_evaluate_encoder_on_tiny_folder(tmp_path):
    _write_folder(tmp_path)
    with pytest.warns(UserWarning, match="corrupt.png"):
        bench = load_benchmark(tmp_path, READ, _prep(), tmp_path / "cache")
    seen: list[int] = []

    def embed(batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        return raw_pixel_embeddings(batch, size=8)

    result = evaluate_encoder(embed, bench, batch_size=5)
    assert seen == [5, 5, 2]
    assert set(result.per_dataset) == {"d1", "d2"}
    # stripes vs plain is trivially separable by raw pixels
    assert result.mean["P@1"] == 1.0 and result.mean["mAP@10"] == 1.0

    encoder = build_encoder(ModelConfig(name="vit_tiny_patch16_224", img_size=16, patch_size=8))
    vectors = benchmark_model_vectors(encoder, bench, ReadoutConfig())
    assert list(vectors) == ["encoder", "random init", "raw pixels", "random init unwhitened", "raw pixels whitened"]
    assert all(v.shape[0] == 12 for v in vectors.values())
    np.testing.assert_allclose(vectors["raw pixels"], item_means(bench, raw_pixel_frames(bench)), atol=1e-6)
    assert evaluate_vectors(vectors["raw pixels"], bench).mean["P@1"] == 1.0
    assert list(benchmark_model_vectors(encoder, bench, ReadoutConfig(), baselines=False)) == ["encoder"]
    # the pretraining loop's callback measures the same vector
    flat = benchmark_evaluator(bench, ReadoutConfig())(encoder)
    expected = evaluate_vectors(vectors["encoder"], bench)
    assert flat["mAP@10"] == pytest.approx(expected.mean["mAP@10"]) and "d2/P@1" in flat

    half = bench.subset(np.flatnonzero(bench.items["dataset"] == "d2"))
    assert len(half.items) == 6 and len(half.frame_ids) == 6 and set(half.frame_item) == set(range(6))
    np.testing.assert_array_equal(
        half.frames(), bench.frames()[bench.items["dataset"].to_numpy()[bench.frame_item] == "d2"]
    )


@pytest.fixture(scope="session")
def medbench_64(tmp_path_factory):
    if not (MEDBENCH / "manifest.csv").is_file():
        pytest.skip(f"medbench not found at {MEDBENCH}")
    with pytest.warns(UserWarning, match="duplicate content of"):
        return load_benchmark(MEDBENCH, READ, PreprocessConfig(size=64), tmp_path_factory.mktemp("medbench_cache"))


def test_raw_pixel_floor_on_medbench_frames(medbench_64):
    manifest = pd.read_csv(MEDBENCH / "manifest.csv", dtype=str, keep_default_na=False)
    # ingest keeps one item per content: the byte-identical copies (159 in medbench) are left out and reported
    copies = medbench_64.left_out["reason"].str.startswith("duplicate content of")
    assert copies.all() and len(medbench_64.items) + len(medbench_64.left_out) == len(manifest)
    result = evaluate_vectors(item_means(medbench_64, raw_pixel_frames(medbench_64)), medbench_64)
    # letterboxed frames, copies dropped: near the README floor (exact from the files: test_baselines)
    assert result.mean["mAP@10"] == pytest.approx(0.624, abs=0.015)
