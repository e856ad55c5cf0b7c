"""Pretraining speed: images/s and achieved FLOP/s of full MAE and SimDINO training steps, per ViT size.

For each objective (mae, simdino) and timm ViT (tiny, small, base) it times full training steps as the pretrain loop
runs them (uint8 frames -> float [B, 3, S, S] in [0, 1], forward under bf16 autocast on CUDA / fp32 on CPU, backward,
gradient clipping, AdamW step, `on_step_end`) on a random batch already in memory (no data loading), after warm-up
steps. The objective is `build_objective(cfg)` and the optimiser `build_optimizer`, with params.yaml's `pretrain`
sections (mae, simdino, augment, optim) and the model swapped in.

FLOPs of one step (forward + backward) are counted with `torch.utils.flop_counter.FlopCounterMode`; achieved FLOP/s
= flops_per_step / seconds of the fastest timed step (a shared machine slows the others down). Since these machines
are noisy, speed is also reported as ratios against two baselines measured in this process: the machine's dense matmul
FLOP/s (best of several `torch.mm`, fp32 on CPU, bf16 on CUDA as the training computes in) and forward-only inference
of the same encoder (`torch.inference_mode`). On CUDA it also reports MFU against the GPU's dense bf16 peak and the
peak memory allocated.

Profiles: `cpu` is params.yaml's CPU demo (64 px, patch 8); `gpu` (default on CUDA, or `--gpu-profile`) is 224 px,
patch 16, with SimDINO's local crops at DINO's 96 px.

    /root/.cache/m3ret-bootstrap/bin/python benchmarks/pretrain.py [--quick] [--threads N] [--batch-size B] [--steps N]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from m3ret.config import PretrainConfig, load_params, replace
from m3ret.models.encoder import build_encoder
from m3ret.models.objectives import build_objective
from m3ret.train.pretrain_loop import build_optimizer

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = ("mae", "simdino")
MODELS = ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224")
QUICK_MODELS = MODELS[:2]
# Dense bf16 tensor-core peak (no sparsity), matched as a substring of torch.cuda.get_device_name().
BF16_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


@dataclass(frozen=True)
class Profile:
    """Image geometry and default batch size per model; `local_size` None keeps params.yaml's SimDINO local crops."""

    name: str
    img_size: int
    patch_size: int
    local_size: int | None
    batch_size: dict[str, int]


# CPU batch sizes keep the full run within ~4 minutes on 2 cores: a SimDINO step costs ~7, ~27 and ~110 GFLOP per
# image for tiny, small and base at 64 px.
CPU = Profile("cpu", 64, 8, None, {MODELS[0]: 16, MODELS[1]: 8, MODELS[2]: 4})
GPU = Profile("gpu", 224, 16, 96, {MODELS[0]: 256, MODELS[1]: 256, MODELS[2]: 128})


@dataclass(frozen=True)
class Row:
    objective: str  # "mae", "simdino" or "inference" (forward-only encoder)
    model: str
    img_size: int
    patch_size: int
    batch: int
    steps: int  # timed steps
    seconds: float  # of the fastest timed step
    flops_per_step: float
    peak_mem: float | None  # bytes, CUDA only

    @property
    def images_per_s(self) -> float:
        return self.batch / self.seconds

    @property
    def flops_per_s(self) -> float:
        return self.flops_per_step / self.seconds


