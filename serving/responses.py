"""The service's error answers: a JSON body with the reason, and for load shedding 503 with Retry-After, counted.

Overload is answered by design, in two places, each counted in `m3ret_shed_requests_total{reason}`:
`in_flight_limit` (more uploads in flight than `serve.max_in_flight`, refused before the body is read) and
`encoder_budget` (the encoder service could not form a batch within its latency budget). `encoder_error` counts a
failure of the encoder service itself.
"""

from __future__ import annotations

import bentoml
from starlette.responses import JSONResponse

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
