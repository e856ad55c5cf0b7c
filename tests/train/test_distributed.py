import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from m3ret.data.frame_store import FRAME_COLUMNS, ShardWriter, write_frames_table
from m3ret.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from m3ret.train.distributed import cleanup_distributed, init_distributed

SIZE = 32

# Each rank works in its own directory, so a checkpoint written by rank 1 would land in rank1/ and be seen.
SCRIPT = """
import dataclasses, os, sys
import torch
import m3ret.train.pretrain_loop as loop
from m3ret.config import ModelConfig, PretrainConfig

built = []
real_build = loop.build_objective


def build_and_keep(cfg):  # keeps a handle on the real objective to save this rank's final weights
    built.append(real_build(cfg))
    return built[-1]


loop.build_objective = build_and_keep
rank = os.environ["RANK"]
os.makedirs(f"rank{{rank}}")
os.chdir(f"rank{{rank}}")
cfg = PretrainConfig(
    model=ModelConfig(name="vit_tiny_patch16_224", img_size={size}, patch_size=8),
    epochs=2.0, batch_size=4, workers=0, checkpoint_every=2, log_every=1, out="model", metrics_dir="metrics",
)
result = loop.pretrain(cfg, {frames!r}, {splits!r}, max_steps=3)
assert result["steps"] == 3 and result["images_seen"] == 24, result
torch.save(built[0].state_dict(), f"../weights{{rank}}.pt")
"""


def make_data(root):
    frames = np.random.default_rng(1).integers(0, 256, size=(16, SIZE, SIZE, 3), dtype=np.uint8)
    writer = ShardWriter(root / "frames", size=SIZE, shard_frames=16)
    locations = writer.append(frames)
    writer.close()
    table = pd.DataFrame(
        {
            "frame_id": np.arange(16),
            "item_id": [f"item{i // 4}" for i in range(16)],
            "plane": "axial",
            "volume_index": 0,
            "frame_index": np.tile(np.arange(4), 4),
            "timestamp": 0.0,
            "shard": [s for s, _ in locations],
            "row": [r for _, r in locations],
        }
    )[list(FRAME_COLUMNS)]
    write_frames_table(root / "frames", table, SIZE)
    pd.DataFrame({"item_id": [f"item{i}" for i in range(4)], "split": "pretrain"}).to_parquet(root / "splits.parquet")
    return root / "frames", root / "splits.parquet"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_single_process_without_torchrun_env(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    env = init_distributed()
    assert (env.rank, env.world_size, env.local_rank, env.is_main) == (0, 1, 0, True)
    assert env.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert not dist.is_initialized()
    cleanup_distributed()


def test_two_gloo_processes_train_in_lockstep(tmp_path):
    frames, splits = make_data(tmp_path)
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT.format(size=SIZE, frames=str(frames), splits=str(splits))))
    # hide any GPU: this is the Gloo path (with CUDA, init_distributed puts each rank on its own GPU over NCCL)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"]
    cmd += ["--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    w0, w1 = torch.load(tmp_path / "weights0.pt"), torch.load(tmp_path / "weights1.pt")
    for name, tensor in w0.items():
        assert torch.equal(tensor, w1[name]), name
    # 16 frames over 2 ranks at batch 4: 2 steps per epoch, 4 in all; rank 0 alone wrote the checkpoints and the metrics
    assert [p.name for p in list_checkpoints(tmp_path / "rank0" / "model")] == ["ckpt-00000002.pt", "ckpt-00000003.pt"]
    assert (tmp_path / "rank0" / "model" / "encoder.pt").exists()
    assert (tmp_path / "rank0" / "metrics" / "metrics.json").exists()
    assert not (tmp_path / "rank1" / "model").exists() and not (tmp_path / "rank1" / "metrics").exists()
    state = load_checkpoint(latest_checkpoint(tmp_path / "rank0" / "model"))
    assert state["step"] == 3 and state["total_steps"] == 4 and len(state["rng"]) == 2
    for name, tensor in w0.items():
        assert torch.equal(tensor, state["model"][name]), name
