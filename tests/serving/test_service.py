"""The retrieval service over HTTP (`bentoml serve` on a tiny real index): every endpoint, every input kind, and the
bad inputs each refused with a 4xx and a reason while the service keeps answering."""

from __future__ import annotations

import concurrent.futures
import io
import re
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
from hostile import hostile_uploads
from PIL import Image

if TYPE_CHECKING:
    from conftest import Served

pytestmark = pytest.mark.slow
TIMEOUT = 120.0


def _post(served: Served, route: str, path: Path | None = None, content: bytes | None = None, **form) -> httpx.Response:
    name = path.name if path is not None else "upload.bin"
    body = path.read_bytes() if path is not None else content
    data = {key: str(value) for key, value in form.items()}
    return httpx.post(
        f"{served.url}{route}", files={"file": (name, body)}, data=data, headers=served.auth, timeout=TIMEOUT
    )


def _search(served: Served, path: Path, **form) -> dict:
    response = _post(served, "/search", path, **form)
    assert response.status_code == 200, response.text
    return response.json()


def test_near_copies_come_back_first(served: Served) -> None:
    jpeg = _search(served, served.queries["jpeg_copy"], k=5)
    assert jpeg["hits"][0]["dataset"] == "photos"
    top = jpeg["hits"][0]["item_id"]
    png = _search(served, served.queries["png_noisy"], k=5)
    assert png["hits"][0]["dataset"] == "photos" and png["hits"][0]["item_id"] != top
    # the gallery's own original PNG is its own best hit, and it is the JPEG's best hit too
    original = _search(served, served.root / "src" / "photos" / "checker.png", k=1)
    assert original["hits"][0]["item_id"] == top
    assert original["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_response_shape_and_allow_listed_fields(served: Served) -> None:
    result = _search(served, served.queries["jpeg_copy"], k=3)
    assert set(result) == {"model_version", "query", "hits", "timing_ms"}
    assert set(result["timing_ms"]) == {"decode", "encode", "search"}
    assert result["query"]["kind"] == "image" and result["query"]["n_frames"] == 1
    assert result["query"]["preview_png"].startswith("data:image/png;base64,")
    assert [hit["rank"] for hit in result["hits"]] == [1, 2, 3]
    scores = [hit["score"] for hit in result["hits"]]
    assert scores == sorted(scores, reverse=True)
    allowed = {"rank", "score", "item_id", "level", "modality", "dataset", "kind", "split", "label", "frame_index"}
    for hit in result["hits"]:
        assert set(hit) == allowed | {"thumbnail_url"}
        assert hit["level"] == "series"
    assert "source_path" not in str(result) and "src/photos" not in str(result)


@pytest.mark.parametrize(
    ("query", "kind", "dataset"),
    [
        ("dicom_file", "image", None),
        ("dicom_zip", "volume", "ct"),
        ("nifti", "volume", "mri"),
        ("video", "video", "endo"),
    ],
)
def test_every_input_kind(served: Served, query: str, kind: str, dataset: str | None) -> None:
    result = _search(served, served.queries[query], k=4)
    assert result["query"]["kind"] == kind
    assert result["query"]["n_frames"] >= 1
    if dataset is not None:  # the same series/volume/clip is in the index: it is its own nearest neighbour
        assert result["hits"][0]["dataset"] == dataset
        assert result["hits"][0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_modality_filter_and_frame_level(served: Served) -> None:
    result = _search(served, served.queries["jpeg_copy"], k=served.max_k, modality="mr")
    assert result["hits"] and all(hit["modality"] == "mr" for hit in result["hits"])
    frames = _search(served, served.queries["nifti"], k=6, level="frame")
    assert len(frames["hits"]) == 6
    assert all(hit["level"] == "frame" and hit["frame_index"] >= 0 for hit in frames["hits"])
    assert frames["hits"][0]["dataset"] == "mri"
    url = frames["hits"][0]["thumbnail_url"]
    assert "?frame=" in url
    thumb = httpx.get(f"{served.url}{url}", headers=served.auth, timeout=TIMEOUT)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(thumb.content)).size == (64, 64)


def test_thumbnail_of_series_and_unknown_item(served: Served) -> None:
    hit = _search(served, served.queries["video"], k=1)["hits"][0]
    response = httpx.get(f"{served.url}{hit['thumbnail_url']}", headers=served.auth, timeout=TIMEOUT)
    assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
    missing = httpx.get(f"{served.url}/thumbnail/nope", headers=served.auth, timeout=TIMEOUT)
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


def test_embed_returns_a_unit_vector(served: Served) -> None:
    response = _post(served, "/embed", served.queries["nifti"])
    assert response.status_code == 200, response.text
    body = response.json()
    vector = np.asarray(body["vector"])
    assert body["dim"] == served.dim == vector.shape[0]
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert body["frame_vectors_shape"][1] == served.dim and body["frame_vectors_shape"][0] > 1


def test_health_readiness_and_metrics(served: Served) -> None:
    health = httpx.get(f"{served.url}/healthz", timeout=TIMEOUT).json()
    assert health["status"] == "ok"
    assert health["collection"] == f"m3ret_test_{health['model_version']}"
    assert health["rows"] > served.n_series
    assert httpx.get(f"{served.url}/readyz", timeout=TIMEOUT).status_code == 200
    _search(served, served.queries["png_noisy"], k=2)
    metrics = httpx.get(f"{served.url}/metrics", headers=served.auth, timeout=TIMEOUT).text
    for step in ("decode", "encode", "search"):
        count = re.search(rf'm3ret_step_seconds_count{{[^}}]*step="{step}"[^}}]*}} ([0-9.e+]+)', metrics)
        assert count and float(count.group(1)) >= 1, step
        assert re.search(rf'm3ret_step_seconds_bucket{{[^}}]*step="{step}"', metrics), step
    assert "adaptive_batch_size" in metrics


def test_bad_inputs_are_refused_with_reasons(served: Served, tmp_path: Path) -> None:
    cases = hostile_uploads(served, tmp_path)
    for name, (content, statuses, words) in cases.items():
        response = _post(served, "/search", content=content)
        assert response.status_code in statuses, (name, response.status_code, response.text)
        reason = response.json()["error"]
        assert reason and words in reason, (name, reason)
        assert "/tmp" not in reason, (name, reason)
    good = _search(served, served.queries["jpeg_copy"], k=2)
    assert len(good["hits"]) == 2


@pytest.mark.parametrize(
    ("form", "words"),
    [
        ({"k": 0}, "k must be"),
        ({"k": 10_000}, "k must be"),
        ({"level": "patient"}, "level"),
        ({"modality": 'ct" or level != "x'}, "modality"),
    ],
)
def test_bad_parameters_are_400(served: Served, form: dict, words: str) -> None:
    response = _post(served, "/search", served.queries["png_noisy"], **form)
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]


