"""Why a hit is similar: a patch-similarity map between the query's patch tokens and the hit's.

For every patch of the hit, how much better it matches its best query patch than it matches the query's patches on
average: `max_i cos(q_i, h_j) - mean_i cos(q_i, h_j)` over the encoder's final patch tokens. A patch that agrees with
one specific part of the query scores high; background that resembles everything (air, a flat field) scores near
zero, so the map points at where the two images share something particular. Drawn as a heat overlay on the hit's
frame (`overlay_png`).
"""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import torch

from m3ret.models.encoder import Encoder

matplotlib.use("Agg")
from matplotlib import colormaps  # noqa: E402
from PIL import Image  # noqa: E402

# how much of the overlay is the heat map (the rest is the hit's frame)
HEAT_ALPHA = 0.45


def patch_tokens(encoder: Encoder, frames: np.ndarray) -> np.ndarray:
    """Model-ready frames uint8 [N, S, S, 3] -> L2-normalised final patch tokens float32 [N, g, g, D] (g x g the
    patch grid, prefix tokens dropped)."""
    tokens = torch.cat([t.float().cpu() for t in encoder.token_batches(frames)])
    patches = tokens[:, encoder.num_prefix_tokens :]
    grid = int(round(patches.shape[1] ** 0.5))
    if grid * grid != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} patch tokens do not form a square grid")
    patches = torch.nn.functional.normalize(patches, dim=-1)
    return patches.reshape(len(frames), grid, grid, -1).numpy()


def similarity_map(query_patches: np.ndarray, hit_patches: np.ndarray) -> np.ndarray:
    """Unit patch tokens [g, g, D] of the query and of the hit -> float32 [g, g] over the hit's patches: the best
    match's cosine minus the mean cosine over the query's patches (see the module docstring)."""
    q = query_patches.reshape(-1, query_patches.shape[-1])
    h = hit_patches.reshape(-1, hit_patches.shape[-1])
    cosine = h @ q.T  # [hit patches, query patches]
    specific = cosine.max(axis=1) - cosine.mean(axis=1)
    return specific.reshape(hit_patches.shape[:2]).astype(np.float32)


def overlay_png(frame: np.ndarray, heat: np.ndarray, size: int) -> bytes:
    """The hit's frame uint8 [S, S, 3] with `heat` [g, g] drawn over it (scaled to its own range, `inferno`), as
    `size` px PNG bytes."""
    span = float(heat.max() - heat.min())
    scaled = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    colours = (colormaps["inferno"](scaled)[..., :3] * 255).astype(np.uint8)
    heat_image = Image.fromarray(colours).resize((size, size), Image.Resampling.BILINEAR)
    base = Image.fromarray(np.ascontiguousarray(frame)).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    Image.blend(base, heat_image, HEAT_ALPHA).save(out, format="PNG")
    return out.getvalue()
