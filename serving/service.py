"""The retrieval service: upload a file, get the most similar indexed cases (BentoML 1.4, `bentoml serve`).

Environment: M3RET_MODEL_TAG (BentoML model store tag, default `m3ret-encoder:latest`, see serving/model_store.py),
M3RET_PARAMS (params file for the index, serve and preprocess sections, default `params.yaml`), and the variables
every params file honours (`m3ret.config.ENVIRONMENT`: M3RET_INDEX_URI, e.g. a `milvus-lite server` or Milvus
cluster URL, and M3RET_MILVUS_TOKEN).

A query goes through the same reader, windowing, letterbox and encoder as the indexed items: the read and
preprocess settings come with the imported model, not from the local params file. Forward passes run in the encoder
service (serving/encoder_service.py, a `bentoml.depends` dependency, its own process), whose batchable API every
request's frames share (BentoML adaptive batching); when it refuses work, the request is answered 503 with
Retry-After and counted in `m3ret_shed_requests_total`.
"""

from __future__ import annotations

import base64
import logging
import os
import re
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
from starlette.responses import JSONResponse, Response
from starlette.staticfiles import StaticFiles

from m3ret.config import load_params
from m3ret.data.errors import InputError, InputTooLargeError, UnreadableInputError
from m3ret.data.thumbnails import Thumbnails, to_png
from m3ret.data.upload import MB, unpack_upload
from m3ret.index.filters import FilterError, SearchFilter
from m3ret.index.query import search_query
from m3ret.index.schema import HIT_FIELDS
from m3ret.index.vector_index import open_index
from m3ret.models.query import Query, decode_query
from serving.encoder_service import MODEL_TAG, Encoder
from serving.model_store import imported_settings
from serving.tokens import TokenStore, Verdict

