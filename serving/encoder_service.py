"""The encoder as a BentoML service of its own: one batchable API that concurrent callers' frames share.

The retrieval service depends on it (`bentoml.depends`), as BentoML's model composition recommends: BentoML runs it
as its own process and forms batches from every caller's frames (adaptive batching). A batch that cannot be formed
within `serve.encoder_max_latency_ms` is refused by BentoML, and the retrieval service answers that request 503
with Retry-After. BentoML reads the batching settings when this module is imported, so they come from the params file
(M3RET_PARAMS, default `params.yaml`) at that moment.

Both APIs are `async` so that the forward pass runs on the worker's main thread, the one that loaded the model,
instead of in BentoML's thread pool. torch's OpenMP parallel regions started from a second thread form a second
thread team, and on a machine with few cores every region then costs more: the same forward pass of one query frame
took 17.2 ms from a second thread and 7.7 ms on the loading one here (2 cores, benchmarks/results/serve/lite.txt).
Blocking the event loop for one forward pass costs this service nothing: forward passes are all it does, and the
requests that arrive meanwhile wait in the socket and join the next batch.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated

import bentoml
import numpy as np
import torch
from bentoml.validators import DType

from m3ret.config import load_params
from m3ret.models import explain
from serving.model_store import load_imported_encoder

MODEL_TAG = os.environ.get("M3RET_MODEL_TAG", "m3ret-encoder:latest")
# under BentoML's logger, whose INFO lines `bentoml serve` shows (it keeps the root logger at WARNING)
log = logging.getLogger(f"bentoml.{__name__}")
SERVE = load_params(os.environ.get("M3RET_PARAMS", "params.yaml")).serve


@bentoml.service(
    name="m3ret-encoder",
    # one worker: the forward pass uses serve.encoder_threads cores (default all); copies would only compete for them
    workers=1,
    # no concurrency limit of its own: the retrieval service admits at most serve.max_in_flight requests, one call
    # each; what cannot be batched in time is refused by the batching budget below
    traffic={"timeout": 120},
    # the callers' HTTP session to this service is never recycled: BentoML 1.4's default (a new session every 100
    # calls or 5 minutes) closes the shared session under calls still in flight, which fail with "Cannot write to
    # closing transport" (bentoml/BentoML#5540, #5544); over a local socket a recycled session buys nothing
    runner_connection={"max_requests": 2**31 - 1, "max_age": 1e9},
    metrics={"enabled": True},
)
class Encoder:
    model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        if SERVE.encoder_threads:
            torch.set_num_threads(SERVE.encoder_threads)
        self.encoder = load_imported_encoder(str(self.model.tag))
        log.info("encoder %s: %d torch thread(s)", self.model.tag, torch.get_num_threads())

    @bentoml.api(
        batchable=True,
        batch_dim=0,
        max_batch_size=SERVE.encoder_max_batch_frames,
        max_latency_ms=SERVE.encoder_max_latency_ms,
    )
    async def encode(self, frames: Annotated[np.ndarray, DType("uint8")]) -> np.ndarray:
        """Model-ready frames uint8 [N, S, S, 3] -> L2-normalised float32 [N, D]; concurrent callers' frames are
        concatenated along N into one forward pass."""
        return self.encoder.embed(frames).numpy()

    @bentoml.api
    async def patch_tokens(self, frames: Annotated[np.ndarray, DType("uint8")]) -> np.ndarray:
        """Model-ready frames uint8 [N, S, S, 3] -> unit final patch tokens float32 [N, g, g, D], for explanation
        maps (m3ret.models.explain)."""
        return explain.patch_tokens(self.encoder, frames)
