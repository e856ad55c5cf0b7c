"""The pretrain flow: a named profile applied to params.yaml, then the pretrain stage, on every GPU of the machine.

With more than one CUDA device `m3ret pretrain` runs under torchrun (one process per GPU, DDP); otherwise the stage
runs in this process.
Either way the run resumes from its last checkpoint, and its metrics (the `metrics.json` the loop writes) are
returned and published as a markdown artifact.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from m3ret.config import ConfigError, load_params, profile_overrides
from m3ret.data.frame_store import FrameStore
from m3ret.stages import pretrain


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`section.key=value` overrides (as `m3ret profile` prints them for `dvc exp run -S`) set into a params mapping."""
    for override in overrides:
        dotted, _, value = override.partition("=")
        *parents, leaf = dotted.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = yaml.safe_load(value)
    return raw


@task(cache_policy=NO_CACHE)
def merged_params(params_path: str, profile: str | None) -> str:
    """The params file to train with: `params_path` itself, or with `profile` applied, written next to the run's
    metrics (`<pretrain.metrics_dir>/params.yaml`, a record of what was trained). Fails at once when the profile
    needs frames of another size than those preprocessed (rerun the pipeline with the profile first)."""
    if profile is None:
        return params_path
    raw = apply_overrides(yaml.safe_load(Path(params_path).read_text()) or {}, profile_overrides(profile))
    out = Path(raw.get("pretrain", {}).get("metrics_dir", "reports/pretrain")) / "params.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(out)
    have = FrameStore(params.preprocess.out).size
    if have != params.preprocess.size:
        raise ConfigError(
            f"profile {profile} sets preprocess.size={params.preprocess.size}, but {params.preprocess.out} holds "
            f"{have} px frames: run the pipeline with the profile first (dvc exp run $(m3ret profile {profile}))"
        )
    return str(out)


@task(cache_policy=NO_CACHE)
def train(params_path: str, max_steps: int | None, nproc: int) -> dict[str, float]:
    """The pretrain stage in this process (nproc 1) or `m3ret pretrain` under torchrun (nproc > 1); returns the
    flattened metrics."""
    if nproc > 1:
        args = ["--params", params_path, "pretrain", *(["--max-steps", str(max_steps)] if max_steps else [])]
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        subprocess.run([*launcher, "-m", "m3ret.cli", *args], check=True)
    else:
        pretrain.run(load_params(params_path), max_steps=max_steps)
    summary = json.loads((Path(load_params(params_path).pretrain.metrics_dir) / "metrics.json").read_text())
    flat = {key: float(summary[key]) for key in ("step", "images_seen") if key in summary}
    for group in ("train", "eval"):
        flat.update({f"{group}/{name}": float(value) for name, value in summary.get(group, {}).items()})
    return flat


def metrics_markdown(metrics: dict[str, float], params_path: str, nproc: int) -> str:
    lines = [f"# m3ret pretrain\n\n`{params_path}`, {nproc} process(es).\n", "| metric | value |", "| --- | --- |"]
    lines += [f"| {name} | {value:.6g} |" for name, value in sorted(metrics.items())]
    return "\n".join(lines) + "\n"


@flow(name="m3ret-pretrain", log_prints=True)
def pretrain_flow(
    params_path: str = "params.yaml", profile: str | None = None, max_steps: int | None = None
) -> dict[str, float]:
    """Pretrain with `profile` (a name from `m3ret profile --help`, None: params as they are) on every CUDA device
    (torchrun when there are several), for at most `max_steps` steps; returns the final metrics."""
    path = merged_params(params_path, profile)
    nproc = max(torch.cuda.device_count(), 1)
    metrics = train(path, max_steps, nproc)
    create_markdown_artifact(markdown=metrics_markdown(metrics, path, nproc), key="m3ret-pretrain")
    return metrics
