from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from m3ret.eval.baselines import raw_pixel_embeddings, raw_pixel_embeddings_from_files
from m3ret.eval.retrieval_metrics import evaluate_embeddings

MEDBENCH = Path(__file__).resolve().parents[3] / "shared" / "data" / "medbench"


def test_raw_pixels_are_centred_unit_vectors_invariant_to_brightness_and_contrast():
    rng = np.random.default_rng(0)
    images = rng.integers(20, 120, size=(4, 48, 40, 3), dtype=np.uint8)
    emb = raw_pixel_embeddings(images, size=16)
    assert emb.shape == (4, 256) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb.mean(axis=1), 0.0, atol=1e-6)

    grey = np.repeat(images[..., :1], 3, axis=3)
    brighter_and_stronger = np.repeat((images[..., :1].astype(np.int32) * 2 + 5).astype(np.uint8), 3, axis=3)
    np.testing.assert_allclose(
        raw_pixel_embeddings(grey, size=16), raw_pixel_embeddings(brighter_and_stronger, size=16), atol=0.02
    )


def test_flat_image_gives_zero_vector_not_nan():
    emb = raw_pixel_embeddings(np.full((1, 8, 8, 3), 90, dtype=np.uint8), size=4)
    assert np.isfinite(emb).all() and not emb.any()


def test_grayscale_is_pil_luma():
    rgb = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    rgb[0, 0, 0] = (255, 0, 0)
    rgb[0, 1, 1] = (0, 0, 255)
    expected = np.array([76.0, 0.0, 0.0, 29.0])  # 0.299 * 255, 0.114 * 255
    expected -= expected.mean()
    np.testing.assert_allclose(raw_pixel_embeddings(rgb, size=2)[0], expected / np.linalg.norm(expected), atol=1e-6)


def test_from_files_matches_in_memory(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(paths[-1])
    np.testing.assert_allclose(raw_pixel_embeddings_from_files(paths), raw_pixel_embeddings(images), atol=1e-6)


@pytest.mark.parametrize(
    "dataset, expected",
    [("busi_ultrasound", (0.418, 0.578, 0.954)), ("chest_xray_covid_talo", (0.659, 0.707, 0.995))],
)
def test_readme_floor_reproduced_exactly_from_files(dataset, expected):
    if not (MEDBENCH / "manifest.csv").is_file():
        pytest.skip(f"medbench not found at {MEDBENCH}")
    table = pd.read_csv(MEDBENCH / "manifest.csv", dtype=str, keep_default_na=False)
    table = table[table["dataset"] == dataset]
    emb = raw_pixel_embeddings_from_files([MEDBENCH / p for p in table["path"]])
    result = evaluate_embeddings(
        emb, table["label"].to_numpy(), table["group_id"].to_numpy(), table["role"].to_numpy(), table["dataset"]
    )
    got = result.per_dataset[dataset]
    assert (got["P@1"], got["mAP@10"], got["R@10"]) == pytest.approx(expected, abs=0.0015)
