"""ASGI guards in front of the retrieval API: the /healthz route, bearer tokens, the upload size limit and the
in-flight limit. Each reads the running service's settings (`serve` section) and answers before the API is called.

Order (outermost first, as added in serving/service.py): /healthz rewrite, token check, upload size, in-flight
limit; so an unauthenticated request is refused before its size is looked at or a slot is taken.
"""

from __future__ import annotations

import contextvars
from typing import Any

import bentoml

from m3ret.data.upload import MB
from serving.responses import error_response, shed_response
from serving.tokens import Access, Verdict

UPLOAD_ROUTES = ("/search", "/embed", "/explain")
# Open without a token: the probes (BentoML's and the page app's /health behind /healthz) and the page shell (HTML,
# script, style: no data; it asks for the token). Everything else needs `Authorization: Bearer <token>`.
PUBLIC_ROUTES = ("/healthz", "/health", "/readyz", "/livez", "/")
PUBLIC_PREFIXES = ("/static/",)
# a valid token's scopes, set by BearerAuth for the request it lets through (the routes run in its context)
_TOKEN_SCOPES: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("token_scopes", default=frozenset())
# Multipart framing around the files; a body beyond the upload limit by more than this is refused unread.
_FORM_OVERHEAD = 64 * 1024


class HealthzRoute:
    """BentoML's own GET /healthz (an alias of /livez) is matched before any mounted app; send it to the page app's
    /health instead, which still answers 200 while the process lives, with the model and index facts."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/healthz":
            scope = {**scope, "path": "/health", "raw_path": b"/health"}
        await self.app(scope, receive, send)


class BearerAuth:
    """Every route except PUBLIC_ROUTES / PUBLIC_PREFIXES (and /metrics with `serve.public_metrics`) needs a valid
    bearer token: 401 without one or with an unknown one, 403 with a revoked one. The token is never logged; a valid
    one's scopes are what `token_scopes()` returns while the request is served."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not self._public(scope["path"]):
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            scheme, _, token = header.partition(" ")
            tokens = bentoml.get_current_service().tokens
            access = tokens.check(token.strip()) if scheme.lower() == "bearer" else Access(Verdict.UNKNOWN)
            if access.verdict is not Verdict.VALID:
                revoked = access.verdict is Verdict.REVOKED
                reason = "this token was revoked" if revoked else "a valid bearer token is required"
                response = error_response(403 if revoked else 401, reason)
                response.headers["WWW-Authenticate"] = 'Bearer realm="m3ret"'
                await response(scope, receive, send)
                return
            _TOKEN_SCOPES.set(access.scopes)
        await self.app(scope, receive, send)

    @staticmethod
    def _public(path: str) -> bool:
        if path in PUBLIC_ROUTES or path.startswith(PUBLIC_PREFIXES):
            return True
        return path == "/metrics" and bentoml.get_current_service().serve_cfg.public_metrics


def token_scopes() -> frozenset[str]:
    """The scopes of the token that the request being served was let in with."""
    return _TOKEN_SCOPES.get()


class UploadLimit:
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
                await error_response(413, reason)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class InFlightLimit:
    """At most `serve.max_in_flight` uploads decoded, encoded and searched at once; one more is answered 503 with
    Retry-After (counted as `in_flight_limit`) before its body is read, instead of queueing without bound."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.in_flight = 0  # one event loop per worker: no lock needed between the check and the increment

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in UPLOAD_ROUTES:
            await self.app(scope, receive, send)
            return
        limit = bentoml.get_current_service().serve_cfg.max_in_flight
        if self.in_flight >= limit:
            message = f"the service is at capacity ({limit} requests in flight): retry shortly"
            await shed_response("in_flight_limit", message)(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
