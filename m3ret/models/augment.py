"""Batched, on-device image augmentation, the same for every modality (M3Ret: no modality-specific parts).

Every sample gets its own random parameters, drawn as tensors and applied in one vectorised pass: the crop and the
flips are a single affine resampling (`affine_grid` + `grid_sample`), the blur a grouped separable convolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from m3ret.config import AugmentConfig

# Aspect-ratio range of the random resized crop (Szegedy et al. 2015; torchvision's default).
_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))
# Blur sigma range in pixels at 224 px (DINO's recipe), scaled to the output size so a small crop is not erased.
_SIGMA_AT_224 = (0.1, 2.0)


class BatchAugment(nn.Module):
    """Random resized crop -> flips -> brightness/contrast jitter -> occasional Gaussian blur.

    Input float [B, 3, H, W] in [0, 1]; output float [B, 3, out_size, out_size] in [0, 1]. `scale` (fraction of the
    image area kept by the crop) overrides `cfg.crop_scale`, e.g. for SimDINO's global and local views.
    """

    def __init__(self, cfg: AugmentConfig, out_size: int, scale: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.out_size = out_size
        self.scale = tuple(scale if scale is not None else cfg.crop_scale)
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"crop scale {self.scale} must satisfy 0 < low <= high <= 1")
        self.sigma_range = tuple(s * out_size / 224 for s in _SIGMA_AT_224)
        # Odd kernel covering +-3 sigma of the widest blur.
        self.kernel_size = 2 * math.ceil(3 * self.sigma_range[1]) + 1

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x float [B, 3, H, W] in [0, 1] -> [B, 3, out_size, out_size] in [0, 1]; `generator` makes it reproducible."""

        def rand(*shape: int) -> Tensor:
            device = generator.device if generator is not None else x.device
            return torch.rand(*shape, generator=generator, device=device).to(x.device)

        b = x.shape[0]
        x = self._crop_and_flip(x.float(), rand(b, 6))
        x = self._jitter(x, rand(b, 2))
        if self.cfg.blur_prob > 0:
            x = self._blur(x, rand(b, 2))
        return x.clamp(0.0, 1.0)

    def _crop_and_flip(self, x: Tensor, u: Tensor) -> Tensor:
        """Crop of area fraction s ~ U(scale) and aspect r ~ logU(3/4, 4/3), anywhere inside the image, resampled
        to out_size; flips negate an axis of the same affine map. u: uniforms [B, 6]."""
        lo, hi = self.scale
        area = lo + (hi - lo) * u[:, 0]
        log_ratio = _LOG_RATIO[0] + (_LOG_RATIO[1] - _LOG_RATIO[0]) * u[:, 1]
        # A crop of area a fits inside the image only if a <= ratio <= 1/a; clamping the aspect (rather than retrying
        # as torchvision does) keeps the drawn area, and scale (1, 1) gives the whole image.
        limit = -torch.log(area)
        log_ratio = torch.maximum(torch.minimum(log_ratio, limit), -limit)
        # Width and height as fractions of the image side.
        w = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
        h = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
        # Centre in affine_grid's [-1, 1] coordinates, so that the crop stays inside the image.
        cx = (1 - w) * (2 * u[:, 2] - 1)
        cy = (1 - h) * (2 * u[:, 3] - 1)
        sx = torch.where(u[:, 4] < self.cfg.hflip, -w, w)
        sy = torch.where(u[:, 5] < self.cfg.vflip, -h, h)
        zero = torch.zeros_like(w)
        theta = torch.stack([torch.stack([sx, zero, cx], -1), torch.stack([zero, sy, cy], -1)], 1)
        grid = F.affine_grid(theta, [x.shape[0], x.shape[1], self.out_size, self.out_size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _jitter(self, x: Tensor, u: Tensor) -> Tensor:
        """Brightness x*b and contrast (x - mean)*c + mean, b ~ U(1 +- brightness), c ~ U(1 +- contrast). u: [B, 2]."""
        b = 1 + self.cfg.brightness * (2 * u[:, 0] - 1)
        c = 1 + self.cfg.contrast * (2 * u[:, 1] - 1)
        x = (x * b.view(-1, 1, 1, 1)).clamp(0.0, 1.0)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return ((x - mean) * c.view(-1, 1, 1, 1) + mean).clamp(0.0, 1.0)

    def _blur(self, x: Tensor, u: Tensor) -> Tensor:
        """Gaussian blur with probability blur_prob, sigma ~ U(sigma_range), one kernel per sample: a separable
        convolution with one group per (sample, channel). u: [B, 2]."""
        bsz, ch, height, width = x.shape
        lo, hi = self.sigma_range
        sigma = lo + (hi - lo) * u[:, 1]
        radius = self.kernel_size // 2
        offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        kernel = torch.exp(-0.5 * (offsets / sigma[:, None]) ** 2)
        kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(ch, dim=0)  # [B*C, K]
        y = x.reshape(1, bsz * ch, height, width)
        # Reflect padding needs radius < side; replicate works for any size.
        y = F.pad(y, (radius, radius, radius, radius), mode="replicate")
        y = F.conv2d(y, kernel.view(bsz * ch, 1, 1, -1), groups=bsz * ch)
        y = F.conv2d(y, kernel.view(bsz * ch, 1, -1, 1), groups=bsz * ch).view_as(x)
        blur = (u[:, 0] < self.cfg.blur_prob).view(-1, 1, 1, 1)
        return torch.where(blur, y, x)
