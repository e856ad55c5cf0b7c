"""The service's error answers: a JSON body with the reason, and for load shedding 503 with Retry-After, counted.

Overload is answered by design, in two places, each counted in `m3ret_shed_requests_total{reason}`:
`in_flight_limit` (more uploads in flight than `serve.max_in_flight`, refused before the body is read) and
`encoder_budget` (the encoder service could not form a batch within its latency budget). `encoder_error` counts a
failure of the encoder service itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import bentoml
from starlette.responses import JSONResponse

from m3ret.data.errors import InputError, InputTooLargeError, UnreadableInputError

RETRY_AFTER_S = 2
SHED = bentoml.metrics.Counter(
    name="m3ret_shed_requests",
    documentation="Requests answered 503 with Retry-After: service or encoder at capacity, or the encoder failed",
    labelnames=["reason"],
)


def error_response(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)


def shed_response(reason: str, message: str) -> JSONResponse:
    """503 with Retry-After, counted under `reason`."""
    SHED.labels(reason=reason).inc()
    response = error_response(503, message)
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


@dataclass
class Refused:
    """An upload the service will not search: its HTTP status and the reason for the client."""

    status: int
    reason: str


def input_refusal(err: InputError, hide: tuple[str, ...]) -> Refused:
    """A bad upload: 413 for anything beyond a limit, 415 for a kind m3ret does not read, 422 for a broken file.
    Decoders quote the file's path; the server's temporary folders (`hide`) are no business of the client."""
    reason = err.reason
    for folder in hide:
        reason = re.sub(re.escape(folder) + r"/?\S*", "<upload>", reason)
    if isinstance(err, InputTooLargeError):
        return Refused(413, reason)
    if isinstance(err, UnreadableInputError):
        return Refused(422, reason)
    return Refused(415, reason)
