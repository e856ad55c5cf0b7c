"""Bounded load through the composed service: 32 concurrent clients, a mix of every query kind. Nothing is dropped:
each request gets its answer, or a 503 with Retry-After that the shed counter records (overload by design)."""

from __future__ import annotations

import concurrent.futures
import re

import httpx
import pytest
from conftest import Served

pytestmark = pytest.mark.slow
CLIENTS = 32
REQUESTS = 96
TIMEOUT = 300.0


def _shed(served: Served) -> float:
    metrics = httpx.get(f"{served.url}/metrics", headers=served.auth, timeout=TIMEOUT).text
    return sum(
        float(v) for v in re.findall(r'm3ret_shed_requests_total\{[^}]*reason="overload"[^}]*\} ([0-9.e+]+)', metrics)
    )


def test_concurrent_clients_get_answers_or_a_counted_retry_after(served: Served) -> None:
    names = ["jpeg_copy", "png_noisy", "nifti", "video"]
    bodies = {name: served.queries[name].read_bytes() for name in names}
    shed_before = _shed(served)

    def one(i: int) -> httpx.Response:
        name = names[i % len(names)]
        files = {"file": (served.queries[name].name, bodies[name])}
        return httpx.post(f"{served.url}/search", files=files, data={"k": "3"}, headers=served.auth, timeout=TIMEOUT)

    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        responses = list(pool.map(one, range(REQUESTS)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    refused = [r for r in responses if r.status_code == 503]
    assert all(r.headers.get("retry-after") for r in refused)
    assert _shed(served) - shed_before == len(refused)
    answered = [r.json() for r in responses if r.status_code == 200]
    assert len(answered) >= REQUESTS // 2 and all(len(a["hits"]) == 3 for a in answered)
