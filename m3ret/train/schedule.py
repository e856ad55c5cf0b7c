"""Per-step learning rate: linear warmup, then a half-cosine down to a floor (the MAE / DINO recipe, per step)."""

from __future__ import annotations

import math

from m3ret.config import OptimConfig


def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """The learning rate for optimiser step `step` (0-based) of `total_steps`.

    Warmup covers the first `round(warmup_frac * total_steps)` steps and rises linearly to `cfg.lr`, reaching it on
    the last warmup step (so step 0 already trains, at `lr / warmup`). After it, a cosine falls from `cfg.lr` at the
    first post-warmup step to `cfg.lr * min_lr_frac` at the last step `total_steps - 1`; steps past the end stay there.
    Eq.: lr = floor + (lr - floor) * (1 + cos(pi * (step - warmup) / (total_steps - 1 - warmup))) / 2.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    warmup = round(cfg.warmup_frac * total_steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    floor = cfg.lr * cfg.min_lr_frac
    decay_steps = total_steps - 1 - warmup
    # with no room to decay (a one-step run) the single post-warmup step trains at the peak
    progress = 0.0 if decay_steps <= 0 else min(1.0, (step - warmup) / decay_steps)
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
