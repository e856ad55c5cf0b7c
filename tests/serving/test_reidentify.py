"""Back to the study, only for those allowed: a service over studies ingested from a real Orthanc through DICOMweb.

A token with the `reidentify` scope gets each hit's StudyInstanceUID, SeriesInstanceUID and a viewer link that
resolves in the PACS; every other token gets hashes only, and 403 from /study; a revoked one is refused outright."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Built, Served, build, serve

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pacs_studies import Study, write_study  # noqa: E402

from m3ret.config import SourceConfig  # noqa: E402
from serving.tokens import TokenStore  # noqa: E402

pytestmark = pytest.mark.slow
TIMEOUT = 120.0
WADO_STUDY = 'multipart/related; type="application/dicom"'


@pytest.fixture(scope="module")
def pacs_service(orthanc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, list[Study], str]]:
    """Three planted CT studies in Orthanc, indexed through DICOMweb, served; and a reidentify token."""
    orthanc.clear()
    root = tmp_path_factory.mktemp("pacs-serving")
    studies = [write_study(root / "upload" / f"study{seed}", seed=seed) for seed in range(3)]
    for study in studies:
        orthanc.upload(study.paths)
    queries = {"slice0": studies[0].paths[1], "slice2": studies[2].paths[1]}
    built: Built = build(root, (SourceConfig(dicomweb=orthanc.dicomweb, dataset="pacs"),), queries)
    reader = TokenStore(root / "tokens.json").create("radiologist", ("reidentify",))
    with serve(built, "service") as served:
        yield served, studies, reader


def _search(served: Served, token: str, query: str) -> httpx.Response:
    path = served.queries[query]
    return httpx.post(
        f"{served.url}/search",
        files={"file": (path.name, path.read_bytes())},
        data={"k": "3", "level": "frame"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=TIMEOUT,
    )


def test_a_reidentify_token_opens_the_hits_study_in_the_pacs(pacs_service) -> None:
    served, studies, reader = pacs_service
    for query, study in (("slice0", studies[0]), ("slice2", studies[2])):
        response = _search(served, reader, query)
        assert response.status_code == 200, response.text
        top = response.json()["hits"][0]
        assert top["study"]["study_instance_uid"] == study.study_uid
        assert top["study"]["series_instance_uid"] == study.series_uid
        link = top["study"]["viewer_url"]
        assert link.endswith(f"/studies/{study.study_uid}")
        opened = httpx.get(link, headers={"Accept": WADO_STUDY}, timeout=TIMEOUT)  # the link resolves in Orthanc
        assert opened.status_code == 200 and len(opened.content) > 1000
        alone = httpx.get(
            f"{served.url}/study/{top['item_id']}", headers={"Authorization": f"Bearer {reader}"}, timeout=TIMEOUT
        )
        assert alone.status_code == 200 and alone.json()["study_instance_uid"] == study.study_uid


def test_other_tokens_see_hashes_only(pacs_service) -> None:
    served, studies, reader = pacs_service
    response = _search(served, served.token, "slice0")
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    assert all("study" not in hit for hit in hits)
    assert not any(s.study_uid in response.text or s.series_uid in response.text for s in studies)
    refused = httpx.get(f"{served.url}/study/{hits[0]['item_id']}", headers=served.auth, timeout=TIMEOUT)
    assert refused.status_code == 403 and "reidentify" in refused.json()["error"]
    TokenStore(served.root / "tokens.json").revoke("radiologist")
    revoked = _search(served, reader, "slice0")
    assert revoked.status_code == 403
