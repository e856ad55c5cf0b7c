"""The pretrain stage: MAE or SimDINO on the pretrain frames, with the learning curve on `pretrain.eval_bench`."""

from __future__ import annotations

from pathlib import Path

from m3ret.config import Params
from m3ret.eval.benchmark import benchmark_evaluator, load_benchmark
from m3ret.train.pretrain_loop import pretrain


def run(params: Params, max_steps: int | None = None) -> dict[str, float]:
    """Train (resuming from the last checkpoint) for `pretrain.epochs`, or at most `max_steps` steps; returns the
    final metrics. With `pretrain.eval_bench`, the benchmark is measured before the first step and on schedule."""
    cfg = params.pretrain
    evaluate = None
    if cfg.eval_bench:
        bench = load_benchmark(Path(cfg.eval_bench), params.read, params.preprocess, Path(cfg.eval_cache))
        evaluate = benchmark_evaluator(bench, params.readout)
    return pretrain(
        cfg, Path(params.preprocess.out), Path(params.split.out), evaluate, cfg.eval_every, max_steps=max_steps
    )
