"""Embedding on Ray: the frame store's shards through a Ray Data actor pool, one vector file per shard.

Each actor loads the encoder once (shipped from the driver through the object store, so the nodes need no model
file) and holds a GPU when the cluster has them (`engine.num_gpus_per_actor`), CPUs otherwise. A call pools one run
of frames of one shard and journals the vectors under the hash of the encoder, the device kind and the frames' bytes,
so a shard already done (a resumed run, a retried task) is not computed again. Ray Data restarts an actor that dies
and retries its shard; since a shard's file is named by its content, a retry writes the same file and nothing is
counted twice. The driver reads the files back in frame order: the vectors equal `pool_frames`' within float
tolerance (the same encoder, other batch boundaries; bf16 on a GPU, as in the local engine).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import ray
import torch
from ray.data import ActorPoolStrategy, DataContext
from tqdm import tqdm

from m3ret.config import EngineConfig, to_dict
from m3ret.data.frame_store import FrameStore
from m3ret.engines.journal import Journal
from m3ret.models.encoder import Encoder


def encoder_key(encoder: Encoder) -> str:
    """A hash of what the pooled vectors are a function of: the architecture, the readout's pooling and every weight."""
    digest = hashlib.sha256(json.dumps([to_dict(encoder.cfg), encoder.readout.pooling, encoder.readout.grid]).encode())
    for name, tensor in encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class EmbedShards:
    """A Ray Data actor: the encoder, loaded once; each call pools the frames [start, stop) of one shard."""

    def __init__(self, encoder: Encoder, frames_dir: str, journal: Journal, model_key: str, batch_size: int) -> None:
        # as many threads as CPUs held: a reused worker keeps the thread count torch got when a 1-CPU task imported it
        torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.encoder = encoder.to(self.device).eval()
        self.store = FrameStore(frames_dir)
        self.journal, self.model_key, self.batch_size = journal, f"{model_key}:{self.device}", batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        start, stop = int(batch["start"][0]), int(batch["stop"][0])
        frames = self.store.get(np.arange(start, stop))
        digest = hashlib.sha256(self.model_key.encode())
        digest.update(frames.tobytes())
        key = digest.hexdigest()
        computed = not self.journal.has(key)
        tic = time.perf_counter()
        if computed:
            self.journal.save(key, self.encoder.pooled(frames, batch_size=self.batch_size).numpy())
        seconds = time.perf_counter() - tic
        return {"start": [start], "stop": [stop], "key": [key], "computed": [computed], "seconds": [seconds]}


def _pool_size(cfg: EngineConfig, shards: int) -> tuple[int, float]:
    """(actors, GPUs per actor) for this cluster (`EngineConfig`'s rule), never more actors than shards."""
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    per_actor = cfg.num_gpus_per_actor if cfg.num_gpus_per_actor is not None else (1.0 if gpus else 0.0)
    fits = int(gpus / per_actor) if per_actor else int(resources.get("CPU", 1) / cfg.cpus_per_task)
    return max(1, min(cfg.embed_actors or fits, shards)), per_actor


def embed_on_ray(
    cfg: EngineConfig, journal: Journal, encoder: Encoder, frames_dir: Path, n_frames: int, batch_size: int
) -> tuple[torch.Tensor, dict[str, int]]:
    """(pooled vectors float32 [n_frames, D'] of the store's frames in order, `RayEngine.stats` of its shards, plus
    `actor_s`: the seconds the actors spent in the encoder). The shards' vector files are discarded once read back."""
    tic, first = time.perf_counter(), None
    store = FrameStore(frames_dir)
    if len(store) != n_frames:
        raise ValueError(f"{frames_dir} holds {len(store)} frames, not {n_frames}")
    out = torch.empty((n_frames, encoder.readout.pooled_dim), dtype=torch.float32)
    if n_frames == 0:
        return out, {"computed": 0, "from_journal": 0, "first_result_s": 0.0, "seconds": 0.0, "actor_s": 0.0}
    shard_of = store.table["shard"].to_numpy()
    bounds = [0, *(np.flatnonzero(np.diff(shard_of)) + 1).tolist(), n_frames]
    runs = [{"start": a, "stop": b} for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    actors, gpus = _pool_size(cfg, len(runs))
    DataContext.get_current().enable_progress_bars = False  # one bar, below, counting shards
    on_cpu = copy.deepcopy(encoder).cpu()  # the driver's may sit on its GPU; the actors move theirs to their own
    vectors = ray.data.from_items(runs, override_num_blocks=len(runs)).map_batches(
        EmbedShards,
        fn_constructor_args=(on_cpu, str(store.root.resolve()), journal, encoder_key(encoder), batch_size),
        batch_size=1,
        compute=ActorPoolStrategy(size=actors),
        num_cpus=cfg.cpus_per_task,
        num_gpus=gpus,
    )
    computed, actor_s, keys = 0, 0.0, []
    for row in tqdm(vectors.iter_rows(), total=len(runs), desc="embed", unit="shard", dynamic_ncols=True):
        first = first or time.perf_counter() - tic
        out[int(row["start"]) : int(row["stop"])] = torch.from_numpy(journal.load(row["key"]))
        computed += bool(row["computed"])
        actor_s += float(row["seconds"])
        keys.append(row["key"])
    journal.discard(keys)
    seconds = {"first_result_s": round(first, 3), "seconds": round(time.perf_counter() - tic, 3)}
    return out, {"computed": computed, "from_journal": len(runs) - computed, **seconds, "actor_s": round(actor_s, 3)}
