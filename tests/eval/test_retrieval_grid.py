import numpy as np
import pandas as pd
from PIL import Image

from m3ret.eval.retrieval_grid import grid_rows_from_rankings, grid_size, retrieval_grid


def test_grid_png_size_and_borders(tmp_path):
    rng = np.random.default_rng(0)
    image = lambda h, w: rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)  # noqa: E731
    rows = [
        (image(40, 30), "query mri/d0\nglioma", [(image(20, 20), "0.91 mri/d0\nglioma", True), (image(64, 64), "x")]),
        (image(10, 50), "a very long caption that does not fit into one tile at all", [(image(8, 8), "n", False)]),
    ]
    out = retrieval_grid(rows, tmp_path / "sub" / "grid.png", tile=48)
    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.size == grid_size(2, 2, tile=48)
        pixels = np.asarray(img.convert("RGB"))
    # first hit of row 1 relevant (green border), first hit of row 2 irrelevant (red); second hit unknown (grey)
    w, h = grid_size(1, 0, tile=48)
    cell_w = 48 + 6
    x1 = w + 1  # first hit column's left border
    y2 = h - 6 + 6 + 1
    assert tuple(pixels[7, x1]) == (40, 170, 60)
    assert tuple(pixels[y2, x1]) == (210, 50, 40)
    assert tuple(pixels[7, x1 + cell_w + 6]) == (150, 150, 150)


def test_grid_rows_from_rankings():
    queries = pd.DataFrame({"dataset": ["a", "a", "b"], "modality": ["mri"] * 2 + ["xray"], "label": ["x", "y", "x"]})
    gallery = pd.DataFrame({"dataset": ["a", "a", "b"], "modality": ["mri"] * 2 + ["xray"], "label": ["x", "y", "y"]})
    topk = np.array([[0, 1], [1, -1], [2, -1]])
    scores = np.array([[0.9, 0.5], [0.8, np.nan], [0.7, np.nan]], dtype=np.float32)
    img = np.zeros((4, 4, 3), np.uint8)
    rows = grid_rows_from_rankings(
        queries, gallery, topk, scores, lambda i: img + i, lambda j: img + 10 * j, per_dataset=1
    )
    assert [caption for _, caption, _ in rows] == ["query mri/a\nx", "query xray/b\nx"]
    assert [[h[2] for h in hits] for _, _, hits in rows] == [[True, False], [False]]
    assert rows[1][2][0][1] == "0.700 xray/b\ny" and rows[1][2][0][0].max() == 20