# ------------------------------------------------------------------------------------------------ counting
def _sdpa_cpu_flops(query: Any, key: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """CPU fused attention forward: Q K^T and P V, 2 * 2 * b h s_q s_k d (as torch counts its CUDA kernels)."""
    b, h, s_q, d = query
    return 4 * b * h * s_q * key[-2] * d


def _sdpa_cpu_backward_flops(grad: Any, query: Any, key: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """CPU fused attention backward: scores recomputed plus four gradient matmuls, 5 * 2 * b h s_q s_k d."""
    b, h, s_q, d = query
    return 10 * b * h * s_q * key[-2] * d


# torch counts the CUDA attention kernels but not the CPU one timm's ViT dispatches to; without these the attention
# matmuls would be missing from every CPU count.
_CPU_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops,
}


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs (multiply-add = 2) of the matmuls, convolutions and attention run by one call of `fn`."""
    counter = FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION)
    with counter:
        fn()
    return float(counter.get_total_flops())


# ------------------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], calls: int, device: torch.device) -> float:
    """Wall seconds of `calls` calls of `fn`, waiting for the device at both ends."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return time.perf_counter() - start


def fastest(fn: Callable[[], object], steps: int, device: torch.device) -> float:
    """Seconds of the fastest of `steps` timed calls of `fn`: on a shared machine the others were slowed down by it."""
    return min(timed(fn, 1, device) for _ in range(steps))


def matmul_flops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5, rounds: int = 5) -> float:
    """Best of `rounds` measurements of `repeats` n x n x n `torch.mm` in `dtype`: the machine's dense FLOP/s now."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    timed(lambda: torch.mm(a, b, out=out), 2, device)
    best = min(timed(lambda: torch.mm(a, b, out=out), repeats, device) for _ in range(rounds))
    return 2 * n**3 * repeats / best


def _random_frames(batch: int, size: int, device: torch.device) -> Tensor:
    """Stored-frame-like input: uint8 [B, S, S, 3] on the device, as the pretrain loop receives it."""
    return torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, device=device)


def _peak_mem(device: torch.device) -> float | None:
    return float(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def _reset_mem(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def bench_train(cfg: PretrainConfig, batch: int, warmup: int, steps: int, device: torch.device) -> Row:
    """Time `steps` full training steps of `cfg` (after one counted and `warmup` uncounted steps)."""
    _reset_mem(device)
    torch.manual_seed(cfg.seed)
    objective = build_objective(cfg).to(device).train()
    optimizer = build_optimizer(objective, cfg.optim)
    params = [p for p in objective.parameters() if p.requires_grad]
    frames = _random_frames(batch, cfg.model.img_size, device)
    on_cuda = device.type == "cuda"

    def step() -> None:
        # the pretrain loop's step, less its logging and checkpointing
        images = frames.permute(0, 3, 1, 2).float().div_(255.0)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_cuda):
            loss, _ = objective(images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.clip_grad > 0:
            nn.utils.clip_grad_norm_(params, cfg.optim.clip_grad)
        optimizer.step()
        objective.on_step_end(0.5)

    flops = count_flops(step)  # also the first warm-up step
    timed(step, warmup, device)
    seconds = fastest(step, steps, device)
    m = cfg.model
    return Row(cfg.objective, m.name, m.img_size, m.patch_size, batch, steps, seconds, flops, _peak_mem(device))


def bench_inference(cfg: PretrainConfig, batch: int, warmup: int, steps: int, device: torch.device) -> Row:
    """Time 3 x `steps` forward-only passes of the bare encoder (`Encoder.forward`, pooled features) on a batch."""
    _reset_mem(device)
    torch.manual_seed(cfg.seed)
    encoder = build_encoder(cfg.model).to(device).eval()
    frames = _random_frames(batch, cfg.model.img_size, device)

    @torch.inference_mode()
    def forward() -> None:
        images = frames.permute(0, 3, 1, 2).float().div_(255.0)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            encoder(encoder.normalise(images))

    flops = count_flops(forward)
    timed(forward, warmup, device)
    # a forward costs about a third of a training step: three times the tries for the same time, a steadier reference
    steps *= 3
    seconds = fastest(forward, steps, device)
    m = cfg.model
    return Row("inference", m.name, m.img_size, m.patch_size, batch, steps, seconds, flops, _peak_mem(device))


def config_for(base: PretrainConfig, objective: str, model: str, profile: Profile) -> PretrainConfig:
    """params.yaml's pretrain section with `objective`, `model` and the profile's geometry swapped in."""
    simdino = base.simdino if profile.local_size is None else replace(base.simdino, local_size=profile.local_size)
    geometry = replace(base.model, name=model, img_size=profile.img_size, patch_size=profile.patch_size)
    return replace(base, objective=objective, model=geometry, simdino=simdino)


# ---------------------------------------------------------------------------------------------- printing
def machine_facts(device: torch.device, profile: Profile) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return (
        f"machine: {platform.machine()}, {cores} usable cores (os.cpu_count={os.cpu_count()}), "
        f"{platform.system()} {platform.release()}, {_load()}\n"
        f"device: {device} ({name}); torch {torch.__version__} ({torch.get_num_threads()} threads), timm "
        f"{timm.__version__}, python {platform.python_version()}; profile {profile.name} "
        f"({profile.img_size} px, patch {profile.patch_size}, {'bf16 autocast' if device.type == 'cuda' else 'fp32'})"
    )


def _load() -> str:
    # other processes on a small CPU machine take their share of it: report them
    return "load average (1/5/15 min) " + "/".join(f"{x:.1f}" for x in os.getloadavg())


def _bf16_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_FLOPS.items() if key in name), None)


def table(rows: list[Row], matmul: float, device: torch.device) -> str:
    cuda = device.type == "cuda"
    peak = _bf16_peak(device)
    inference = {r.model: r for r in rows if r.objective == "inference"}
    head = "| objective | model | img/patch | batch | steps | img/s | GFLOP/img | GFLOP/s | x matmul | x inference |"
    rule = "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
    if cuda:
        head += " MFU | peak mem GiB |"
        rule += "---:|---:|"
    lines = [head, rule]
    for r in rows:
        base = inference.get(r.model)
        vs_inference = f"{r.flops_per_s / base.flops_per_s:.2f}" if base and r is not base else "-"
        line = (
            f"| {r.objective} | {r.model.removesuffix('_patch16_224')} | {r.img_size}/{r.patch_size} | {r.batch} "
            f"| {r.steps} | {r.images_per_s:.1f} | {r.flops_per_step / r.batch / 1e9:.2f} | {r.flops_per_s / 1e9:.1f} "
            f"| {r.flops_per_s / matmul:.2f} | {vs_inference} |"
        )
        if cuda:
            mfu = f"{r.flops_per_s / peak:.1%}" if peak else "-"
            line += f" {mfu} | {r.peak_mem / 2**30:.2f} |"
        lines.append(line)
    return "\n".join(lines)


NOTES = """\
- img/s and GFLOP/s are of the fastest of `steps` timed steps; img/s counts source images (batch elements), not views:
  a SimDINO image is 2 global + n_local local views.
