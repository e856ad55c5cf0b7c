"""Embedding drift with real Evidently: verdicts per scope, the statuses of untested scopes, the written report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from PIL import Image

from m3ret.config import DriftConfig, replace
from m3ret.models.embedding_set import EmbeddingSet
from m3ret.monitoring.drift import embedding_drift, write_drift_report
from m3ret.monitoring.drift_plot import DRIFTED, STEADY, THRESHOLD, UNTESTED, drift_chart
from m3ret.stages.drift import splits_drift

DIM = 16
# Evidently's own default thresholds: ROC AUC for `model`, MMD^2_u for `mmd`; and a score no chance reaches.
DEFAULT_THRESHOLD = {"model": 0.55, "mmd": 0.015}
CLEAR_DRIFT = {"model": 0.8, "mmd": 0.03}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class Corpus:
    """Unit vectors around one fixed centre per modality; `shift` moves a modality's centre, as a windowing change
    moves every embedding of that modality the same way."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        centres = _unit(self.rng.normal(size=(4, DIM))) * 2
        self.centres = dict(zip(("CT", "US", "MR", "XA"), centres, strict=True))
        self.offset = self.rng.normal(size=DIM)

    def draw(self, counts: dict[str, int], shift: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(vectors [sum(counts), DIM], modality [sum(counts)])."""
        shift = shift or {}
        parts = [
            _unit(self.centres[m] + shift.get(m, 0.0) * self.offset + self.rng.normal(size=(n, DIM)))
            for m, n in counts.items()
        ]
        return np.concatenate(parts), np.repeat(list(counts), list(counts.values()))


def _by_scope(summary: dict) -> dict[str, dict]:
    return {row["scope"]: row for row in summary["scopes"]}


@pytest.mark.parametrize("method", ["model", "mmd"])
def test_same_distribution_is_not_drift(method: str) -> None:
    # 400 rows a side: `model`'s fixed AUC threshold is crossed by chance in some seeds at smaller sizes (config doc)
    corpus = Corpus(seed=2)
    ref, ref_mod = corpus.draw({"CT": 400, "US": 400})
    cur, cur_mod = corpus.draw({"CT": 400, "US": 400})
    summary = embedding_drift(ref, ref_mod, cur, cur_mod, DriftConfig(method=method))
    assert summary["method"] == method and summary["threshold"] == DEFAULT_THRESHOLD[method]
    assert [row["scope"] for row in summary["scopes"]] == ["all", "CT", "US"]
    assert all(row["status"] == "tested" and not row["drifted"] for row in summary["scopes"])
    assert all(row["score"] < summary["threshold"] for row in summary["scopes"])
    assert summary["drifted"] is False
    assert _by_scope(summary)["all"]["n_reference"] == 800 and _by_scope(summary)["CT"]["n_current"] == 400


@pytest.mark.parametrize("method", ["model", "mmd"])
def test_a_shifted_modality_drifts_and_the_other_does_not(method: str) -> None:
    corpus = Corpus(seed=2)
    ref, ref_mod = corpus.draw({"CT": 150, "US": 150})
    cur, cur_mod = corpus.draw({"CT": 150, "US": 150}, shift={"US": 1.0})
    summary = embedding_drift(ref, ref_mod, cur, cur_mod, DriftConfig(method=method))
    scopes = _by_scope(summary)
    assert scopes["US"]["drifted"] and scopes["US"]["score"] > CLEAR_DRIFT[method]
    assert not scopes["CT"]["drifted"] and scopes["CT"]["score"] < summary["threshold"]
    assert scopes["all"]["drifted"] and summary["drifted"] is True


def test_threshold_from_config_decides() -> None:
    corpus = Corpus(seed=2)
    ref, ref_mod = corpus.draw({"US": 100})
    cur, cur_mod = corpus.draw({"US": 100}, shift={"US": 1.0})
    default = embedding_drift(ref, ref_mod, cur, cur_mod, DriftConfig(method="mmd"))
    lenient = embedding_drift(ref, ref_mod, cur, cur_mod, DriftConfig(method="mmd", threshold=10.0))
    assert default["drifted"] and not lenient["drifted"]
    assert lenient["threshold"] == 10.0 and lenient["scopes"][0]["score"] == default["scopes"][0]["score"]


def test_new_missing_and_too_few_are_reported() -> None:
    corpus = Corpus(seed=3)
    ref, ref_mod = corpus.draw({"CT": 60, "US": 40, "XA": 40})
    cur, cur_mod = corpus.draw({"CT": 60, "MR": 5, "XA": 8})
    summary = embedding_drift(ref, ref_mod, cur, cur_mod, DriftConfig(method="mmd", min_rows=20))
    scopes = _by_scope(summary)
    assert [row["scope"] for row in summary["scopes"]] == ["all", "CT", "MR", "US", "XA"]
    assert scopes["MR"] == {
        "scope": "MR",
        "status": "new modality",
        "score": None,
        "drifted": True,
        "n_reference": 0,
        "n_current": 5,
    }
    assert scopes["US"]["status"] == "missing in current" and not scopes["US"]["drifted"]
    assert scopes["XA"]["status"] == "too few rows" and scopes["XA"]["score"] is None and not scopes["XA"]["drifted"]
    assert (scopes["XA"]["n_reference"], scopes["XA"]["n_current"]) == (40, 8)
    assert scopes["CT"]["status"] == "tested" and not scopes["CT"]["drifted"]
    assert summary["drifted"] is True  # the new modality alone


def test_rows_are_sampled_to_max_rows_with_the_seed() -> None:
    corpus = Corpus(seed=4)
    ref, ref_mod = corpus.draw({"CT": 200})
    cur, cur_mod = corpus.draw({"CT": 50})
    cfg = DriftConfig(method="model", max_rows=80, seed=7)
    first = embedding_drift(ref, ref_mod, cur, cur_mod, cfg)
    assert [(row["n_reference"], row["n_current"]) for row in first["scopes"]] == [(80, 50), (80, 50)]
    assert embedding_drift(ref, ref_mod, cur, cur_mod, cfg) == first


def test_broken_configuration_or_input_fails_at_once() -> None:
    corpus = Corpus(seed=5)
    ref, ref_mod = corpus.draw({"CT": 40})
    with pytest.raises(ValueError, match="min_rows"):
        embedding_drift(ref, ref_mod, ref, ref_mod, DriftConfig(min_rows=5))
    with pytest.raises(ValueError, match="4-d"):
        embedding_drift(ref, ref_mod, ref[:, :4], ref_mod, DriftConfig())
    with pytest.raises(ValueError, match="threshold"):
        embedding_drift(ref, ref_mod, ref, ref_mod, DriftConfig(threshold="high"))  # type: ignore[arg-type]


def test_report_files_show_the_same_verdict(tmp_path) -> None:
    corpus = Corpus(seed=6)
    ref, ref_mod = corpus.draw({"CT": 24, "US": 24})
    cur, cur_mod = corpus.draw({"CT": 24, "US": 24, "MR": 3}, shift={"US": 1.5})
    cfg = DriftConfig(method="mmd", min_rows=20)
    summary = write_drift_report(ref, ref_mod, cur, cur_mod, cfg, tmp_path / "drift")
    scopes = _by_scope(summary)
    assert scopes["US"]["drifted"] and not scopes["CT"]["drifted"] and scopes["MR"]["status"] == "new modality"

    files = summary.pop("files")
    assert json.loads((tmp_path / "drift" / "drift.json").read_text()) == summary
    html = (tmp_path / "drift" / "drift.html").read_text(encoding="utf-8")
    assert "<html" in html and '<script src="http' not in html  # Evidently inlines its JS: viewable offline
    for row in summary["scopes"]:
        if row["status"] == "tested":  # each tested scope has Evidently's own EmbeddingsDrift section
            assert f"Drift in embeddings '{row['scope']}'" in html
            assert f"Drift score: {round(row['score'], 3)}" in html
    with Image.open(files["png"]) as image:
        assert image.format == "PNG"
        assert 400 <= image.width <= 1000 and 300 <= image.height <= 600  # 4 scopes at 100 dpi
        pixels = np.asarray(image.convert("RGB"))
    assert (pixels == _rgb(DRIFTED)).all(axis=-1).sum() > 100  # the drifted bars are drawn


def _rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def test_drift_chart_draws_a_bar_per_tested_scope_and_the_status_of_the_others() -> None:
    def row(scope: str, status: str, score: float | None, drifted: bool) -> dict:
        return {"scope": scope, "status": status, "score": score, "drifted": drifted, "n_reference": 30, "n_current": 2}

    summary = {
        "method": "mmd",
        "threshold": 0.015,
        "drifted": True,
        "scopes": [
            row("all", "tested", 0.05, True),
            row("CT", "tested", -0.001, False),
            row("MR", "new modality", None, True),
            row("US", "too few rows", None, False),
        ],
    }
    ax = drift_chart(summary).axes[0]
    bars = ax.patches
    assert [round(b.get_height(), 3) for b in bars] == [0.05, -0.001]
    assert [to_hex(b.get_facecolor()) for b in bars] == [DRIFTED, STEADY]
    texts = {t.get_text(): to_hex(t.get_color()) for t in ax.texts}
    assert texts["new modality"] == DRIFTED and texts["too few rows"] == UNTESTED
    assert {"0.050", "-0.001"} <= set(texts)  # value labels
    threshold = next(line for line in ax.get_lines() if line.get_linestyle() == "--")
    assert threshold.get_ydata()[0] == 0.015 and to_hex(threshold.get_color()) == THRESHOLD
    assert [t.get_text() for t in ax.get_xticklabels()] == ["all\n30 / 2", "CT\n30 / 2", "MR\n30 / 2", "US\n30 / 2"]
    assert ax.get_ylim()[0] < -0.001 and ax.get_ylim()[1] > 0.05  # the negative bar and the labels fit
    assert "DRIFT" in ax.get_title(loc="left")


def _embedding_set(corpus: Corpus) -> EmbeddingSet:
    splits = {"pretrain": {"CT": 12}, "gallery": {"CT": 8}, "query": {"CT": 16, "US": 3}, "": {"CT": 30}}
    vectors, rows = [], []
    for split, counts in splits.items():
        v, modality = corpus.draw(counts, shift={"CT": 1.5} if split == "" else None)
        vectors.append(v)
        rows += [{"modality": m, "split": split} for m in modality]
    items = pd.DataFrame(rows)
    items.insert(0, "item_id", [f"item{i:03d}" for i in range(len(items))])
    return EmbeddingSet(
        model_version="abc",
        frame_vectors=np.zeros((0, DIM), np.float32),
        frames=pd.DataFrame(),
        item_vectors=np.concatenate(vectors),
        items=items,
    )


def test_splits_drift_compares_the_configured_splits(tmp_path) -> None:
    embeddings = _embedding_set(Corpus(seed=8))
    cfg = DriftConfig(method="mmd", min_rows=16, out=str(tmp_path / "reports" / "drift"))
    summary = splits_drift(embeddings, cfg)
    scopes = _by_scope(summary)
    # unassigned items (split "", shifted here) are on neither side
    assert (scopes["all"]["n_reference"], scopes["all"]["n_current"]) == (20, 19)
    assert scopes["CT"]["status"] == "tested" and not scopes["CT"]["drifted"]
    assert scopes["US"]["status"] == "new modality" and summary["drifted"]
    written = sorted(p.name for p in (tmp_path / "reports" / "drift").iterdir())
    assert written == ["drift.html", "drift.json", "drift.png"]

    with pytest.raises(ValueError, match=r"current side in splits \['holdout'\]"):
        splits_drift(embeddings, replace(cfg, current_splits=("holdout",)))
