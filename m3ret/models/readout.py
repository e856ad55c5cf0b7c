"""The retrieval readout: how a ViT's tokens become the one vector that is indexed and searched.

Two steps, both part of the model (saved with the encoder, so gallery and query vectors always share them):
- pooling, a '+'-joined concatenation of parts (`cls`, `mean`, `grid`); each part is L2-normalised before the
  concatenation, so every part weighs the same whatever its dimension. `grid` keeps the layout that a mean discards:
  the patch tokens averaged over a g x g grid of image regions (g^2 D values, channel-major: the g^2 cells of
  channel 0 first).
- an optional PCA whitening (Jegou & Chum 2012, "Negative evidences and co-occurrences in image retrieval"):
  y = Lambda^(-1/2) U^T (x - mu), fitted on the gallery's own pooled vectors (no labels) at index time, with the
  eigenvalues shrunk towards their mean (Lambda + s mean(Lambda) I) so that near-empty directions are not blown up.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from m3ret.config import ReadoutConfig


def _cls(tokens: Tensor, n_prefix: int, grid: int) -> Tensor:
    return tokens[:, 0]


def _mean(tokens: Tensor, n_prefix: int, grid: int) -> Tensor:
    return tokens[:, n_prefix:].mean(dim=1)


def _grid(tokens: Tensor, n_prefix: int, grid: int) -> Tensor:
    patches = tokens[:, n_prefix:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(f"grid pooling needs a square patch grid, got {patches.shape[1]} patch tokens")
    maps = patches.transpose(1, 2).reshape(len(patches), -1, side, side)  # [B, D, side, side]
    return F.adaptive_avg_pool2d(maps, grid).flatten(1)  # [B, D * grid * grid], channel-major


POOLINGS = {"cls": _cls, "mean": _mean, "grid": _grid}


def pooling_parts(pooling: str) -> list[str]:
    """'mean+grid' -> ['mean', 'grid']; an unknown part raises ValueError listing the valid ones."""
    parts = [p.strip() for p in pooling.split("+")]
    unknown = [p for p in parts if p not in POOLINGS]
    if unknown or not parts:
        raise ValueError(f"readout pooling {pooling!r}: unknown part(s) {unknown}; valid: {sorted(POOLINGS)}")
    return parts


def fit_whitening(vectors: Tensor, dim: int = 0, shrinkage: float = 0.1) -> tuple[Tensor, Tensor]:
    """PCA whitening of vectors [N, D] -> (mean [D], projection [D, K]), K = dim or D (at most D).

    projection = U_K (Lambda_K + shrinkage * mean(Lambda))^(-1/2), U, Lambda the eigenvectors / eigenvalues of the
    covariance in descending order; fitted in float64. Needs at least 2 vectors.
    """
    if vectors.ndim != 2 or len(vectors) < 2:
        raise ValueError(f"whitening needs at least 2 vectors [N, D], got shape {tuple(vectors.shape)}")
    x = vectors.double()
    mean = x.mean(dim=0)
    centred = x - mean
    cov = centred.T @ centred / (len(x) - 1)
    eigvals, eigvecs = torch.linalg.eigh(cov)
    eigvals, eigvecs = eigvals.flip(0).clamp_min(0.0), eigvecs.flip(1)
    keep = min(dim, len(eigvals)) if dim > 0 else len(eigvals)
    scale = (eigvals[:keep] + shrinkage * eigvals.mean()).clamp_min(1e-12).rsqrt()
    return mean.float(), (eigvecs[:, :keep] * scale).float()


def whiten(x: Tensor, mean: Tensor, proj: Tensor) -> Tensor:
    """x [B, D] -> unit vectors [B, K]: (x - mean) @ proj, L2-normalised (mean, proj from `fit_whitening`)."""
    return F.normalize((x.float() - mean) @ proj, dim=-1)


def whiten_on(vectors: Tensor, fit_rows: Tensor, cfg: ReadoutConfig) -> Tensor:
    """Any vectors [N, D] (e.g. the raw-pixel floor) -> unit vectors [N, K], whitened as `cfg` says with the whitening
    fitted on vectors[fit_rows] (the gallery's rows)."""
    x = vectors.float()
    return whiten(x, *fit_whitening(x[fit_rows], cfg.whiten_dim, cfg.whiten_shrinkage))


class Readout(nn.Module):
    """tokens [B, P + N, D] (P prefix tokens, then N patch tokens in row-major order) -> unit vectors [B, K].

    `pool` gives the concatenated parts [B, D'] (D' = D per cls/mean part, g^2 D per grid part); `project` applies
    the whitening when fitted (K its components) and L2-normalises. Whitening lives in buffers that `state` and
    `load_state` carry, since its shape is known only once fitted.
    """

    def __init__(self, pooling: str, grid: int, embed_dim: int, num_prefix_tokens: int, has_class_token: bool) -> None:
        super().__init__()
        self.parts = pooling_parts(pooling)
        if "cls" in self.parts and not has_class_token:
            raise ValueError(f"readout pooling {pooling!r} uses 'cls' but the backbone has no class token")
        if grid < 1:
            raise ValueError(f"readout grid={grid} must be at least 1")
        self.pooling, self.grid, self.num_prefix_tokens = pooling, grid, num_prefix_tokens
        self.pooled_dim = sum(embed_dim * (grid * grid if p == "grid" else 1) for p in self.parts)
        self.register_buffer("whiten_mean", torch.zeros(0), persistent=False)
        self.register_buffer("whiten_proj", torch.zeros(0, 0), persistent=False)

    @property
    def whitened(self) -> bool:
        return self.whiten_proj.numel() > 0

    @property
    def dim(self) -> int:
        """Length of the output vectors."""
        return int(self.whiten_proj.shape[1]) if self.whitened else self.pooled_dim

    def pool(self, tokens: Tensor) -> Tensor:
        """tokens [B, P + N, D] -> [B, D'] float32: each part L2-normalised, concatenated, scaled to unit norm."""
        parts = [
            F.normalize(POOLINGS[p](tokens, self.num_prefix_tokens, self.grid).float(), dim=-1) for p in self.parts
        ]
        return torch.cat(parts, dim=-1) / math.sqrt(len(parts))

    def project(self, pooled: Tensor) -> Tensor:
        """[B, D'] -> unit vectors [B, K]: whitened (if fitted) then L2-normalised."""
        if self.whitened:
            return whiten(pooled, self.whiten_mean, self.whiten_proj)
        return F.normalize(pooled.float(), dim=-1)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.project(self.pool(tokens))

    def fit(self, pooled: Tensor, dim: int = 0, shrinkage: float = 0.1) -> None:
        """Fit the whitening on pooled gallery vectors [N, D'] (`fit_whitening`)."""
        if pooled.shape[-1] != self.pooled_dim:
            raise ValueError(f"whitening fit on vectors of dim {pooled.shape[-1]}, readout pools {self.pooled_dim}")
        mean, proj = fit_whitening(pooled.cpu(), dim, shrinkage)
        device = self.whiten_mean.device
        self.whiten_mean, self.whiten_proj = mean.to(device), proj.to(device)

    def state(self) -> dict:
        """What `load_state` needs to rebuild this readout (saved in the encoder file)."""
        return {
            "pooling": self.pooling,
            "grid": self.grid,
            "whiten_mean": self.whiten_mean.cpu(),
            "whiten_proj": self.whiten_proj.cpu(),
        }

    def load_state(self, state: dict) -> None:
        mean, proj = state["whiten_mean"], state["whiten_proj"]
        if proj.numel() and proj.shape[0] != self.pooled_dim:
            raise ValueError(f"saved whitening expects pooled dim {proj.shape[0]}, readout pools {self.pooled_dim}")
        device = self.whiten_mean.device
        self.whiten_mean, self.whiten_proj = mean.to(device), proj.to(device)


def fit_and_project(readout: Readout, cfg: ReadoutConfig, pooled: Tensor, fit_rows: Tensor | None) -> Tensor:
    """Fit `readout`'s whitening on pooled[fit_rows] when `cfg.whiten` (bool mask or indices [N]; the gallery's rows,
    never queries), then project every row: pooled [N, D'] -> unit vectors [N, K]."""
    if cfg.whiten:
        if fit_rows is None:
            raise ValueError("readout.whiten needs the gallery rows to fit the whitening on")
        readout.fit(pooled[fit_rows], cfg.whiten_dim, cfg.whiten_shrinkage)
    return readout.project(pooled)
