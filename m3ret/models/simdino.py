"""SimDINO objective (Wu et al. 2025, "Simplifying DINO via Coding Rate Regularization", arXiv 2502.10385).

DINO's self-distillation without prototypes, centering or sharpening: the student's L2-normalised projections of
every view are pulled towards the EMA teacher's projections of the other global views, and collapse is prevented by
maximising the coding rate of the student's global-view features.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from m3ret.config import AugmentConfig, SimDINOConfig
from m3ret.models.augment import BatchAugment
from m3ret.models.encoder import Encoder

_N_GLOBAL = 2


def coding_rate(z: Tensor, eps: float) -> Tensor:
    """R_eps(Z) = 1/2 logdet(I_d + d / (eps^2 m) Z^T Z) for Z [m, d]: the coding rate of Ma et al. 2007, as in the
    SimDINO loss (Wu et al. 2025).

    Computed in float32 through a Cholesky factor (1/2 logdet A = sum log diag L). When m < d the m x m Gram matrix
    gives the same determinant (Sylvester: det(I_d + a Z^T Z) = det(I_m + a Z Z^T)) more cheaply.
    """
    m, d = z.shape
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.float()
        gram = z.T @ z if d <= m else z @ z.T
        eye = torch.eye(gram.shape[0], device=z.device, dtype=z.dtype)
        chol = torch.linalg.cholesky_ex(eye + (d / (eps**2 * m)) * gram).L
        return chol.diagonal().log().sum()


def effective_rank(z: Tensor) -> Tensor:
    """exp(entropy of the singular values of z [m, d] normalised to sum 1) (Roy & Vetterli 2007): d for an isotropic
    cloud, 1 for a collapsed one."""
    s = torch.linalg.svdvals(z.float())
    p = s / s.sum().clamp_min(1e-12)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


class ProjectionHead(nn.Module):
    """DINO's 3-layer MLP projector D -> hidden -> hidden -> out, without the prototype layer; output L2-normalised."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, out_dim),
        )
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """[B, in_dim] -> unit-norm [B, out_dim]."""
        return F.normalize(self.mlp(x).float(), dim=-1)


class SimDINOObjective(nn.Module):
    """Student (the given encoder + head) and EMA teacher (copies, no gradients). forward(images [B, 3, S, S] in
    [0, 1]) -> (loss, logs); `encoder` is the teacher backbone, the one used for retrieval."""

    def __init__(self, encoder: Encoder, cfg: SimDINOConfig, augment: AugmentConfig) -> None:
        super().__init__()
        if cfg.local_size % encoder.cfg.patch_size:
            raise ValueError(
                f"simdino.local_size={cfg.local_size} is not a multiple of model.patch_size={encoder.cfg.patch_size}"
            )
        self.cfg = cfg
        self.student = encoder
        self.student_head = ProjectionHead(encoder.embed_dim, cfg.head_hidden_dim, cfg.head_out_dim)
        self.encoder = copy.deepcopy(encoder)
        self.teacher_head = copy.deepcopy(self.student_head)
        for p in [*self.encoder.parameters(), *self.teacher_head.parameters()]:
            p.requires_grad_(False)
        self.global_augment = BatchAugment(augment, out_size=encoder.cfg.img_size, scale=cfg.global_scale)
        self.local_augment = BatchAugment(augment, out_size=cfg.local_size, scale=cfg.local_scale)
        self.train()  # puts the teacher in eval mode (see `train`)

    def train(self, mode: bool = True) -> SimDINOObjective:
        """The teacher always runs in eval mode: as in DINO, it has no stochastic depth."""
        super().train(mode)
        self.encoder.eval()
        self.teacher_head.eval()
        return self

    def _views(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """images [B, 3, S, S] -> normalised global views [2B, 3, S, S] and local views [n_local B, 3, L, L]
        (view-major: rows v*B .. v*B + B - 1 are view v)."""
        normalise = self.encoder.normalise
        globals_ = normalise(torch.cat([self.global_augment(images) for _ in range(_N_GLOBAL)]))
        if self.cfg.n_local == 0:
            return globals_, None
        locals_ = normalise(torch.cat([self.local_augment(images) for _ in range(self.cfg.n_local)]))
        return globals_, locals_

    def alignment(self, student: Tensor, teacher: Tensor) -> Tensor:
        """Mean over pairs (teacher global view g, student view v != g) and over the batch of ||z_s - z_t||^2
        = 2 (1 - cos) for unit vectors (SimDINO's alignment term; the official code uses the cosine).

        student [V, B, d], teacher [2, B, d], both unit-norm; student views 0 and 1 are the two global views."""
        n_views = student.shape[0]
        cos = torch.einsum("gbd,vbd->gvb", teacher, student).mean(dim=-1)  # [2, V]
        same = torch.eye(_N_GLOBAL, n_views, dtype=torch.bool, device=cos.device)
        return (2 - 2 * cos).masked_fill(same, 0.0).sum() / (_N_GLOBAL * n_views - _N_GLOBAL)

    def forward(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss = alignment - coding_weight * gamma * mean_g R_eps(Z_g), Z_g [B, d] the student's projections of
        global view g and gamma = (d + B) / (d B) the balancing factor of the official SimDINO code, which keeps the
        coding-rate term from swamping the alignment term."""
        b = images.shape[0]
        globals_, locals_ = self._views(images)
        student = self.student_head(self.student(globals_))
        if locals_ is not None:
            student = torch.cat([student, self.student_head(self.student(locals_))])
        student = student.view(-1, b, student.shape[-1])  # [V, B, d]
        with torch.no_grad():
            teacher = self.teacher_head(self.encoder(globals_)).view(_N_GLOBAL, b, -1)

        # float32 outside autocast: cosines near 1 and a log-determinant lose too much in bf16.
        with torch.autocast(device_type=images.device.type, enabled=False):
            student, teacher = student.float(), teacher.float()
            align = self.alignment(student, teacher)
            d = student.shape[-1]
            rate = torch.stack([coding_rate(student[g], self.cfg.eps) for g in range(_N_GLOBAL)]).mean()
            gamma = (d + b) / (d * b)
            loss = align - self.cfg.coding_weight * gamma * rate

        with torch.no_grad():
            feats = student[:_N_GLOBAL].reshape(-1, d)
            logs = {
                "loss": loss.detach(),
                "align": align.detach(),
                "coding_rate": rate.detach(),
                "feature_std": feats.std(dim=0).mean(),
                "effective_rank": effective_rank(feats),
            }
        return loss, logs

    def momentum(self, progress: float) -> float:
        """EMA momentum, cosine from ema_start at progress 0 to ema_end at progress 1 (DINO's schedule)."""
        progress = min(max(progress, 0.0), 1.0)
        start, end = self.cfg.ema_start, self.cfg.ema_end
        return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2

    @torch.no_grad()
    def on_step_end(self, progress: float) -> None:
        """teacher <- m * teacher + (1 - m) * student, m = momentum(progress), for backbone and head parameters."""
        m = self.momentum(progress)
        teacher = [*self.encoder.parameters(), *self.teacher_head.parameters()]
        student = [*self.student.parameters(), *self.student_head.parameters()]
        torch._foreach_lerp_(teacher, student, 1.0 - m)
