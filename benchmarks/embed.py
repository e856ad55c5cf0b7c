"""Embedding speed: images/s of m3ret's embed stage against a plain timm loop, and what buys more on this CPU.

For each frame size (64 px: params.yaml's `pretrain.model`, ViT-Ti patch 8; 224 px: ViT-S/16) it writes a real frame
store in a temporary folder (`ShardWriter` + `write_frames_table`, as the preprocess stage does) and times, in one
process, over the same frames:

- plain: `timm.create_model` + `torch.inference_mode` + a for loop over numpy batches -> float tensor -> model ->
  `F.normalize` (the reference every row is divided by: `x plain`);
- m3ret: `pool_frames` over the store (DataLoader with 1 worker as `embed.workers` defaults to, and 0), and
  `Encoder.embed` on the frames in memory;
- knobs: `torch.set_num_threads(1)` against torch's default, batch 64 against 256, NCHW-contiguous input and a
  channels_last model, `torch.compile` (only at the sizes given to `--compile`: compiling a ViT takes minutes on
  a loaded 2-core machine; inductor's cache makes a second compile of the same shapes fast), dynamic int8
  quantisation of every `nn.Linear` (`torch.ao.quantization.quantize_dynamic`), alone and with 1 thread, and bf16
  autocast on CPU.

Each row keeps the fastest of `--repeats` runs over all frames (a shared machine slows the others down); the plain
reference runs first and again last, and `x plain` divides by the faster of the two. Achieved
FLOP/s = FLOP/img (matmuls, convolutions and attention, counted with FlopCounterMode by benchmarks/pretrain.py's
`count_flops`) x img/s, as a fraction of the machine's dense fp32 matmul FLOP/s measured in-process at the start and
the end (`matmul_flops`). Int8 and bf16 change the vectors: their cosine agreement with the fp32 vectors and the
overlap of top-10 retrieval (the first 100 frames as queries against all frames) are reported, and with `--encoder`
(a trained `encoder.pt`) and `--bench` (a labeled folder such as ../shared/data/medbench), the medbench mAP@10 of
fp32 against the fastest of int8 / bf16. ONNX Runtime is not installed here (no network), so it is not measured.

Frames are real medbench frames (evenly spaced, preprocessed at the model's 64 px by `load_benchmark`, upsampled for
224) when `--bench` is given, random uint8 noise otherwise; speed does not depend on content, agreement does.

    /root/.cache/m3ret-bootstrap/bin/python benchmarks/embed.py [--quick] [--sizes 64 224] [--frames 512 64] \
        [--repeats 2] [--compile 64] [--encoder /work/exp/models/simdino/encoder.pt] \
        [--bench ../shared/data/medbench] [--cache data/cache/bench] [--bench-images 2000]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
import torch.nn.functional as F
from pretrain import count_flops, matmul_flops  # benchmarks/pretrain.py, next to this script
from torch import Tensor, nn

from m3ret.config import EmbedConfig, ModelConfig, PreprocessConfig, load_params, replace
from m3ret.data.frame_store import ShardWriter, write_frames_table
from m3ret.eval.benchmark import Benchmark, evaluate_encoder, load_benchmark
from m3ret.eval.retrieval_metrics import rank_gallery
from m3ret.models.encoder import Encoder, build_encoder, load_encoder
from m3ret.models.frame_vectors import pool_frames

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
SMALL_224 = ("vit_small_patch16_224", 16)
N_QUERIES, TOP_K = 100, 10


@dataclass(frozen=True)
class Row:
    size: int
    model: str
    variant: str
    batch: int
    threads: int
    seconds: float  # fastest run over all frames
    n_images: int
    flops_per_image: float
    note: str = ""

    @property
    def images_per_s(self) -> float:
        return self.n_images / self.seconds


# ------------------------------------------------------------------------------------------------- frames
def make_frames(n: int, size: int, source: Benchmark | None) -> np.ndarray:
    """uint8 [n, size, size, 3]: evenly spaced benchmark frames (resized from their size when it differs), or noise."""
    if source is None:
        return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    picks = np.linspace(0, len(source.frame_ids) - 1, n).round().astype(np.int64)
    frames = source.store.get(source.frame_ids[picks])
    if frames.shape[1] == size:
        return frames
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def write_store(root: Path, frames: np.ndarray) -> None:
    """A frame store as the preprocess stage leaves it: shards of `preprocess.shard_frames` + frames.parquet."""
    n, size = len(frames), frames.shape[1]
    writer = ShardWriter(root, size, PreprocessConfig().shard_frames)
    shards, rows = zip(*writer.append(frames), strict=True)
    writer.close()
    table = pd.DataFrame(
        {
            "frame_id": np.arange(n),
            "item_id": [f"item{i // 8:06d}" for i in range(n)],
            "plane": "",
            "volume_index": 0,
            "frame_index": np.arange(n) % 8,
            "timestamp": 0.0,
            "shard": np.asarray(shards),
            "row": np.asarray(rows),
        }
    )
    write_frames_table(root, table, size)


# ------------------------------------------------------------------------------------------------- models
def model_for(size: int, base: ModelConfig) -> ModelConfig:
    if size == base.img_size:
        return base
    if size == 224:
        return replace(base, name=SMALL_224[0], img_size=224, patch_size=SMALL_224[1])
    raise ValueError(f"no model for size {size}: use {base.img_size} (params.yaml pretrain.model) or 224 (ViT-S/16)")


def encoder_for(cfg: ModelConfig, trained: Path | None) -> tuple[Encoder, str]:
    """The trained encoder when its geometry is `cfg`'s, else a random-init one (speed does not depend on weights)."""
    if trained is not None:
        encoder = load_encoder(trained)
        if (encoder.cfg.name, encoder.cfg.img_size, encoder.cfg.patch_size) == (cfg.name, cfg.img_size, cfg.patch_size):
            return encoder, "trained"
    torch.manual_seed(0)
    return build_encoder(cfg).eval(), "random init"


