"""The retrieval service: upload a file, get the most similar indexed cases (BentoML 1.4, `bentoml serve`).

Environment: M3RET_MODEL_TAG (BentoML model store tag, default `m3ret-encoder:latest`, see serving/model_store.py),
M3RET_PARAMS (params file for the index, serve and preprocess sections, default `params.yaml`), and the variables
every params file honours (`m3ret.config.ENVIRONMENT`: M3RET_INDEX_URI, e.g. a `milvus-lite server` or Milvus
cluster URL, and M3RET_MILVUS_TOKEN).

A query goes through the same reader, windowing, letterbox and encoder as the indexed items: the read and
preprocess settings come with the imported model, not from the local params file. Forward passes run in the encoder
service (serving/encoder_service.py, a `bentoml.depends` dependency, its own process), whose batchable API every
request's frames share (BentoML adaptive batching); when it refuses work, the request is answered 503 with
Retry-After and counted in `m3ret_shed_requests_total` (serving/responses.py). The guards in front of the API
(tokens, upload size, in-flight limit) are in serving/guards.py.
"""

from __future__ import annotations

import base64
import logging
import os
import tempfile
import time
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException
from fastapi import FastAPI
from fastapi.responses import FileResponse
from PIL import Image
from starlette.responses import JSONResponse, Response
from starlette.staticfiles import StaticFiles

from m3ret.config import load_params
from m3ret.data.errors import InputError
from m3ret.data.thumbnails import Thumbnails, to_png
from m3ret.data.upload import unpack_upload
from m3ret.index.filters import FilterError, SearchFilter
from m3ret.index.query import search_queries
from m3ret.index.schema import HIT_FIELDS, Hit
from m3ret.index.vector_index import open_index
from m3ret.models.explain import overlay_png, similarity_map
from m3ret.models.query import Query, decode_query, middle_frame
from serving.encoder_service import MODEL_TAG, Encoder
from serving.guards import BearerAuth, HealthzRoute, InFlightLimit, UploadLimit, token_scopes
from serving.model_store import imported_settings
from serving.responses import Refused, error_response, input_refusal, shed_response
from serving.study_links import StudyLinks
from serving.tokens import REIDENTIFY, TokenStore

