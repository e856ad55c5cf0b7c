"""The pretrain stage: MAE or SimDINO on the stored frames, single process or DDP under torchrun, resumable.

Every step's batch is a function of (seed, epoch, rank, world size) alone and every random state is checkpointed, so a
run stopped at any checkpoint and resumed follows the same trajectory as one that never stopped.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from m3ret.config import ConfigError, OptimConfig, PretrainConfig, to_dict
from m3ret.data.frame_store import FrameBatches, FrameStore
from m3ret.models.objectives import build_objective
from m3ret.train.checkpoint import (
    ENCODER_FILE,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    save_encoder,
)
from m3ret.train.distributed import DistEnv, cleanup_distributed, init_distributed
from m3ret.train.progress import MetricWindow, ProgressReporter
from m3ret.train.schedule import lr_at

log = logging.getLogger(__name__)

# pretrain settings that leave the trajectory unchanged: a run may resume with these edited, not with any other.
RESUMABLE_KEYS = frozenset(
    {
        "workers",
        "log_every",
        "checkpoint_every",
        "out",
        "metrics_dir",
        "eval_bench",
        "eval_every",
        "eval_every_epochs",
        "eval_cache",
    }
)
KEEP_CHECKPOINTS = 2


def select_frames(store: FrameStore, splits_path: Path, splits: tuple[str, ...]) -> np.ndarray:
    """Positions in `store.table` of the frames whose item's split is in `splits`: int64 [N], ascending."""
    if "query" in splits:
        raise ConfigError(f"pretrain.splits={list(splits)} includes 'query': query items must stay unseen in training")
    try:
        table = pd.read_parquet(splits_path, columns=["item_id", "split"])
    except (ValueError, KeyError) as err:
        raise ValueError(f"{splits_path}: cannot read columns item_id, split ({err})") from err
    chosen = table.loc[table["split"].isin(splits), "item_id"]
    positions = np.flatnonzero(store.table["item_id"].isin(chosen).to_numpy())
    if not len(positions):
        raise ValueError(f"{splits_path}: no frames in {store.root} belong to items of split(s) {list(splits)}")
    return positions.astype(np.int64)