def plain_model(cfg: ModelConfig) -> nn.Module:
    return timm.create_model(
        cfg.name, pretrained=False, num_classes=0, img_size=cfg.img_size, patch_size=cfg.patch_size
    ).eval()


def plain_loop(model: nn.Module, frames: np.ndarray, batch: int, layout: str = "as permuted") -> Tensor:
    """The plain reference: numpy batches -> float [B, 3, S, S] -> model -> F.normalize, float32 [N, D]."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(frames), batch):
            x = torch.from_numpy(frames[start : start + batch]).permute(0, 3, 1, 2).float().div_(255.0)
            if layout == "contiguous":
                x = x.contiguous()
            elif layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(F.normalize(model(x), dim=-1))
    return torch.cat(out)


def quantized(encoder: Encoder) -> Encoder:
    """A copy of `encoder` with every nn.Linear dynamically quantised to int8 (weights int8, activations per batch)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao (not installed)
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(encoder), {nn.Linear}, dtype=torch.qint8)


def compiled(encoder: Encoder) -> Encoder:
    """A copy whose backbone forward is `torch.compile`d (Encoder.forward calls vit.forward_features, not vit())."""
    twin = copy.deepcopy(encoder)
    twin.vit.forward_features = torch.compile(twin.vit.forward_features)
    return twin


# ------------------------------------------------------------------------------------------------- timing
def fastest_run(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Seconds of the fastest of `repeats` calls of `fn`, and the last call's result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def as_numpy(vectors: object) -> np.ndarray:
    return vectors.numpy() if isinstance(vectors, Tensor) else np.asarray(vectors)


def agreement(ref: np.ndarray, other: np.ndarray) -> tuple[float, float, float]:
    """(mean, min) cosine of matching rows, and the mean fraction of shared top-10 neighbours (first 100 rows as
    queries against all rows, the query itself excluded) when both sets rank the same gallery."""
    cos = np.sum(ref * other, axis=1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(other, axis=1), 1e-12)
    q, ids = min(N_QUERIES, len(ref)), np.arange(len(ref))
    k = min(TOP_K, len(ref) - 1)
    a = rank_gallery(ref[:q], ref, ids[:q], ids, k)
    b = rank_gallery(other[:q], other, ids[:q], ids, k)
    overlap = np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)])
    return float(cos.mean()), float(cos.min()), float(overlap)


@dataclass
class SizeResult:
    rows: list[Row]
    agreement: dict[str, tuple[float, float, float]]
    medbench: dict[str, float]


