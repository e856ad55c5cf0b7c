from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from m3ret.data.errors import UnreadableInputError
from m3ret.eval.baselines import raw_pixel_embeddings
from m3ret.eval.benchmark_folder import evaluate_encoder, load_benchmark_folder

MEDBENCH = Path(__file__).resolve().parents[3] / "shared" / "data" / "medbench"
# README raw-pixel floor: dataset -> (P@1, mAP@10, R@10)
README_FLOOR = {
    "brain_tumor_mri_sartaj": (0.754, 0.742, 0.933),
    "busi_ultrasound": (0.418, 0.578, 0.954),
    "chest_xray_covid_talo": (0.659, 0.707, 0.995),
    "ebhi_seg_pathology": (0.345, 0.469, 0.898),
}


def _write_folder(root: Path) -> None:
    """Two datasets of striped/plain PNGs (grey, RGB, non-square) and one corrupt file."""
    rows = []
    rng = np.random.default_rng(0)
    for ds in ("d1", "d2"):
        (root / ds).mkdir(parents=True)
        for i in range(6):
            label = "stripes" if i % 2 else "plain"
            base = np.full((20, 10), 40 + 10 * i, dtype=np.uint8)
            if label == "stripes":
                base[::2] = 220
            pixels = base if ds == "d1" else np.dstack([base, base, rng.permutation(base)])
            img = Image.fromarray(pixels)
            img.save(root / ds / f"{i}.png")
            rows.append((ds, f"{ds}/{i}.png", label, f"{ds}-g{i}", "query" if i < 2 else "gallery", "xray"))
    (root / "d1" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    rows.append(("d1", "d1/corrupt.png", "plain", "d1-g9", "gallery", "xray"))
    pd.DataFrame(rows, columns=["dataset", "path", "label", "group_id", "role", "modality"]).to_csv(
        root / "manifest.csv", index=False
    )


def test_load_drops_corrupt_image_and_reuses_cache(tmp_path):
    root, cache = tmp_path / "bench", tmp_path / "cache"
    _write_folder(root)

    with pytest.warns(UserWarning, match=r"dropped 1 unreadable image\(s\)[\s\S]*corrupt\.png"):
        bench = load_benchmark_folder(root, size=16, workers=2, cache_dir=cache)

    assert bench.images.shape == (12, 16, 16, 3) and bench.images.dtype == np.uint8
    assert len(bench.table) == 12
    assert not bench.table["path"].str.endswith("corrupt.png").any()
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in bench.table["path"])
    first = bench.table.index[bench.table["path"].str.endswith("d1/1.png")][0]
    img = bench.images[first]
    # grey replicated to 3 channels; 20x10 letterboxed to 16x8 centred, columns 0-3 and 12-15 padded
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 0] == img[..., 2]).all()
    assert img[:, :4].sum() == 0 and img[:, 12:].sum() == 0 and img[:, 4:12].min() > 0
    assert len(list(cache.glob("*.npy"))) == 1

    # Change an image on disk: a cached load must not decode it again.
    Image.fromarray(np.zeros((20, 10), dtype=np.uint8)).save(root / "d1" / "1.png")
    with pytest.warns(UserWarning, match="corrupt.png"):
        again = load_benchmark_folder(root, size=16, workers=1, cache_dir=cache)
    np.testing.assert_array_equal(again.images, bench.images)
    pd.testing.assert_frame_equal(again.table, bench.table)

    # A different size is a different cache entry, decoded from the files as they are now.
    with pytest.warns(UserWarning, match="corrupt.png"):
        other = load_benchmark_folder(root, size=8, workers=1, cache_dir=cache)
    assert other.images.shape == (12, 8, 8, 3)
    assert other.images[first].max() == 0
    assert len(list(cache.glob("*.npy"))) == 2


def test_missing_manifest_columns_are_named(tmp_path):
    pd.DataFrame({"dataset": ["a"], "path": ["x.png"], "label": ["l"]}).to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(UnreadableInputError, match=r"manifest\.csv.*\['group_id', 'role'\]"):
        load_benchmark_folder(tmp_path, size=8)


def test_evaluate_encoder_on_tiny_folder(tmp_path):
    _write_folder(tmp_path)
    with pytest.warns(UserWarning, match="corrupt.png"):
        bench = load_benchmark_folder(tmp_path, size=16, workers=1)
    seen: list[int] = []

    def embed(batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        return raw_pixel_embeddings(batch, size=8)

    result = evaluate_encoder(embed, bench, batch_size=5)
    assert seen == [5, 5, 2]
    assert set(result.per_dataset) == {"d1", "d2"}
    # stripes vs plain is trivially separable by raw pixels
    assert result.mean["P@1"] == 1.0
    assert result.mean["mAP@10"] == 1.0


@pytest.fixture(scope="session")
def medbench_64(tmp_path_factory):
    if not (MEDBENCH / "manifest.csv").is_file():
        pytest.skip(f"medbench not found at {MEDBENCH}")
    return load_benchmark_folder(MEDBENCH, size=64, workers=2, cache_dir=tmp_path_factory.mktemp("medbench_cache"))


def test_raw_pixel_floor_on_letterboxed_medbench(medbench_64):
    assert medbench_64.images.shape[1:] == (64, 64, 3)
    assert len(medbench_64.table) == 7158
    result = evaluate_encoder(raw_pixel_embeddings, medbench_64)
    assert result.mean["mAP@10"] == pytest.approx(0.624, abs=0.01)
    for name, (p1, map10, r10) in README_FLOOR.items():
        got = result.per_dataset[name]
        # letterbox padding of non-square images moves the numbers a little (exact from files: test_baselines)
        assert got["P@1"] == pytest.approx(p1, abs=0.03)
        assert got["mAP@10"] == pytest.approx(map10, abs=0.03)
        assert got["R@10"] == pytest.approx(r10, abs=0.03)
