"""The retrieval encoder: a timm ViT backbone plus pooling, and batched embedding of stored frames.

One encoder serves every modality (M3Ret, Liu et al. 2025): grey images are stored with the grey level replicated
into 3 channels, so nothing here depends on the modality.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from m3ret.config import ModelConfig, from_dict
from m3ret.models.readout import POOLINGS, Readout

# Per-channel statistics that map [0, 1] pixels to roughly zero mean, unit scale. There are no pretrained weights to
# match (everything is trained from scratch), so a modality-neutral constant beats ImageNet's colour statistics.
PIXEL_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
PIXEL_STD: tuple[float, float, float] = (0.25, 0.25, 0.25)


class Encoder(nn.Module):
    """A timm ViT (`cfg.name` built at `cfg.img_size` / `cfg.patch_size`, no classifier head) with `cls` or `mean`
    pooling for the training objectives, and a retrieval `readout` (m3ret.models.readout) for `embed`: by default
    the training pooling without whitening; `set_readout` chooses another.

    `dynamic_img_size=True` lets the same backbone run on smaller crops (SimDINO's local views): timm resamples the
    position embedding to the input's patch grid.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.img_size % cfg.patch_size:
            raise ValueError(f"model.img_size={cfg.img_size} is not a multiple of model.patch_size={cfg.patch_size}")
        self.cfg = cfg
        # global_pool="" and fc_norm=False keep `vit.norm` as the final norm for every timm ViT variant (timm moves
        # the norm to `fc_norm` for avg-pooled models), and build no attention-pool parameters that would go unused:
        # pooling is done here, on the normed tokens.
        self.vit: nn.Module = timm.create_model(
            cfg.name,
            pretrained=False,
            num_classes=0,
            global_pool="",
            fc_norm=False,
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            drop_path_rate=cfg.drop_path_rate,
            dynamic_img_size=True,
        )
        self.embed_dim: int = int(self.vit.embed_dim)
        self.num_prefix_tokens: int = int(self.vit.num_prefix_tokens)
        if cfg.pooling == "cls" and not self.vit.has_class_token:
            raise ValueError(f"model.pooling='cls' but {cfg.name} has no class token; use pooling='mean'")
        # Non-persistent: constants of the code, not state; they still follow `.to(device)`.
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        self.set_readout(cfg.pooling, grid=2)

    def set_readout(self, pooling: str, grid: int) -> Readout:
        """Replace the retrieval readout (unfitted: no whitening) and return it."""
        self.readout = Readout(pooling, grid, self.embed_dim, self.num_prefix_tokens, bool(self.vit.has_class_token))
        self.readout.to(self.pixel_mean.device)
        return self.readout

    def forward_tokens(self, x: Tensor) -> Tensor:
        """Normalised images [B, 3, H, W] (H, W multiples of the patch size) -> tokens [B, P + N, D] after the final
        norm, P = `num_prefix_tokens` (class and register tokens) first, then N patch tokens in row-major order."""
        return self.vit.forward_features(x)

    def pool(self, tokens: Tensor) -> Tensor:
        """Tokens [B, P + N, D] -> [B, D]: the training pooling `cfg.pooling`, the class token or the mean of the
        patch tokens (the readout's own parts, unnormalised)."""
        return POOLINGS[self.cfg.pooling](tokens, self.num_prefix_tokens, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Normalised images [B, 3, H, W] -> pooled features [B, D] (not L2-normalised)."""
        return self.pool(self.forward_tokens(x))

    def normalise(self, images: Tensor) -> Tensor:
        """uint8 [B, 3, H, W] in [0, 255] or float [B, 3, H, W] in [0, 1] -> float (x - PIXEL_MEAN) / PIXEL_STD."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        return (x - self.pixel_mean) / self.pixel_std

    def token_batches(self, frames: np.ndarray | Tensor, batch_size: int = 256) -> Iterator[Tensor]:
        """Stored frames uint8 [N, H, W, 3] (channels last, as in the shards) -> final tokens [B, P + N, D] per batch
        of `batch_size`, on the model's device.

        Frames are resized (bilinear, antialiased) to `img_size` when needed. Runs under `inference_mode` in eval mode
        (no stochastic depth), under bf16 autocast on CUDA; the training flag is restored afterwards.
        """
        frames = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"embed expects uint8 frames [N, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
        device = self.pixel_mean.device
        size = self.cfg.img_size
        was_training = self.training
        self.eval()
        try:
            for start in range(0, len(frames), batch_size):
                with torch.inference_mode():
                    x = frames[start : start + batch_size].to(device, non_blocking=True).permute(0, 3, 1, 2)
                    x = x.float() / 255.0
                    if x.shape[-2:] != (size, size):
                        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                    with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                        tokens = self.forward_tokens(self.normalise(x.clamp(0.0, 1.0)))
                yield tokens
        finally:
            self.train(was_training)

    @torch.inference_mode()
    def pooled(self, frames: np.ndarray | Tensor, batch_size: int = 256) -> Tensor:
        """Stored frames uint8 [N, H, W, 3] -> the readout's pooled vectors float32 [N, D'] on CPU, before whitening
        (what the whitening is fitted on); see `token_batches`."""
        out = [self.readout.pool(tokens).float().cpu() for tokens in self.token_batches(frames, batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.readout.pooled_dim)

    @torch.inference_mode()
    def embed(self, frames: np.ndarray | Tensor, batch_size: int = 256) -> Tensor:
        """Stored frames uint8 [N, H, W, 3] -> retrieval vectors float32 [N, K] on CPU, L2-normalised: `pooled`, then
        the readout's whitening when fitted."""
        return self.readout.project(self.pooled(frames, batch_size).to(self.pixel_mean.device)).cpu()


def build_encoder(cfg: ModelConfig) -> Encoder:
    """The encoder described by the `pretrain.model` section."""
    return Encoder(cfg)


def load_encoder(path: str | Path, map_location: str | torch.device = "cpu") -> Encoder:
    """The encoder exported by pretraining (`encoder.pt`: state_dict + its `model` section), in eval mode."""
    saved = torch.load(Path(path), map_location=map_location, weights_only=False)
    encoder = build_encoder(from_dict(ModelConfig, saved["model"], "model"))
    encoder.load_state_dict(saved["state_dict"])
    if "readout" in saved:  # files written before the readout existed use the training pooling
        readout = saved["readout"]
        encoder.set_readout(readout["pooling"], readout["grid"]).load_state(readout)
    return encoder.eval()