def test_concurrent_searches_share_the_encoder(served: Served) -> None:
    """Concurrent requests all succeed through the batchable encode API (and each gets its own answer)."""
    names = ["jpeg_copy", "png_noisy", "nifti", "video"] * 2
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: _search(served, served.queries[n], k=1), names))
    kinds = [r["query"]["kind"] for r in results]
    assert kinds == ["image", "image", "volume", "video"] * 2


def test_only_token_holders_get_in(served: Served) -> None:
    """401 without a token or with an unknown one, 403 with a revoked one, on every route that serves data
    (thumbnails and /metrics included); the probes and the page shell stay open; no token reaches the log."""
    photo = served.queries["png_noisy"]
    hit = _search(served, photo, k=1)["hits"][0]
    routes = [("post", "/search"), ("post", "/embed"), ("post", "/explain"), ("get", hit["thumbnail_url"])]
    routes.append(("get", "/metrics"))
    for method, route in routes:
        for headers, status in (({}, 401), ({"Authorization": "Bearer m3r_made_up"}, 401),
                                ({"Authorization": f"Bearer {served.revoked}"}, 403)):  # fmt: skip
            if method == "post":
                with photo.open("rb") as fh:
                    response = httpx.post(f"{served.url}{route}", files={"file": fh}, headers=headers, timeout=TIMEOUT)
            else:
                response = httpx.get(f"{served.url}{route}", headers=headers, timeout=TIMEOUT)
            assert response.status_code == status, (route, headers, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
    for route in ("/healthz", "/readyz", "/", "/static/app.js"):
        assert httpx.get(f"{served.url}{route}", timeout=TIMEOUT).status_code == 200, route
    log = served.log.read_text(errors="replace")
    assert served.token not in log and served.revoked not in log


def test_several_files_in_one_request_get_one_ranked_list_each(served: Served) -> None:
    """`files` x N -> N results in order, each equal to searching that file alone; a bad file gets its status and
    reason in its place and costs the others nothing."""
    names = ["jpeg_copy", "nifti", "video", "png_noisy"]
    files = [("files", (served.queries[n].name, served.queries[n].read_bytes())) for n in names]
    files.insert(2, ("files", ("note.txt", b"not an image\n" * 10)))
    response = httpx.post(f"{served.url}/search", files=files, data={"k": "3"}, headers=served.auth, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    body = response.json()
    results = body["results"]
    assert [r["index"] for r in results] == list(range(5))
    assert results[2]["status"] == 415 and results[2]["error"]
    good = [r for i, r in enumerate(results) if i != 2]
    for name, result in zip(names, good, strict=True):
        alone = _search(served, served.queries[name], k=3)
        assert [h["item_id"] for h in result["hits"]] == [h["item_id"] for h in alone["hits"]], name
        assert [h["score"] for h in result["hits"]] == pytest.approx([h["score"] for h in alone["hits"]], abs=1e-4)
        assert result["query"]["kind"] == alone["query"]["kind"]
    assert set(body["timing_ms"]) == {"decode", "encode", "search"}


@pytest.mark.parametrize(
    ("form_files", "words"),
    [
        ({"file": 1, "files": 1}, "not both"),
        ({"files": 0}, "no file"),
        ({"files": 17}, "at most 16"),
    ],
)
def test_bad_file_counts_are_400(served: Served, form_files: dict[str, int], words: str) -> None:
    body = served.queries["png_noisy"].read_bytes()
    files = [(field, ("q.png", body)) for field, count in form_files.items() for _ in range(count)]
    data = {"k": "2"}
    response = httpx.post(f"{served.url}/search", files=files or None, data=data, headers=served.auth, timeout=TIMEOUT)
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]


def test_explain_draws_the_patch_similarity_map_over_the_hit(served: Served) -> None:
    query = served.queries["jpeg_copy"]
    hit = _search(served, query, k=1)["hits"][0]
    response = _post(served, "/explain", query, item_id=hit["item_id"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    overlay = Image.open(io.BytesIO(response.content))
    assert overlay.size == (64, 64)  # serve.thumbnail_size
    thumbnail = Image.open(io.BytesIO(httpx.get(f"{served.url}{hit['thumbnail_url']}", headers=served.auth).content))
    assert np.abs(np.asarray(overlay, np.int16) - np.asarray(thumbnail.convert("RGB"), np.int16)).mean() > 5
    unknown = _post(served, "/explain", query, item_id="no-such-item")
    assert unknown.status_code == 404 and "no-such-item" in unknown.json()["error"]
    bad = _post(served, "/explain", content=b"not an image\n" * 10, item_id=hit["item_id"])
    assert bad.status_code == 415, bad.text
