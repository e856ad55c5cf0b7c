"""The encoder as a BentoML service of its own: one batchable API that concurrent callers' frames share.

The retrieval service depends on it (`bentoml.depends`), as BentoML's model composition recommends: BentoML runs it
as its own process and forms batches from every caller's frames (adaptive batching). A batch that cannot be formed
within `max_latency_ms` is refused by BentoML, and the retrieval service answers that request 503 with Retry-After.
"""

from __future__ import annotations

import os
from typing import Annotated

import bentoml
import numpy as np
from bentoml.validators import DType

from serving.model_store import load_imported_encoder

MODEL_TAG = os.environ.get("M3RET_MODEL_TAG", "m3ret-encoder:latest")
# an upload's frames: a volume's kept slices or a video's sampled frames, at most a few hundred
MAX_BATCH_FRAMES = 512
MAX_LATENCY_MS = 20_000


@bentoml.service(
    name="m3ret-encoder",
    # one worker: the forward pass uses every core through torch's threads; copies would only compete for them
    workers=1,
    traffic={"timeout": 120, "max_concurrency": 128},
    metrics={"enabled": True},
)
class Encoder:
    model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.encoder = load_imported_encoder(str(self.model.tag))

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=MAX_BATCH_FRAMES, max_latency_ms=MAX_LATENCY_MS)
    def encode(self, frames: Annotated[np.ndarray, DType("uint8")]) -> np.ndarray:
        """Model-ready frames uint8 [N, S, S, 3] -> L2-normalised float32 [N, D]; concurrent callers' frames are
        concatenated along N into one forward pass."""
        return self.encoder.embed(frames).numpy()
