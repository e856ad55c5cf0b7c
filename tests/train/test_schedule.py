import math

import pytest

from m3ret.config import OptimConfig
from m3ret.train.schedule import lr_at

CFG = OptimConfig(lr=1.0, warmup_frac=0.1, min_lr_frac=0.01)


def test_warmup_rises_linearly_to_the_peak():
    # 101 steps: round(10.1) = 10 warmup steps
    assert [lr_at(s, 101, CFG) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])


def test_cosine_from_peak_to_floor():
    # decay over steps 10..100 (90 intervals): peak at 10, half-way at 55, floor at the last step
    assert lr_at(10, 101, CFG) == pytest.approx(1.0)
    assert lr_at(55, 101, CFG) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_at(32, 101, CFG) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 22 / 90)))
    assert lr_at(100, 101, CFG) == pytest.approx(0.01)
    assert lr_at(150, 101, CFG) == pytest.approx(0.01)


def test_monotone_after_warmup_and_edge_cases():
    lrs = [lr_at(s, 101, CFG) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    no_warmup = OptimConfig(lr=2.0, warmup_frac=0.0, min_lr_frac=0.5)
    assert lr_at(0, 10, no_warmup) == pytest.approx(2.0)
    assert lr_at(9, 10, no_warmup) == pytest.approx(1.0)
    assert lr_at(0, 1, no_warmup) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="total_steps"):
        lr_at(0, 0, CFG)