- GFLOP/img: matmul, convolution and attention FLOPs (multiply-add = 2) of one step per image, counted by
  FlopCounterMode; training rows count forward + backward (the AdamW update and augmentation are not matmuls).
- x matmul: achieved FLOP/s / the in-process dense matmul FLOP/s above (the practical ceiling of this machine now).
- x inference: a training row's FLOP/s / forward-only inference FLOP/s of the same encoder at the same batch size.
- SimDINO also runs its EMA teacher forward (no backward) and the teacher update each step; MAE's encoder sees only
  the visible 25 % of patches, so its GFLOP/img is far below inference x 3."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny and small only, fewer steps (< ~1 min on CPU)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--batch-size", type=int, help="batch size for every model (default: per model and profile)")
    parser.add_argument("--steps", type=int, help="timed steps per configuration (default 3 on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, help="untimed steps after the counted one (CPU 1, --quick 0; CUDA 5)")
    parser.add_argument("--gpu-profile", action="store_true", help="224 px, patch 16 (the default on CUDA)")
    parser.add_argument("--models", nargs="+", choices=MODELS, help="default: all (--quick: tiny, small)")
    parser.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="source of the pretrain sections")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_cuda = device.type == "cuda"
    profile = GPU if args.gpu_profile or on_cuda else CPU
    models = args.models or (QUICK_MODELS if args.quick else MODELS)
    steps = args.steps or (20 if on_cuda else 2 if args.quick else 3)
    warmup = args.warmup if args.warmup is not None else (5 if on_cuda else 0 if args.quick else 1)
    base = load_params(args.params).pretrain
    # the dtype the training computes its matmuls in; 1024 fp32 is ~2 GFLOP per mm, big enough to fill 2 CPU cores
    dtype, n = (torch.bfloat16, 8192) if on_cuda else (torch.float32, 1024)

    print(machine_facts(device, profile))
    started = time.perf_counter()
    matmul_start = matmul_flops(device, dtype, n)
    rows: list[Row] = []
    for model in models:
        batch = args.batch_size or profile.batch_size[model]
        rows.append(bench_inference(config_for(base, "mae", model, profile), batch, warmup, steps, device))
        for objective in args.objectives:
            rows.append(bench_train(config_for(base, objective, model, profile), batch, warmup, steps, device))
    matmul_end = matmul_flops(device, dtype, n)
    # the faster of the two: a ratio against the machine's best shows how far below it the steps ran
    matmul = max(matmul_start, matmul_end)
    print(
        f"{str(dtype).removeprefix('torch.')} matmul {n}x{n}: {matmul_start / 1e9:.1f} GFLOP/s at the start, "
        f"{matmul_end / 1e9:.1f} at the end; reference {matmul / 1e9:.1f} GFLOP/s"
    )
    if on_cuda and _bf16_peak(device) is None:
        print(f"no bf16 peak known for {torch.cuda.get_device_name(device)}: MFU left blank")
    print()
    print(table(rows, matmul, device))
    print()
    print(NOTES)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; at the end: {_load()}")


if __name__ == "__main__":
    main()