def bench_size(cfg: ModelConfig, frames: np.ndarray, args: argparse.Namespace, bench: Benchmark | None) -> SizeResult:
    default_threads = torch.get_num_threads()
    size, n = cfg.img_size, len(frames)
    model_name = cfg.name.removesuffix("_patch16_224") + f"/p{cfg.patch_size}"
    encoder, origin = encoder_for(cfg, args.encoder)
    plain = plain_model(cfg)
    warm = frames[: min(8, n)]
    flops_plain = count_flops(lambda: plain_loop(plain, warm, 8)) / len(warm)
    flops_enc = count_flops(lambda: encoder.embed(warm)) / len(warm)
    rows: list[Row] = []
    vectors: dict[str, np.ndarray] = {}
    batch = EmbedConfig().batch_size

    with tempfile.TemporaryDirectory(prefix="m3ret-embed-bench-") as tmp:
        store = Path(tmp) / "frames"
        write_store(store, frames)

        def run(variant: str, fn: Callable[[], object], bsz: int, threads: int, flops: float, note: str = "") -> None:
            torch.set_num_threads(threads)
            try:
                seconds, out = fastest_run(fn, args.repeats)
            finally:
                torch.set_num_threads(default_threads)
            vectors[variant] = as_numpy(out)
            rows.append(Row(size, model_name, variant, bsz, threads, seconds, n, flops, note))
            print(f"  {size} px {variant:<44} {n / seconds:8.1f} img/s", flush=True)

        def m3ret(enc: Encoder, bsz: int, workers: int) -> Callable[[], np.ndarray]:
            return lambda: pool_frames(enc, store, n, bsz, workers)

        # one untimed batch through each model: lazy init, allocator, oneDNN primitive caches
        plain_loop(plain, frames[:batch], batch)
        encoder.embed(frames[:batch])
        t = default_threads
        run("plain timm loop (reference)", lambda: plain_loop(plain, frames, batch), batch, t, flops_plain)
        run("m3ret pool_frames, 1 worker", m3ret(encoder, batch, 1), batch, t, flops_enc, origin)
        run("m3ret pool_frames, 0 workers", m3ret(encoder, batch, 0), batch, t, flops_enc, origin)
        run("m3ret Encoder.embed, frames in memory", lambda: encoder.embed(frames, batch), batch, t, flops_enc)
        run("plain, 1 thread", lambda: plain_loop(plain, frames, batch), batch, 1, flops_plain)
        run("m3ret pool_frames, 1 thread", m3ret(encoder, batch, 1), batch, 1, flops_enc)
        run("plain, batch 64", lambda: plain_loop(plain, frames, 64), 64, t, flops_plain)
        run("m3ret pool_frames, batch 64", m3ret(encoder, 64, 1), 64, t, flops_enc)
        run(
            "plain, NCHW-contiguous input",
            lambda: plain_loop(plain, frames, batch, "contiguous"),
            batch,
            t,
            flops_plain,
        )
        plain_cl = copy.deepcopy(plain).to(memory_format=torch.channels_last)
        plain_loop(plain_cl, frames[:batch], batch, "channels_last")
        run(
            "plain, channels_last model + input",
            lambda: plain_loop(plain_cl, frames, batch, "channels_last"),
            batch,
            t,
            flops_plain,
        )
        if size in args.compile:
            twin = compiled(encoder)
            start = time.perf_counter()
            twin.embed(frames[:batch], batch)  # compiles for full batches; a smaller last batch recompiles once
            note = f"compile {time.perf_counter() - start:.0f} s, not counted"
            run("m3ret pool_frames, torch.compile", m3ret(twin, batch, 1), batch, t, flops_enc, note)
        q8 = quantized(encoder)
        q8.embed(frames[:batch])
        run("m3ret pool_frames, int8 dynamic quant", m3ret(q8, batch, 1), batch, t, flops_enc, "FLOPs as fp32")
        run("m3ret pool_frames, int8 + 1 thread", m3ret(q8, batch, 1), batch, 1, flops_enc, "FLOPs as fp32")

        def bf16() -> np.ndarray:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return pool_frames(encoder, store, n, batch, 1)

        run("m3ret pool_frames, bf16 autocast", bf16, batch, t, flops_enc)
        # the load of a shared machine drifts during the rows: the faster reference of the first and last is the base
        run("plain timm loop (reference, again)", lambda: plain_loop(plain, frames, batch), batch, t, flops_plain)

    ref = vectors["m3ret pool_frames, 1 worker"]
    alternatives = ["m3ret pool_frames, int8 dynamic quant", "m3ret pool_frames, bf16 autocast"]
    if size in args.compile:
        alternatives.append("m3ret pool_frames, torch.compile")
    agree = {name: agreement(ref, vectors[name]) for name in alternatives}
    medbench: dict[str, float] = {}
    if bench is not None and origin == "trained" and args.bench_images != 0:
        speed = {r.variant: r.images_per_s for r in rows}
        best = max(alternatives[:2], key=speed.__getitem__)
        medbench = medbench_map(encoder, q8 if "int8" in best else None, best, bench, args.bench_images)
    return SizeResult(rows, agree, medbench)


def medbench_map(
    encoder: Encoder, q8: Encoder | None, best: str, bench: Benchmark, max_images: int
) -> dict[str, float]:
    """mAP@10 (medbench protocol) of the fp32 encoder and of `best` on the same (optionally sub-sampled) benchmark."""
    if 0 < max_images < len(bench.items):
        bench = bench.subset(np.sort(np.random.default_rng(0).choice(len(bench.items), max_images, replace=False)))

    def fp32(batch: np.ndarray) -> np.ndarray:
        return encoder.embed(batch).numpy()

    def alternative(batch: np.ndarray) -> np.ndarray:
        if q8 is not None:
            return q8.embed(batch).numpy()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return encoder.embed(batch).numpy()

    out = {}
    for name, fn in (("fp32", fp32), (best, alternative)):
        result = evaluate_encoder(fn, bench)
        out[name] = result.mean["mAP@10"]
        print(f"  medbench ({len(bench.items)} images) {name}: mAP@10 {out[name]:.4f}", flush=True)
    return out


