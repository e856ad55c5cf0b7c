"""The registry of self-supervised objectives, keyed by `pretrain.objective` in params.yaml."""

from __future__ import annotations

from torch import nn

from m3ret.config import PretrainConfig
from m3ret.models.encoder import build_encoder
from m3ret.models.mae import MAEObjective
from m3ret.models.simdino import SimDINOObjective

OBJECTIVES: dict[str, type[nn.Module]] = {"mae": MAEObjective, "simdino": SimDINOObjective}


def build_objective(cfg: PretrainConfig) -> nn.Module:
    """A fresh encoder for `cfg.model` wrapped in the objective `cfg.objective`, configured by its own section
    (`cfg.mae` or `cfg.simdino`) and `cfg.augment`. Its forward maps images [B, 3, S, S] in [0, 1] to (loss, logs);
    its `encoder` attribute is the encoder used for retrieval."""
    if cfg.objective not in OBJECTIVES:
        raise ValueError(f"pretrain.objective={cfg.objective!r}; valid: {sorted(OBJECTIVES)}")
    section = getattr(cfg, cfg.objective)
    return OBJECTIVES[cfg.objective](build_encoder(cfg.model), section, cfg.augment)
