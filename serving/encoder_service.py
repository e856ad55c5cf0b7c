"""The encoder as a BentoML service of its own: one batchable API that concurrent callers' frames share.

The retrieval service depends on it (`bentoml.depends`), as BentoML's model composition recommends: BentoML runs it
as its own process and forms batches from every caller's frames (adaptive batching). A batch that cannot be formed
within `serve.encoder_max_latency_ms` is refused by BentoML, and the retrieval service answers that request 503
with Retry-After. BentoML reads the batching settings when this module is imported, so they come from the params file
(M3RET_PARAMS, default `params.yaml`) at that moment.
"""

from __future__ import annotations

import os
from typing import Annotated

import bentoml
import numpy as np
from bentoml.validators import DType

from m3ret.config import load_params
from m3ret.models import explain
from serving.model_store import load_imported_encoder

MODEL_TAG = os.environ.get("M3RET_MODEL_TAG", "m3ret-encoder:latest")
SERVE = load_params(os.environ.get("M3RET_PARAMS", "params.yaml")).serve


@bentoml.service(
    name="m3ret-encoder",
    # one worker: the forward pass uses every core through torch's threads; copies would only compete for them
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
        self.encoder = load_imported_encoder(str(self.model.tag))

    @bentoml.api(
        batchable=True,
        batch_dim=0,
        max_batch_size=SERVE.encoder_max_batch_frames,
        max_latency_ms=SERVE.encoder_max_latency_ms,
    )
    def encode(self, frames: Annotated[np.ndarray, DType("uint8")]) -> np.ndarray:
        """Model-ready frames uint8 [N, S, S, 3] -> L2-normalised float32 [N, D]; concurrent callers' frames are
        concatenated along N into one forward pass."""
        return self.encoder.embed(frames).numpy()

    @bentoml.api
    def patch_tokens(self, frames: Annotated[np.ndarray, DType("uint8")]) -> np.ndarray:
        """Model-ready frames uint8 [N, S, S, 3] -> unit final patch tokens float32 [N, g, g, D], for explanation
        maps (m3ret.models.explain)."""
        return explain.patch_tokens(self.encoder, frames)