# ----------------------------------------------------------------------------------------------- printing
def speed_table(rows: list[Row], matmul: float) -> str:
    lines = [
        "| px | model | variant | batch | threads | img/s | x plain | GFLOP/img | GFLOP/s | x matmul | note |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    ref: dict[int, Row] = {}
    for r in rows:
        if r.variant.startswith("plain timm loop") and (r.size not in ref or r.seconds < ref[r.size].seconds):
            ref[r.size] = r
    for r in rows:
        flops_s = r.flops_per_image * r.images_per_s
        lines.append(
            f"| {r.size} | {r.model} | {r.variant} | {r.batch} | {r.threads} | {r.images_per_s:.1f} "
            f"| {r.images_per_s / ref[r.size].images_per_s:.2f} | {r.flops_per_image / 1e9:.2f} | {flops_s / 1e9:.1f} "
            f"| {flops_s / matmul:.2f} | {r.note} |"
        )
    return "\n".join(lines)


def agreement_table(results: dict[int, SizeResult]) -> str:
    lines = [
        f"| px | variant vs fp32 | mean cosine | min cosine | top-{TOP_K} overlap |",
        "|---:|---|---:|---:|---:|",
    ]
    for size, res in results.items():
        for name, (mean, low, overlap) in res.agreement.items():
            short = name.removeprefix("m3ret pool_frames, ")
            lines.append(f"| {size} | {short} | {mean:.5f} | {low:.5f} | {overlap:.3f} |")
    return "\n".join(lines)


def machine_line() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"machine: {platform.machine()} {platform.processor() or ''}, {cores} usable cores, load average {load}; "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}), timm {timm.__version__}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames, one run per row")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224], help="64: ViT-Ti/8, 224: ViT-S/16")
    parser.add_argument("--frames", type=int, nargs="+", help="frames per size (default 512 64; --quick 128 32)")
    parser.add_argument("--repeats", type=int, help="timed runs per row, the fastest kept (default 2; --quick 1)")
    parser.add_argument(
        "--compile", type=int, nargs="*", default=[], help="sizes to time torch.compile at (minutes of compiling each)"
    )
    parser.add_argument("--encoder", type=Path, help="a trained encoder.pt; used for the size it was trained at")
    parser.add_argument("--bench", type=Path, help="labeled folder (medbench): real frames, and mAP@10 with --encoder")
    parser.add_argument("--cache", type=Path, default=ROOT / "data/cache/bench", help="preprocessed benchmark cache")
    parser.add_argument("--bench-images", type=int, default=2000, help="medbench images for mAP@10 (0: skip, -1: all)")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="source of pretrain.model")
    args = parser.parse_args(argv)
    frames_per = args.frames or ([128, 32] if args.quick else [512, 64])
    if len(frames_per) == 1:
        frames_per *= len(args.sizes)
    if len(frames_per) != len(args.sizes):
        parser.error(f"--frames needs one count per size ({len(args.sizes)}), got {len(frames_per)}")
    args.repeats = args.repeats or (1 if args.quick else 2)
    params = load_params(args.params)
    base = params.pretrain.model

    print(machine_line())
    print("ONNX Runtime: not installed here (no network), not measured")
    started = time.perf_counter()
    matmul_start = matmul_flops(CPU, torch.float32, 1024)
    prep = replace(params.preprocess, size=base.img_size)
    source = None if args.bench is None else load_benchmark(args.bench, params.read, prep, args.cache)
    results: dict[int, SizeResult] = {}
    for size, n in zip(args.sizes, frames_per, strict=True):
        cfg = model_for(size, base)
        bench = source if size == base.img_size else None
        results[size] = bench_size(cfg, make_frames(n, size, source), args, bench)
    matmul = max(matmul_start, matmul_flops(CPU, torch.float32, 1024))
    print(
        f"\nfp32 matmul 1024x1024: {matmul_start / 1e9:.1f} GFLOP/s at the start, reference (best of start/end) "
        f"{matmul / 1e9:.1f} GFLOP/s; frames: {'medbench images' if source is not None else 'random uint8'}\n"
    )
    print(speed_table([r for res in results.values() for r in res.rows], matmul))
    print()
    print(agreement_table(results))
    for size, res in results.items():
        if res.medbench:
            scores = ", ".join(f"{name} {value:.4f}" for name, value in res.medbench.items())
            print(f"\nmedbench mAP@10 at {size} px (trained encoder): {scores}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s; at the end: load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
