"""The explanation map: a bright square planted in both the query and the hit (at different places, on different
noise) is where the map over the hit peaks, and the overlay is a PNG of the asked size."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from m3ret.config import ModelConfig
from m3ret.models.encoder import build_encoder
from m3ret.models.explain import overlay_png, patch_tokens, similarity_map

SIZE, PATCH, SQUARE = 64, 8, 16


def _noise_with_square(seed: int, top: int, left: int) -> np.ndarray:
    grey = (np.random.default_rng(seed).random((SIZE, SIZE)) * 60 + 40).astype(np.uint8)
    grey[top : top + SQUARE, left : left + SQUARE] = 250
    return np.repeat(grey[..., None], 3, axis=-1)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_map_peaks_where_the_shared_square_is(seed: int) -> None:
    torch.manual_seed(seed)
    encoder = build_encoder(ModelConfig(name="vit_tiny_patch16_224", img_size=SIZE, patch_size=PATCH))
    query, hit = _noise_with_square(10 + seed, 8, 8), _noise_with_square(20 + seed, 40, 32)
    tokens = patch_tokens(encoder, np.stack([query, hit]))
    assert tokens.shape[:3] == (2, SIZE // PATCH, SIZE // PATCH)
    assert np.allclose(np.linalg.norm(tokens, axis=-1), 1.0, atol=1e-5)
    heat = similarity_map(tokens[0], tokens[1])
    square = np.zeros_like(heat, dtype=bool)
    square[40 // PATCH : (40 + SQUARE) // PATCH, 32 // PATCH : (32 + SQUARE) // PATCH] = True
    assert square[np.unravel_index(heat.argmax(), heat.shape)]
    assert heat[square].min() > heat[~square].max()  # the whole square stands out from the noise


def test_overlay_is_a_png_of_the_asked_size() -> None:
    frame = _noise_with_square(0, 0, 0)
    heat = np.arange(64, dtype=np.float32).reshape(8, 8)
    image = Image.open(io.BytesIO(overlay_png(frame, heat, 96)))
    assert image.format == "PNG" and image.size == (96, 96) and image.mode == "RGB"
    flat = Image.open(io.BytesIO(overlay_png(frame, np.zeros((8, 8), np.float32), 32)))  # no contrast: no crash
    assert flat.size == (32, 32)