# under BentoML's logger, whose INFO lines `bentoml serve` shows (it keeps the root logger at WARNING)
log = logging.getLogger(f"bentoml.{__name__}")
PAGE_DIR = Path(__file__).parent / "page"
STEP_SECONDS = bentoml.metrics.Histogram(
    name="m3ret_step_seconds",
    documentation="Seconds per request step of /search and /embed",
    labelnames=["step"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
# the encoder service refuses work it cannot batch within its latency budget with 503 (it has no concurrency limit
# of its own, BentoML's source of 429s)
ENCODER_REFUSAL = HTTPStatus.SERVICE_UNAVAILABLE

page = FastAPI(title="m3ret page", docs_url=None, redoc_url=None, openapi_url=None)
page.mount("/static", StaticFiles(directory=PAGE_DIR), name="static")


class _StepTimer:
    """Milliseconds per step for the response, and the same seconds into the Prometheus histogram."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._t = time.perf_counter()

    def done(self, step: str) -> None:
        now = time.perf_counter()
        STEP_SECONDS.labels(step=step).observe(now - self._t)
        self.ms[step] = round((now - self._t) * 1000, 2)
        self._t = now


@bentoml.service(
    name="m3ret-retrieval",
    # one worker: a Milvus Lite file admits one process, and the encoder is shared by batching, not by copies
    workers=1,
    # no BentoML concurrency limit (its refusal is a bare 429): serve.max_in_flight sheds load with Retry-After
    traffic={"timeout": 120},
    metrics={"enabled": True},
)
@bentoml.asgi_app(page, path="/")
class Retrieval:
    encoder_model = bentoml.models.BentoModel(MODEL_TAG)
    # the forward passes: a service of its own, whose batchable API every request's frames share
    encoder = bentoml.depends(Encoder)

    def __init__(self) -> None:
        params = load_params(os.environ.get("M3RET_PARAMS", "params.yaml"))
        index_cfg = params.index
        self.serve_cfg = params.serve
        self.tokens = TokenStore(params.serve.tokens_file)
        if not self.tokens.names():
            log.warning("no bearer tokens in %s: create one with `m3ret-serving token create NAME`", self.tokens.path)
        self.read_cfg, self.preprocess_cfg, self.model_version = imported_settings(str(self.encoder_model.tag))
        self.index = open_index(index_cfg)
        self.collection = self.index.collection_name(self.model_version)
        self.studies = StudyLinks(params.ingest.reidentify_table, params.serve.viewer_url)
        self.thumbnails: Thumbnails | None = None
        try:
            self.thumbnails = Thumbnails(Path(params.preprocess.out), params.serve.thumbnail_size)
        except FileNotFoundError:
            log.warning("no frame store at %s: thumbnails are unavailable", params.preprocess.out)
        log.info("encoder %s (model %s), index %s", self.encoder_model.tag, self.model_version, index_cfg.uri)

    def __is_ready__(self) -> bool:
        """/readyz: ready once the alias serves this encoder's collection (not before the first publish, and not
        after a newer model was published that this service cannot embed queries for)."""
        try:
            return self.index.current() == self.collection
        except Exception:  # an unreachable Milvus is "not ready", not a crashed probe
            log.exception("readiness: index unreachable")
            return False

    # ------------------------------------------------------------------------------------------ inference
    @bentoml.api(route="/search")
    async def search(
        self,
        # BentoML reads multipart files only into `Path` / `list[Path]` fields (not `Path | None`): absent is None / ()
        file: Path = None,  # type: ignore[assignment]
        files: list[Path] = (),  # type: ignore[assignment]
        k: int = 10,
        modality: str = "",
        level: str = "series",
    ) -> dict[str, Any]:
        """Multipart `file` -> the k most similar rows; or several `files` -> one ranked list per file, in order
        (`index`; a file that cannot be read gets its status and reason in its place). `k`, `modality` ("" = any) and
        `level` (series|frame) apply to every file. A token with the `reidentify` scope also gets each hit's study."""
        uploads = [file] if file is not None else list(files)
        if file is not None and files:
            return error_response(400, "send one `file` or several `files`, not both")
        if not uploads:
            return error_response(400, "no file: send `file` (one) or `files` (several)")
        if len(uploads) > self.serve_cfg.max_batch_files:
            return error_response(400, f"{len(uploads)} files; at most {self.serve_cfg.max_batch_files} per request")
        if not 1 <= k <= self.serve_cfg.max_k:
            return error_response(400, f"k must be in 1..{self.serve_cfg.max_k}, got {k}")
        try:
            where = SearchFilter(modality=(modality,) if modality else (), level=level)
            where.expression()
        except FilterError as err:
            return error_response(400, str(err))
        timer = _StepTimer()
        queries = await self._queries(uploads, timer)
        if isinstance(queries, Response):
            return queries
        found = [q for q in queries if isinstance(q, Query)]
        hits = await anyio.to_thread.run_sync(search_queries, self.index, found, k, where)
        timer.done("search")
        stale = {h.fields.get("model_version") for rows in hits for h in rows} - {self.model_version}
        if stale:
            reason = f"the index serves model {sorted(stale)}, this service embeds with {self.model_version}"
            return error_response(503, reason)
        ranked = iter(hits)
        reidentify = REIDENTIFY in token_scopes()
        results = [self._ranked(q, next(ranked), reidentify) if isinstance(q, Query) else q for q in queries]
        if file is not None:
            [result] = results
            if isinstance(result, Refused):
                return error_response(result.status, result.reason)
            return {"model_version": self.model_version, **result, "timing_ms": timer.ms}
        return {
            "model_version": self.model_version,
            # in the order of the request's `files` (BentoML renames uploads: the position is what identifies them)
            "results": [
                {"index": i, **({"status": r.status, "error": r.reason} if isinstance(r, Refused) else r)}
                for i, r in enumerate(results)
            ],
            "timing_ms": timer.ms,
        }

    @bentoml.api(route="/embed")
    async def embed(self, file: Path) -> dict[str, Any]:
        """Multipart `file` -> its series-level vector (mean of its frame vectors, renormalised)."""
        queries = await self._queries([file], _StepTimer())
        if isinstance(queries, Response):
            return queries
        [query] = queries
        if isinstance(query, Refused):
            return error_response(query.status, query.reason)
        return {
            "model_version": self.model_version,
            "dim": int(query.vector.shape[0]),
            "vector": query.vector.tolist(),
            "frame_vectors_shape": list(query.frame_vectors.shape),
        }

    @bentoml.api(route="/explain")
    async def explain(self, file: Path, item_id: str, frame: int = -1) -> Image.Image:  # answered as a PNG Response
        """Multipart `file` (the query) + a hit's `item_id` (and `frame` for a frame-level hit) -> PNG: the hit's
        stored frame with the patch-similarity map drawn over it (m3ret.models.explain): where the two agree."""
        if self.thumbnails is None:
            return error_response(404, "this service has no frame store to explain hits with")
        try:
            hit_frame = self.thumbnails.frame(item_id, None if frame < 0 else frame)
        except KeyError as err:
            return error_response(404, str(err.args[0]))
        decoded = await anyio.to_thread.run_sync(self._decode, file)
        if isinstance(decoded, Refused):
            return error_response(decoded.status, decoded.reason)
        query_frames, _meta = decoded
        tokens = await self._encoder_call("patch_tokens", np.stack([middle_frame(query_frames), hit_frame]))
        if isinstance(tokens, Response):
            return tokens
        png = overlay_png(hit_frame, similarity_map(tokens[0], tokens[1]), self.serve_cfg.thumbnail_size)
        return Response(png, media_type="image/png")

    async def _queries(self, uploads: list[Path], timer: _StepTimer) -> list[Query | Refused] | JSONResponse:
        """Decode and preprocess each upload (concurrently), then encode every decoded file's frames in one call to
        the encoder service. A bad upload is its Refused; the encoder refusing or failing is the request's 503."""
        decoded: dict[int, tuple[np.ndarray, dict] | Refused] = {}

        async def decode(i: int) -> None:
            decoded[i] = await anyio.to_thread.run_sync(self._decode, uploads[i])

        async with anyio.create_task_group() as group:
            for i in range(len(uploads)):
                group.start_soon(decode, i)
        timer.done("decode")
        outcomes = [decoded[i] for i in range(len(uploads))]
        good = [d for d in outcomes if not isinstance(d, Refused)]
        if not good:
            return outcomes
        vectors = await self._encoder_call("encode", np.concatenate([f for f, _meta in good]))
        if isinstance(vectors, Response):
            return vectors
        timer.done("encode")
        per_file = iter(np.split(vectors, np.cumsum([len(f) for f, _meta in good])[:-1]))
        queries: list[Query | Refused] = []
        for outcome in outcomes:
            if isinstance(outcome, Refused):
                queries.append(outcome)
            else:
                frames_i, meta = outcome
                queries.append(Query.from_frame_vectors(frames_i, next(per_file), meta))
        return queries

    async def _encoder_call(self, api: str, frames: np.ndarray) -> np.ndarray | JSONResponse:
        """An encoder service API on frames uint8 [N, S, S, 3] -> its float32 array; its refusal (batching budget)
        or failure -> the request's 503 with Retry-After, counted."""
        try:
            return np.asarray(await getattr(self.encoder.to_async, api)(frames), dtype=np.float32)
        except BentoMLException as err:
            if err.error_code == ENCODER_REFUSAL:
                return shed_response("encoder_budget", "the encoder is at capacity: retry shortly")
            log.exception("the encoder service failed")
            return shed_response("encoder_error", f"encoder: {err}")

    def _decode(self, upload: Path) -> tuple[np.ndarray, dict] | Refused:
        """The upload unpacked, decoded and preprocessed like indexed items -> (frames [T, S, S, 3], meta), or why
        not. A decoder failing on hostile bytes becomes a 422, never a 500 or a dead worker."""
        with tempfile.TemporaryDirectory(prefix="m3ret-upload-") as work:
            try:
                path = unpack_upload(upload, upload.name, self.serve_cfg, Path(work))
                return decode_query(path, self.read_cfg, self.preprocess_cfg)
            except InputError as err:
                return input_refusal(err, hide=(work, str(upload.parent)))
            except Exception as err:
                log.exception("decoding an upload failed")
                return Refused(422, f"cannot decode the file: unexpected {type(err).__name__}")

    def _ranked(self, query: Query, hits: list[Hit], reidentify: bool) -> dict[str, Any]:
        """One file's answer: what the model saw of the query and its ranked hits (with their studies when the
        token may `reidentify`)."""
        preview = to_png(query.preview(), self.serve_cfg.thumbnail_size)
        return {
            "query": {
                "kind": query.meta.get("kind", ""),
                "modality": query.meta.get("modality", ""),
                "n_frames": len(query.frames),
                "preview_png": "data:image/png;base64," + base64.b64encode(preview).decode("ascii"),
            },
            "hits": [self._hit(rank, hit.score, hit.fields, reidentify) for rank, hit in enumerate(hits, start=1)],
        }

    def _hit(self, rank: int, score: float, fields: dict[str, Any], reidentify: bool) -> dict[str, Any]:
        hit: dict[str, Any] = {"rank": rank, "score": round(float(score), 6)}
        hit.update({name: fields.get(name) for name in HIT_FIELDS})
        url = f"/thumbnail/{quote(str(hit['item_id']), safe='')}"
        if hit["level"] == "frame" and int(hit["frame_index"]) >= 0:
            url += f"?frame={int(hit['frame_index'])}"
        hit["thumbnail_url"] = url
        if reidentify:
            hit["study"] = self.studies.resolve(str(hit["item_id"]))
        return hit

    # ------------------------------------------------------------------------------- page and plain GETs
    @page.get("/")
    def index_page(self) -> FileResponse:
        return FileResponse(PAGE_DIR / "index.html", media_type="text/html")

    @page.get("/thumbnail/{item_id}")
    def thumbnail(self, item_id: str, frame: int | None = None) -> Response:
        if self.thumbnails is None:
            return error_response(404, "this service has no frame store for thumbnails")
        try:
            png = self.thumbnails.png(item_id, frame)
        except KeyError as err:
            return error_response(404, str(err.args[0]))
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @page.get("/study/{item_id}")
    def study(self, item_id: str) -> dict[str, Any]:
        """A hit's study (StudyInstanceUID, SeriesInstanceUID, viewer link): only for a `reidentify` token."""
        if REIDENTIFY not in token_scopes():
            return error_response(403, "this token does not have the reidentify scope")
        study = self.studies.resolve(item_id)
        if study is None:
            return error_response(404, f"no study on record for item {item_id!r} (not DICOM, or not ingested here)")
        return {"item_id": item_id, **study}

    @page.get("/health")
    def health(self) -> dict[str, Any]:
        """Served at GET /healthz (see serving/guards.HealthzRoute): the model, the collection behind the alias,
        its rows."""
        current = self.index.current()
        return {
            "status": "ok" if current == self.collection else "not_ready",
            "model_version": self.model_version,
            "collection": current,
            "rows": self.index.count() if current else 0,
            "max_k": self.serve_cfg.max_k,
        }


# outermost first: a request without a valid token is refused before its size is looked at or a slot is taken
for _guard in (HealthzRoute, BearerAuth, UploadLimit, InFlightLimit):
    Retrieval.add_asgi_middleware(_guard)
