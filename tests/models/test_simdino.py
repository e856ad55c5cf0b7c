import math

import pytest
import torch

from m3ret.config import AugmentConfig, ModelConfig, SimDINOConfig
from m3ret.models.encoder import build_encoder
from m3ret.models.simdino import SimDINOObjective, coding_rate, effective_rank

TINY = ModelConfig(name="vit_tiny_patch16_224", img_size=32, patch_size=8)
SIM = SimDINOConfig(n_local=2, local_size=16, head_hidden_dim=64, head_out_dim=32, ema_start=0.9, ema_end=1.0)


@pytest.fixture(scope="module")
def sim() -> SimDINOObjective:
    torch.manual_seed(0)
    return SimDINOObjective(build_encoder(TINY), SIM, AugmentConfig())


@pytest.mark.parametrize(("m", "d"), [(40, 8), (6, 16)])
def test_coding_rate_matches_explicit_logdet(m: int, d: int) -> None:
    z = torch.randn(m, d, dtype=torch.float64)
    eps = 0.3
    expected = 0.5 * torch.logdet(torch.eye(d, dtype=torch.float64) + d / (eps**2 * m) * z.T @ z)
    torch.testing.assert_close(coding_rate(z, eps).double(), expected, rtol=1e-4, atol=1e-4)


def test_coding_rate_is_low_for_collapsed_features() -> None:
    spread = torch.nn.functional.normalize(torch.randn(64, 16), dim=1)
    collapsed = spread[:1].expand(64, -1)
    assert coding_rate(collapsed, 0.2) < 0.5 * coding_rate(spread, 0.2)


def test_effective_rank_extremes() -> None:
    torch.testing.assert_close(effective_rank(torch.eye(8)), torch.tensor(8.0))
    torch.testing.assert_close(effective_rank(torch.ones(8, 8)), torch.tensor(1.0), atol=1e-3, rtol=0)


def test_alignment_is_mean_squared_distance_over_cross_view_pairs(sim: SimDINOObjective) -> None:
    student = torch.nn.functional.normalize(torch.randn(4, 5, 32), dim=-1)
    teacher = torch.nn.functional.normalize(torch.randn(2, 5, 32), dim=-1)
    pairs = [(g, v) for g in range(2) for v in range(4) if v != g]
    expected = sum(((student[v] - teacher[g]) ** 2).sum(-1).mean() for g, v in pairs) / len(pairs)
    torch.testing.assert_close(sim.alignment(student, teacher), expected)


def test_forward_logs_and_loss_composition(sim: SimDINOObjective) -> None:
    loss, logs = sim(torch.rand(6, 3, 32, 32))
    assert set(logs) == {"loss", "align", "coding_rate", "feature_std", "effective_rank"}
    gamma = (32 + 6) / (32 * 6)
    torch.testing.assert_close(loss.detach(), logs["align"] - SIM.coding_weight * gamma * logs["coding_rate"])
    assert 0 <= logs["align"] <= 4 and logs["feature_std"] > 0 and 1 <= logs["effective_rank"] <= 12


def test_gradients_reach_student_not_teacher(sim: SimDINOObjective) -> None:
    sim.zero_grad()
    loss, _ = sim(torch.rand(4, 3, 32, 32))
    loss.backward()
    vit = sim.student.vit
    for p in [vit.patch_embed.proj.weight, vit.blocks[-1].mlp.fc2.weight, sim.student_head.mlp[0].weight]:
        assert p.grad is not None and p.grad.abs().sum() > 0
    teacher = [*sim.encoder.parameters(), *sim.teacher_head.parameters()]
    assert all(p.grad is None and not p.requires_grad for p in teacher)
    trainable = {id(p) for p in sim.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in [*sim.student.parameters(), *sim.student_head.parameters()]}
    assert sim.encoder is not sim.student


def test_teacher_stays_in_eval_mode(sim: SimDINOObjective) -> None:
    sim.train()
    assert sim.student.training and not sim.encoder.training and not sim.teacher_head.training


def test_ema_moves_teacher_by_scheduled_momentum() -> None:
    torch.manual_seed(0)
    sim = SimDINOObjective(build_encoder(TINY), SIM, AugmentConfig())
    assert sim.momentum(0.0) == pytest.approx(0.9)
    assert sim.momentum(1.0) == pytest.approx(1.0)
    assert sim.momentum(0.5) == pytest.approx(0.95)
    assert sim.momentum(0.25) == pytest.approx(1.0 - 0.1 * (math.cos(math.pi / 4) + 1) / 2)
    with torch.no_grad():
        for p in [*sim.student.parameters(), *sim.student_head.parameters()]:
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in [*sim.encoder.parameters(), *sim.teacher_head.parameters()]]
    students = [*sim.student.parameters(), *sim.student_head.parameters()]
    sim.on_step_end(0.25)
    m = sim.momentum(0.25)
    after = [*sim.encoder.parameters(), *sim.teacher_head.parameters()]
    for t0, s, t1 in zip(before, students, after, strict=True):
        torch.testing.assert_close(t1, m * t0 + (1 - m) * s)


def test_local_size_must_fit_patches() -> None:
    with pytest.raises(ValueError, match="local_size"):
        SimDINOObjective(build_encoder(TINY), SimDINOConfig(local_size=12), AugmentConfig())
