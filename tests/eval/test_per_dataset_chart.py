"""The per-dataset bar chart: one group per dataset and the mean, one bar per model, written beside per_dataset.csv."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer
from PIL import Image

from m3ret.eval.index_evaluation import IndexEvaluation, write_evaluation_outputs
from m3ret.eval.per_dataset_chart import PER_DATASET_PNG, per_dataset_chart
from m3ret.eval.retrieval_metrics import RetrievalResult

MAP = {"encoder": {"d0": 0.7, "d1": 0.5}, "random init": {"d0": 0.6, "d1": 0.55}, "raw pixels": {"d0": 0.65}}


def _evaluation(per_dataset_map: dict[str, float]) -> IndexEvaluation:
    per_dataset = {
        d: {"P@1": v, "mAP@10": v, "R@10": 1.0, "n_query": 4, "n_gallery": 8} for d, v in per_dataset_map.items()
    }
    mean = {"P@1": 0.0, "mAP@10": float(np.mean(list(per_dataset_map.values()))), "R@10": 1.0}
    empty = np.zeros((0, 10))
    return IndexEvaluation(RetrievalResult(per_dataset, mean), {}, 1.0, {"all": 1.0}, empty.astype(np.int64), empty)


def test_evaluation_outputs_include_the_chart_of_the_csv(tmp_path) -> None:
    write_evaluation_outputs({name: _evaluation(m) for name, m in MAP.items()}, tmp_path)
    with Image.open(tmp_path / PER_DATASET_PNG) as image:
        assert image.format == "PNG" and image.width > image.height > 300

    table = pd.read_csv(tmp_path / "per_dataset.csv")
    ax = per_dataset_chart(table).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["d0", "d1", "mean"]  # a group per dataset, the mean last
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [c.get_label() for c in bars] == list(MAP)  # a bar per model in each group
    heights = {c.get_label(): [b.get_height() for b in c] for c in bars}
    assert heights["encoder"] == pytest.approx([0.7, 0.5, 0.6])
    assert heights["raw pixels"][0] == 0.65 and np.isnan(heights["raw pixels"][1])  # raw pixels has no d1 row
    assert ax.get_ylabel() == "mAP@10"
    labels = {t.get_text() for t in ax.texts}
    assert {"0.700", "0.500", "0.600"} <= labels and "nan" not in labels  # value labels, none on a missing bar
    assert per_dataset_chart(table, "P@1").axes[0].get_ylabel() == "P@1"
