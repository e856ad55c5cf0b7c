"""Masked autoencoder objective (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners").

The encoder's own timm ViT sees only the visible patches (plus its prefix tokens); a light transformer decoder
gets the encoded visible tokens and a shared mask token at every masked position, and predicts the pixels of each
patch. The loss is the mean squared error over masked patches only (Sec. 3, "Reconstruction target").
"""

from __future__ import annotations

import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from m3ret.config import AugmentConfig, MAEConfig
from m3ret.models.augment import BatchAugment
from m3ret.models.encoder import Encoder


def random_masking(batch: int, num_patches: int, mask_ratio: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-sample uniform random masking by sorting uniform noise (MAE Sec. 3, "Masking").

    Returns `keep` int64 [B, n_keep] (indices of the visible patches, in shuffled order) and `mask` float [B, N]
    with 1 for masked and 0 for visible patches; exactly N - n_keep patches are masked in every sample.
    """
    n_keep = max(1, int(round(num_patches * (1 - mask_ratio))))
    order = torch.argsort(torch.rand(batch, num_patches, device=device), dim=1)
    keep = order[:, :n_keep]
    mask = torch.ones(batch, num_patches, device=device)
    mask.scatter_(1, keep, 0.0)
    return keep, mask


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """[B, C, H, W] -> [B, N, p*p*C], patches in the row-major order of timm's patch embedding."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def pixel_targets(images: Tensor, patch_size: int, norm_pix: bool) -> Tensor:
    """Reconstruction targets [B, N, p*p*C]: the patch pixels, optionally normalised by each patch's own mean and
    variance (MAE's `norm_pix_loss`, Sec. 3, which improves representation quality)."""
    target = patchify(images.float(), patch_size)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    return target


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """MAE loss: per-patch mean squared error, averaged over masked patches only.

    pred, target [B, N, K]; mask [B, N] (1 = masked). L = sum_{b,n} mask_bn * mean_k (pred - target)^2 / sum mask.
    """
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


class MAEObjective(nn.Module):
    """MAE on the encoder's timm ViT. forward(images [B, 3, S, S] in [0, 1]) -> (loss, logs)."""

    def __init__(self, encoder: Encoder, cfg: MAEConfig, augment: AugmentConfig) -> None:
        super().__init__()
        if not 0 < cfg.mask_ratio < 1:
            raise ValueError(f"mae.mask_ratio={cfg.mask_ratio} must lie in (0, 1)")
        if cfg.decoder_dim % 4:
            raise ValueError(f"mae.decoder_dim={cfg.decoder_dim} must be a multiple of 4 (2-D sin-cos positions)")
        self.encoder = encoder
        self.cfg = cfg
        self.augment = BatchAugment(augment, out_size=encoder.cfg.img_size)
        self.patch_size = encoder.cfg.patch_size
        grid = encoder.cfg.img_size // self.patch_size
        self.num_patches = grid * grid

        self.decoder_embed = nn.Linear(encoder.embed_dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        # Fixed 2-D sin-cos positions for the decoder, as in MAE; a buffer, so it is neither trained nor decayed.
        pos = build_sincos2d_pos_embed([grid, grid], dim=cfg.decoder_dim).unsqueeze(0)
        self.register_buffer("decoder_pos_embed", pos, persistent=False)
        self.decoder_blocks = nn.Sequential(
            *[Block(cfg.decoder_dim, cfg.decoder_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(cfg.decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(cfg.decoder_dim)
        self.decoder_pred = nn.Linear(cfg.decoder_dim, self.patch_size**2 * 3)
        self._init_decoder()

    def _init_decoder(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        for name, module in self.named_modules():
            if name.startswith("encoder"):
                continue
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def encode_visible(self, x: Tensor, keep: Tensor) -> Tensor:
        """Normalised images [B, 3, S, S], visible patch indices [B, n_keep] -> encoded tokens [B, P + n_keep, D]
        (prefix tokens first). Position embeddings are added before masking, so each kept patch keeps its position."""
        vit = self.encoder.vit
        tokens = vit._pos_embed(vit.patch_embed(x))
        n_prefix = self.encoder.num_prefix_tokens
        prefix, patches = tokens[:, :n_prefix], tokens[:, n_prefix:]
        visible = torch.gather(patches, 1, keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        tokens = vit.norm_pre(torch.cat([prefix, visible], dim=1))
        return vit.norm(vit.blocks(tokens))

    def decode(self, encoded: Tensor, keep: Tensor) -> Tensor:
        """Encoded tokens [B, P + n_keep, D] -> predicted patch pixels [B, N, p*p*3] for every patch (row-major)."""
        n_prefix = self.encoder.num_prefix_tokens
        y = self.decoder_embed(encoded)
        prefix, visible = y[:, :n_prefix], y[:, n_prefix:]
        b, _, dim = visible.shape
        # Every position starts as the mask token; visible positions are overwritten with their encoded tokens.
        full = self.mask_token.to(visible.dtype).expand(b, self.num_patches, dim).clone()
        full = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, dim), visible)
        full = full + self.decoder_pos_embed.to(full.dtype)
        y = self.decoder_norm(self.decoder_blocks(torch.cat([prefix, full], dim=1)))
        return self.decoder_pred(y[:, n_prefix:])

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised images [B, 3, S, S] -> (pred [B, N, p*p*3], mask [B, N] with 1 = masked)."""
        keep, mask = random_masking(x.shape[0], self.num_patches, self.cfg.mask_ratio, x.device)
        return self.decode(self.encode_visible(x, keep), keep), mask

    def forward(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """images float [B, 3, S, S] in [0, 1], S = model img_size -> (loss, logs). Targets are the augmented,
        normalised pixels (per patch normalised when `norm_pix_loss`)."""
        x = self.encoder.normalise(self.augment(images))
        pred, mask = self.predict(x)
        target = pixel_targets(x, self.patch_size, self.cfg.norm_pix_loss)
        loss = masked_mse(pred, target, mask)
        return loss, {"loss": loss.detach(), "mask_ratio": mask.mean().detach()}

    def on_step_end(self, progress: float) -> None:
        """Nothing to update between steps (no teacher)."""