log = logging.getLogger(__name__)
PAGE_DIR = Path(__file__).parent / "page"
STEP_SECONDS = bentoml.metrics.Histogram(
    name="m3ret_step_seconds",
    documentation="Seconds per request step of /search and /embed",
    labelnames=["step"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
# the encoder service refuses work beyond its batching budget (503) or its concurrency limit (429): load shed here
OVERLOAD_CODES = (HTTPStatus.SERVICE_UNAVAILABLE, HTTPStatus.TOO_MANY_REQUESTS)
RETRY_AFTER_S = 2
SHED = bentoml.metrics.Counter(
    name="m3ret_shed_requests",
    documentation="Requests answered 503 because the encoder service refused or failed them",
    labelnames=["reason"],
)
UPLOAD_ROUTES = ("/search", "/embed")
# Open without a token: the probes (BentoML's and the page app's /health behind /healthz) and the page shell (HTML,
# script, style: no data; it asks for the token). Everything else needs `Authorization: Bearer <token>`.
PUBLIC_ROUTES = ("/healthz", "/health", "/readyz", "/livez", "/")
PUBLIC_PREFIXES = ("/static/",)
# Multipart framing around the file; a body beyond the upload limit by more than this is refused unread.
_FORM_OVERHEAD = 64 * 1024

page = FastAPI(title="m3ret page", docs_url=None, redoc_url=None, openapi_url=None)
page.mount("/static", StaticFiles(directory=PAGE_DIR), name="static")


def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)


def _input_error(err: InputError, hide: tuple[str, ...]) -> JSONResponse:
    """A bad upload: 413 for anything beyond a limit, 415 for a kind m3ret does not read, 422 for a broken file.
    Decoders quote the file's path; the server's temporary folders (`hide`) are no business of the client."""
    reason = err.reason
    for folder in hide:
        reason = re.sub(re.escape(folder) + r"/?\S*", "<upload>", reason)
    if isinstance(err, InputTooLargeError):
        return _error(413, reason)
    if isinstance(err, UnreadableInputError):
        return _error(422, reason)
    return _error(415, reason)


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
    traffic={"timeout": 120, "max_concurrency": 64},
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
    async def search(self, file: Path, k: int = 10, modality: str = "", level: str = "series") -> dict[str, Any]:
        """Multipart `file` (+ `k`, `modality` ("" = any), `level` series|frame) -> the k most similar rows."""
        if not 1 <= k <= self.serve_cfg.max_k:
            return _error(400, f"k must be in 1..{self.serve_cfg.max_k}, got {k}")
        try:
            where = SearchFilter(modality=(modality,) if modality else (), level=level)
            where.expression()
        except FilterError as err:
            return _error(400, str(err))
        result = await self._query(file)
        if isinstance(result, Response):
            return result
        query, timer = result
        hits = await anyio.to_thread.run_sync(search_query, self.index, query, k, where)
        timer.done("search")
        stale = {h.fields.get("model_version") for h in hits} - {self.model_version}
        if stale:
            return _error(503, f"the index serves model {sorted(stale)}, this service embeds with {self.model_version}")
        preview = to_png(query.preview(), self.serve_cfg.thumbnail_size)
        return {
            "model_version": self.model_version,
            "query": {
                "kind": query.meta.get("kind", ""),
                "modality": query.meta.get("modality", ""),
                "n_frames": len(query.frames),
                "preview_png": "data:image/png;base64," + base64.b64encode(preview).decode("ascii"),
            },
            "hits": [self._hit(rank, hit.score, hit.fields) for rank, hit in enumerate(hits, start=1)],
            "timing_ms": timer.ms,
        }

    @bentoml.api(route="/embed")
    async def embed(self, file: Path) -> dict[str, Any]:
        """Multipart `file` -> its series-level vector (mean of its frame vectors, renormalised)."""
        result = await self._query(file)
        if isinstance(result, Response):
            return result
        query, _timer = result
        return {
            "model_version": self.model_version,
            "dim": int(query.vector.shape[0]),
            "vector": query.vector.tolist(),
            "frame_vectors_shape": list(query.frame_vectors.shape),
        }

    async def _query(self, upload: Path) -> tuple[Query, _StepTimer] | JSONResponse:
        """Decode, preprocess and encode an upload; a bad upload becomes its 4xx response."""
        timer = _StepTimer()
        with tempfile.TemporaryDirectory(prefix="m3ret-upload-") as work:
            try:
                frames, meta = await anyio.to_thread.run_sync(self._decode, upload, Path(work))
                timer.done("decode")
            except InputError as err:
                return _input_error(err, hide=(work, str(upload.parent)))
            except Exception as err:  # a decoder failing on hostile bytes must not become a 500 or a dead worker
                log.exception("decoding an upload failed")
                return _error(422, f"cannot decode the file: unexpected {type(err).__name__}")
        try:
            vectors = np.asarray(await self.encoder.to_async.encode(frames), dtype=np.float32)
        except BentoMLException as err:
            overloaded = err.error_code in OVERLOAD_CODES
            SHED.labels(reason="overload" if overloaded else "encoder error").inc()
            if not overloaded:
                log.exception("the encoder service failed")
            response = _error(503, "the encoder is at capacity: retry shortly" if overloaded else f"encoder: {err}")
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
            return response
        timer.done("encode")
        return Query.from_frame_vectors(frames, vectors, meta), timer

    def _decode(self, upload: Path, work: Path) -> tuple[np.ndarray, dict]:
        """The upload unpacked, decoded and preprocessed like indexed items -> (frames [T, S, S, 3], meta)."""
        path = unpack_upload(upload, upload.name, self.serve_cfg, work)
        return decode_query(path, self.read_cfg, self.preprocess_cfg)

    def _hit(self, rank: int, score: float, fields: dict[str, Any]) -> dict[str, Any]:
        hit: dict[str, Any] = {"rank": rank, "score": round(float(score), 6)}
        hit.update({name: fields.get(name) for name in HIT_FIELDS})
        url = f"/thumbnail/{quote(str(hit['item_id']), safe='')}"
        if hit["level"] == "frame" and int(hit["frame_index"]) >= 0:
            url += f"?frame={int(hit['frame_index'])}"
        hit["thumbnail_url"] = url
        return hit

    # ------------------------------------------------------------------------------- page and plain GETs
    @page.get("/")
    def index_page(self) -> FileResponse:
        return FileResponse(PAGE_DIR / "index.html", media_type="text/html")

    @page.get("/thumbnail/{item_id}")
    def thumbnail(self, item_id: str, frame: int | None = None) -> Response:
        if self.thumbnails is None:
            return _error(404, "this service has no frame store for thumbnails")
        try:
            png = self.thumbnails.png(item_id, frame)
        except KeyError as err:
            return _error(404, str(err.args[0]))
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @page.get("/health")
    def health(self) -> dict[str, Any]:
        """Served at GET /healthz (see `_HealthzRoute`): the model, the collection behind the alias, its rows."""
        current = self.index.current()
        return {
            "status": "ok" if current == self.collection else "not_ready",
            "model_version": self.model_version,
            "collection": current,
            "rows": self.index.count() if current else 0,
            "max_k": self.serve_cfg.max_k,
        }


class _HealthzRoute:
    """BentoML's own GET /healthz (an alias of /livez) is matched before any mounted app; send it to the page app's
    /health instead, which still answers 200 while the process lives, with the model and index facts."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/healthz":
            scope = {**scope, "path": "/health", "raw_path": b"/health"}
        await self.app(scope, receive, send)


class _UploadLimit:
    """Refuse a request body declared larger than serve.max_upload_mb with 413 before it is read; a body without
    Content-Length is checked after saving by `unpack_upload`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] in UPLOAD_ROUTES:
            declared = dict(scope["headers"]).get(b"content-length", b"0")
            limit_mb = bentoml.get_current_service().serve_cfg.max_upload_mb
            if declared.isdigit() and int(declared) > limit_mb * MB + _FORM_OVERHEAD:
                reason = f"upload is {int(declared) / MB:.1f} MB; the limit is {limit_mb} MB"
                await _error(413, reason)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _BearerAuth:
    """Every route except PUBLIC_ROUTES / PUBLIC_PREFIXES (and /metrics with `serve.public_metrics`) needs a valid
    bearer token: 401 without one or with an unknown one, 403 with a revoked one. The token is never logged."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not self._public(scope["path"]):
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            scheme, _, token = header.partition(" ")
            tokens = bentoml.get_current_service().tokens
            verdict = tokens.check(token.strip()) if scheme.lower() == "bearer" else None
            if verdict is not Verdict.VALID:
                revoked = verdict is Verdict.REVOKED
                reason = "this token was revoked" if revoked else "a valid bearer token is required"
                response = _error(403 if revoked else 401, reason)
                response.headers["WWW-Authenticate"] = 'Bearer realm="m3ret"'
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _public(path: str) -> bool:
        if path in PUBLIC_ROUTES or path.startswith(PUBLIC_PREFIXES):
            return True
        return path == "/metrics" and bentoml.get_current_service().serve_cfg.public_metrics


Retrieval.add_asgi_middleware(_HealthzRoute)
Retrieval.add_asgi_middleware(_UploadLimit)
Retrieval.add_asgi_middleware(_BearerAuth)
