"""The registry of self-supervised objectives, keyed by `pretrain.objective` in params.yaml."""

from __future__ import annotations

import logging

from torch import nn

from m3ret.config import PretrainConfig
from m3ret.models.backbone_init import load_backbone_weights
from m3ret.models.encoder import build_encoder
from m3ret.models.mae import MAEObjective
from m3ret.models.simdino import SimDINOObjective

OBJECTIVES: dict[str, type[nn.Module]] = {"mae": MAEObjective, "simdino": SimDINOObjective}
log = logging.getLogger(__name__)


def build_objective(cfg: PretrainConfig) -> nn.Module:
    """An encoder for `cfg.model` (random, or its backbone loaded from `cfg.init` when set) wrapped in the objective
    `cfg.objective`, configured by its own section (`cfg.mae` or `cfg.simdino`) and `cfg.augment`. Its forward maps
    images [B, 3, S, S] in [0, 1] to (loss, logs); its `encoder` attribute is the encoder used for retrieval."""
    if cfg.objective not in OBJECTIVES:
        raise ValueError(f"pretrain.objective={cfg.objective!r}; valid: {sorted(OBJECTIVES)}")
    section = getattr(cfg, cfg.objective)
    encoder = build_encoder(cfg.model)
    if cfg.init:
        keys = load_backbone_weights(encoder.vit, cfg.init)
        log.info("pretrain.init %s: %d tensors loaded, %d ignored", cfg.init, len(keys["loaded"]), len(keys["ignored"]))
    return OBJECTIVES[cfg.objective](encoder, section, cfg.augment)
