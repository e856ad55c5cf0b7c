"""A picture of retrieval results: one row per query, the query image then its hits, each with a caption.

A hit's border is green when it is relevant, red when it is not, grey when relevance is unknown (a live search).
PIL only, so the picture can be made wherever the library runs (CLI, evaluate stage, service).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

# A hit: (image uint8 [H,W,3], caption) or (image, caption, relevant: bool | None).
Hit = tuple[np.ndarray, str] | tuple[np.ndarray, str, bool | None]
# A row: (query image uint8 [H,W,3], query caption, hits best first).
GridRow = tuple[np.ndarray, str, list[Hit]]

BORDER = 3
PAD = 6
# a gap after the query column separates it from its hits
QUERY_GAP = 12
CAPTION_LINES = 2
FONT_SIZE = 11
LINE_HEIGHT = 13
_COLOURS = {True: (40, 170, 60), False: (210, 50, 40), None: (150, 150, 150)}
_QUERY_COLOUR = (40, 90, 200)


def _fit(text: str, font: ImageFont.ImageFont, width: int) -> str:
    """`text` cut (with an ellipsis) to at most `width` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _cell(
    image: np.ndarray, caption: str, colour: tuple[int, int, int], tile: int, font: ImageFont.ImageFont
) -> Image.Image:
    """One image letterboxed into a tile x tile square with a coloured border, its caption (2 lines) below."""
    height = tile + 2 * BORDER + CAPTION_LINES * LINE_HEIGHT + 2
    cell = Image.new("RGB", (tile + 2 * BORDER, height), "white")
    cell.paste(Image.new("RGB", (tile + 2 * BORDER, tile + 2 * BORDER), colour), (0, 0))
    picture = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    picture.thumbnail((tile, tile), Image.Resampling.BILINEAR)
    square = Image.new("RGB", (tile, tile), "black")
    square.paste(picture, ((tile - picture.width) // 2, (tile - picture.height) // 2))
    cell.paste(square, (BORDER, BORDER))
    draw = ImageDraw.Draw(cell)
    for i, line in enumerate(caption.splitlines()[:CAPTION_LINES]):
        draw.text((1, tile + 2 * BORDER + 1 + i * LINE_HEIGHT), _fit(line, font, tile + 2 * BORDER - 2), "black", font)
    return cell


def grid_size(n_rows: int, n_hits: int, tile: int = 96) -> tuple[int, int]:
    """(width, height) in pixels of a grid of `n_rows` queries with at most `n_hits` hits each."""
    cell_w = tile + 2 * BORDER
    cell_h = tile + 2 * BORDER + CAPTION_LINES * LINE_HEIGHT + 2
    return PAD + (1 + n_hits) * (cell_w + PAD) + QUERY_GAP, PAD + n_rows * (cell_h + PAD)


def retrieval_grid(rows: list[GridRow], out: Path, tile: int = 96) -> Path:
    """Draw `rows` (query image, caption, hits) into a PNG at `out` and return the path.

    Images are uint8 [H,W,3] of any size (each is fitted into a tile x tile square); captions may hold two lines
    ("\\n"), cut to the tile width. Size: `grid_size(len(rows), max hits per row, tile)`.
    """
    if not rows:
        raise ValueError("retrieval_grid needs at least one query row")
    font = ImageFont.load_default(FONT_SIZE)
    n_hits = max(len(hits) for _, _, hits in rows)
    canvas = Image.new("RGB", grid_size(len(rows), n_hits, tile), "white")
    cell_w, cell_h = tile + 2 * BORDER, tile + 2 * BORDER + CAPTION_LINES * LINE_HEIGHT + 2
    for r, (query, caption, hits) in enumerate(rows):
        y = PAD + r * (cell_h + PAD)
        canvas.paste(_cell(query, caption, _QUERY_COLOUR, tile, font), (PAD, y))
        for h, hit in enumerate(hits):
            relevant = hit[2] if len(hit) > 2 else None
            x = PAD + (1 + h) * (cell_w + PAD) + QUERY_GAP
            canvas.paste(_cell(hit[0], hit[1], _COLOURS[relevant], tile, font), (x, y))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")
    return out


def grid_rows_from_rankings(
    queries: pd.DataFrame,
    gallery: pd.DataFrame,
    topk: np.ndarray,
    scores: np.ndarray,
    query_image: Callable[[int], np.ndarray],
    gallery_image: Callable[[int], np.ndarray],
    per_dataset: int = 3,
    label_column: str = "label",
    n_hits: int = 5,
) -> list[GridRow]:
    """Rows for `retrieval_grid` from evaluated rankings: the first `per_dataset` queries of each dataset.

    queries/gallery: tables with dataset, modality, `label_column`; topk int [Q,K] gallery positions (-1 = empty) and
    scores [Q,K] as `IndexEvaluation` holds them; query_image(i) / gallery_image(j): uint8 [H,W,3] of query row i /
    gallery row j. A hit is relevant when its label equals the query's.
    """
    q = queries.reset_index(drop=True)
    g = gallery.reset_index(drop=True)
    rows: list[GridRow] = []
    for _, positions in q.groupby("dataset", sort=True).indices.items():
        for i in positions[:per_dataset]:
            label = str(q.at[i, label_column])
            hits: list[Hit] = []
            for j, score in zip(topk[i, :n_hits], scores[i, :n_hits], strict=True):
                if j < 0:
                    continue
                hit_label = str(g.at[j, label_column])
                caption = f"{score:.3f} {g.at[j, 'modality']}/{g.at[j, 'dataset']}\n{hit_label}"
                hits.append((gallery_image(int(j)), caption, hit_label == label))
            rows.append((query_image(int(i)), f"query {q.at[i, 'modality']}/{q.at[i, 'dataset']}\n{label}", hits))
    return rows
