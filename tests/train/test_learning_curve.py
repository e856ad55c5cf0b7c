"""The learning curve: the eval series a pretrain metrics_dir holds, drawn as panels of lines against images seen."""

from __future__ import annotations

import pandas as pd
from PIL import Image

from m3ret.train.learning_curve import LEARNING_CURVE_PNG, learning_curve_figure, read_curves, write_learning_curve
from m3ret.train.progress import ProgressReporter


def _reporter(metrics_dir, start_step: int = 0) -> ProgressReporter:
    return ProgressReporter(metrics_dir, start_step=start_step, stop_step=10, total_steps=10, images_seen=0)


def test_each_evaluation_redraws_the_curve_from_the_series(tmp_path) -> None:
    reporter = _reporter(tmp_path)
    reporter.evaluation(0, 0, {"norm": 1.0})
    assert not (tmp_path / LEARNING_CURVE_PNG).exists()  # nothing to draw without mAP@10
    assert write_learning_curve(tmp_path) is None
    for step, value in ((0, 0.5), (5, 0.6), (10, 0.65)):
        reporter.evaluation(step, 4 * step, {"mAP@10": value, "b/mAP@10": value - 0.1, "a/mAP@10": value + 0.1})

    curves = read_curves(tmp_path)
    assert list(curves) == ["mean", "a", "b"]
    assert curves["mean"]["images_seen"].tolist() == [0, 20, 40] and curves["b"]["mAP@10"].iloc[-1] == 0.55
    assert read_curves(tmp_path / "plots" / "metrics" / "eval").keys() == curves.keys()  # a copied eval folder
    with Image.open(tmp_path / LEARNING_CURVE_PNG) as image:
        assert image.format == "PNG" and image.size == (3 * 504, 432)
    assert not list(tmp_path.glob("*.tmp"))

    _reporter(tmp_path, start_step=5)  # a resumed run keeps the picture, a fresh one removes it with the series
    assert (tmp_path / LEARNING_CURVE_PNG).exists()
    _reporter(tmp_path)
    assert not (tmp_path / LEARNING_CURVE_PNG).exists() and read_curves(tmp_path) == {}


def _series(values: list[float]) -> pd.DataFrame:
    steps = range(len(values))
    return pd.DataFrame({"step": steps, "images_seen": [1000 * i for i in steps], "m": values})


def test_figure_has_a_panel_per_dataset_a_line_per_run_and_the_references(tmp_path) -> None:
    runs = {
        "mae": {"mean": _series([0.5, 0.6]), "x": _series([0.4, 0.5])},
        "simdino": {"mean": _series([0.55, 0.7]), "y": _series([0.3, 0.2])},
    }
    fig = learning_curve_figure(runs, "m", refs={"raw pixels": 0.62, "random init": 0.58}, title="t")
    mean, x, y = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["mean m", "x", "y"]
    labels = [line.get_label() for line in mean.get_lines()]
    assert labels == ["mae", "simdino", "raw pixels 0.620", "random init 0.580"]
    assert mean.get_lines()[1].get_xdata().tolist() == [0.0, 1.0]  # thousands of images
    assert [line.get_label() for line in x.get_lines()] == ["mae"] and len(y.get_lines()) == 1
    assert mean.get_legend() is not None and fig.get_suptitle() == "t"
    fig.savefig(tmp_path / "curve.png")
    with Image.open(tmp_path / "curve.png") as image:
        assert image.size == (3 * 504, 432)

    alone = learning_curve_figure({"run": {"mean": _series([0.5])}}, "m")
    assert len(alone.axes) == 1 and alone.axes[0].get_legend() is None  # one line needs no name