def batches_per_epoch(n_frames: int, batch_size: int, world_size: int) -> int:
    """Steps per epoch: full per-rank batches of DistributedSampler's ceil(N / world) share (one short batch if the
    share is smaller than a batch). The tail that does not fill a batch is skipped, so every rank steps in lockstep."""
    per_rank = math.ceil(n_frames / world_size)
    return max(1, per_rank // batch_size)


class StepBatchSampler(Sampler[list[int]]):
    """Batches of positions for global steps [start, stop): step s is batch `s % per_epoch` of epoch `s // per_epoch`,
    each epoch ordered by DistributedSampler's shuffle seeded with (seed, epoch) and sharded by rank.

    One sampler spans all epochs so a single DataLoader (and its workers) runs the whole training.
    """

    def __init__(self, n: int, batch_size: int, rank: int, world_size: int, seed: int, start: int, stop: int) -> None:
        self.batch_size, self.start, self.stop = batch_size, start, stop
        self.per_epoch = batches_per_epoch(n, batch_size, world_size)
        self._epochs = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, order = -1, []
        for step in range(self.start, self.stop):
            if step // self.per_epoch != epoch:
                epoch = step // self.per_epoch
                self._epochs.set_epoch(epoch)
                order = list(self._epochs)
            b = step % self.per_epoch
            yield order[b * self.batch_size : (b + 1) * self.batch_size]


def build_optimizer(objective: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay on matrices only (ndim >= 2), not on biases, norms, tokens."""
    params = [p for p in objective.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    # fused: one kernel for all tensors; the per-tensor loop dominated small CPU steps (benchmarks/pretrain.py)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True)


def pretrain(
    cfg: PretrainConfig,
    frames_dir: Path,
    splits_path: Path,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    eval_every: int = 0,
    max_steps: int | None = None,
) -> dict[str, float]:
    """Trains cfg.objective for cfg.epochs over the frames of items in cfg.splits; returns the final metrics.

    Single process, or one process per device under torchrun (DDP; NCCL on CUDA, Gloo on CPU). Per step: uint8
    [B, S, S, 3] frames -> float [B, 3, S, S] in [0, 1] on the device, `lr_at` learning rate, bf16 autocast on CUDA
    (fp32 on CPU), gradient clipping, AdamW, then `objective.on_step_end(step / total_steps)`.

    Checkpoints go to cfg.out every cfg.checkpoint_every steps and at the end (rank 0), and a run resumes from the
    latest one there with its stored total_steps, so the lr curve and data order continue unchanged. `max_steps`
    stops early (tests, benchmarks) without changing the schedule. `evaluate(encoder)` runs on rank 0 every
    `eval_every` steps (0: never; `cfg.eval_every_epochs` > 0 overrides it), before the first step and at the end,
    with the random state set aside so it cannot change training.
    Writes cfg.out/encoder.pt at the end. Returns loss and each objective log (averaged over the last report window
    and all ranks), lr, images_seen, steps, and (on rank 0) the last evaluate() result.
    """
    env = init_distributed()
    try:
        return _pretrain(env, cfg, Path(frames_dir), Path(splits_path), evaluate, eval_every, max_steps)
    finally:
        cleanup_distributed()


def _pretrain(
    env: DistEnv,
    cfg: PretrainConfig,
    frames_dir: Path,
    splits_path: Path,
    evaluate: Callable[[nn.Module], dict[str, float]] | None,
    eval_every: int,
    max_steps: int | None,
) -> dict[str, float]:
    for key in ("batch_size", "log_every", "checkpoint_every"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"pretrain.{key}={getattr(cfg, key)} must be at least 1")
    out = Path(cfg.out)
    store = FrameStore(frames_dir)
    frames = select_frames(store, splits_path, cfg.splits)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    objective = build_objective(cfg).to(env.device)
    optimizer = build_optimizer(objective, cfg.optim)

    data_id = frames_fingerprint(store, frames)
    resumed = _resume(out, cfg, data_id, objective, optimizer, env)
    if resumed is None:
        total = math.ceil(cfg.epochs * batches_per_epoch(len(frames), cfg.batch_size, env.world_size))
        step, images_seen, metrics = 0, 0, {}
        _seed_all(cfg.seed + 1 + env.rank)  # distinct masks/augmentations per rank, each reproducible
    else:
        total, step, images_seen, metrics = (resumed[k] for k in ("total_steps", "step", "images_seen", "metrics"))
    stop = total if max_steps is None else min(total, max_steps)
    if cfg.eval_every_epochs > 0:
        per_epoch = batches_per_epoch(len(frames), cfg.batch_size, env.world_size)
        eval_every = max(1, round(cfg.eval_every_epochs * per_epoch))
    log.info("pretrain %s: %d frames, step %d -> %d of %d", cfg.objective, len(frames), step, stop, total)

    on_cuda = env.device.type == "cuda"
    sampler = StepBatchSampler(len(frames), cfg.batch_size, env.rank, env.world_size, cfg.seed, step, stop)
    loader = DataLoader(
        FrameBatches(store.root, frames),
        batch_size=None,
        sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=on_cuda,
        # an explicit generator keeps the DataLoader from drawing worker seeds from the global torch RNG
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    model = objective
    if env.world_size > 1:
        model = DistributedDataParallel(objective, device_ids=[env.device.index] if on_cuda else None)
    params = [p for p in objective.parameters() if p.requires_grad]
    reporter = ProgressReporter(Path(cfg.metrics_dir), step, stop, total, images_seen) if env.is_main else None
    window = MetricWindow()
    saved_at = step if resumed is not None else -1

    objective.train()
    if evaluate and eval_every and step == 0 and stop > 0:
        _evaluate(evaluate, objective, env, reporter, step, images_seen)  # the curve starts at the initial weights
    for frames_u8 in loader:
        images = frames_u8.to(env.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        lr = lr_at(step, total, cfg.optim)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=on_cuda):
            loss, logs = model(images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.clip_grad > 0:
            logs = {**logs, "grad_norm": nn.utils.clip_grad_norm_(params, cfg.optim.clip_grad)}
        optimizer.step()
        step += 1
        images_seen += len(images) * env.world_size
        objective.on_step_end(step / total)
        window.add({**logs, "loss": loss})

        if step % cfg.log_every == 0 or step == stop:
            metrics = {**window.mean(env.world_size, step), "lr": lr}
            if reporter:
                reporter.train(step, images_seen, metrics)
        if evaluate and eval_every and step % eval_every == 0 and step != stop:
            _evaluate(evaluate, objective, env, reporter, step, images_seen)
        if step % cfg.checkpoint_every == 0 and step != stop:
            _checkpoint(out, objective, optimizer, env, cfg, data_id, step, total, images_seen, metrics)
            saved_at = step

    result = {**metrics, "images_seen": float(images_seen), "steps": float(step)}
    if evaluate:
        result.update(_evaluate(evaluate, objective, env, reporter, step, images_seen))
    if saved_at != step:
        _checkpoint(out, objective, optimizer, env, cfg, data_id, step, total, images_seen, metrics)
    if env.is_main:
        save_encoder(
            out / ENCODER_FILE, objective.encoder, to_dict(cfg.model), objective=cfg.objective, step=step,
            images_seen=images_seen,
        )  # fmt: skip
        reporter.close()
    if env.world_size > 1:
        dist.barrier()
    return result


def _evaluate(
    evaluate: Callable[[nn.Module], dict[str, float]],
    objective: nn.Module,
    env: DistEnv,
    reporter: ProgressReporter | None,
    step: int,
    images_seen: int,
) -> dict[str, float]:
    """Run `evaluate(encoder)` on rank 0 in eval mode, leaving every random state as it was."""
    if not env.is_main:
        return {}
    state = _rng_state(env.device)
    objective.eval()
    try:
        with torch.no_grad():
            metrics = {name: float(value) for name, value in evaluate(objective.encoder).items()}
    finally:
        objective.train()
        _set_rng_state(state, env.device)
    reporter.evaluation(step, images_seen, metrics)
    return metrics


def _checkpoint(
    out: Path,
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    env: DistEnv,
    cfg: PretrainConfig,
    data_id: str,
    step: int,
    total: int,
    images_seen: int,
    metrics: dict[str, float],
) -> None:
    """Save the full training state (rank 0), with every rank's random state so each rank resumes its own stream."""
    rng = [_rng_state(env.device)]
    if env.world_size > 1:
        rng = [None] * env.world_size
        dist.all_gather_object(rng, _rng_state(env.device))
    if not env.is_main:
        return
    state = {
        "model": objective.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "total_steps": total,
        "images_seen": images_seen,
        "metrics": metrics,
        "config": to_dict(cfg),
        "data": data_id,
        "rng": rng,
    }
    save_checkpoint(checkpoint_path(out, step), state)
    prune_checkpoints(out, KEEP_CHECKPOINTS)


def frames_fingerprint(store: FrameStore, frames: np.ndarray) -> str:
    """Identifies the training data: the selected frames' items and positions (new or removed data changes it)."""
    selected = store.table.iloc[frames]
    digest = hashlib.sha256(pd.util.hash_pandas_object(selected[["item_id", "frame_index"]], index=False).values)
    return digest.hexdigest()[:16]


def _resume(
    out: Path,
    cfg: PretrainConfig,
    data_id: str,
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    env: DistEnv,
) -> dict[str, Any] | None:
    """Load the latest checkpoint in `out` into `objective` and `optimizer`; None when there is none.

    Checkpoints of another run (other settings or other data, e.g. after `dvc repro` reran this stage) are removed
    and training starts over: resuming them would mix two runs. DVC's cache keeps the earlier stage outputs.
    """
    path = latest_checkpoint(out)
    if path is None:
        return None
    state = load_checkpoint(path)
    stored = {k: v for k, v in state["config"].items() if k not in RESUMABLE_KEYS}
    current = {k: v for k, v in to_dict(cfg).items() if k not in RESUMABLE_KEYS}
    changed = sorted(k for k in stored.keys() | current.keys() if stored.get(k) != current.get(k))
    if state.get("data") != data_id:
        changed.append("training frames")
    if changed:
        log.warning("%s belongs to another run (changed: %s); starting over", path, ", ".join(changed))
        if env.world_size > 1:
            dist.barrier()  # every rank has read the old checkpoint before rank 0 removes it
        if env.is_main:
            for old in list_checkpoints(out):
                old.unlink(missing_ok=True)
        return None
    objective.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if len(state["rng"]) == env.world_size:
        _set_rng_state(state["rng"][env.rank], env.device)
    else:
        log.warning("%s: written by %d processes, now %d; new random streams", path, len(state["rng"]), env.world_size)
        _seed_all(cfg.seed + 1 + env.rank + state["step"])
    log.info("resumed from %s (step %d of %d)", path, state["step"], state["total_steps"])
    return state


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _rng_state(device: torch.device) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
