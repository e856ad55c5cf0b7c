"""Reporting for the pretrain loop: on rank 0 a progress log line and metric files in the layout dvc reads
(`metrics.json` summary, `plots/metrics/<group>/<name>.tsv` series; the layout dvclive uses); on every rank the
window of training metrics averaged between reports (its mean is a collective).

The files are written directly rather than through dvclive, which looks for (and inside a plain git repo creates)
a DVC repository and fails in a git repo without commits: training must not depend on where it is started.

Training metrics are logged under `train/` (loss, each objective log, lr, grad_norm) and evaluation metrics under
`eval/` (whatever `evaluate` returns, e.g. `mAP@10`). Every series file has the columns step, images_seen, <name>,
so `dvc plots` draws any of them against images seen (`x: images_seen`); the summary holds the latest values. Each
evaluation also redraws `learning_curve.png` (learning_curve.py) from the `eval/` series.
"""

from __future__ import annotations

import csv
import datetime
import json
import logging
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from m3ret.train.learning_curve import LEARNING_CURVE_PNG, write_learning_curve

log = logging.getLogger(__name__)


class ProgressReporter:
    """Logs `step/total, loss, lr, images/s, ETA (to stop_step)` and appends metric rows keyed by optimiser step.

    `start_step` > 0 means a resumed run: rows a crashed run logged after its last checkpoint are dropped first, so
    each series stays one row per step.
    """

    def __init__(self, metrics_dir: Path, start_step: int, stop_step: int, total_steps: int, images_seen: int) -> None:
        self.dir = Path(metrics_dir)
        plots = self.dir / "plots" / "metrics"
        if start_step > 0:
            _drop_rows_after(plots, start_step)
        else:
            for stale in [*plots.rglob("*.tsv"), self.dir / LEARNING_CURVE_PNG]:
                stale.unlink(missing_ok=True)
        summary = self.dir / "metrics.json"
        self.summary: dict = json.loads(summary.read_text()) if start_step > 0 and summary.exists() else {}
        self.stop_step, self.total_steps = stop_step, total_steps
        self._mark = (time.perf_counter(), start_step, images_seen)

    def train(self, step: int, images_seen: int, metrics: dict[str, float]) -> None:
        """Report the training metrics averaged over the steps since the previous report."""
        now, last_step, last_images = self._mark
        elapsed = max(time.perf_counter() - now, 1e-9)
        rate = (images_seen - last_images) / elapsed
        eta = (self.stop_step - step) * elapsed / max(step - last_step, 1)
        self._mark = (time.perf_counter(), step, images_seen)
        log.info(
            "step %d/%d  loss %.4f  lr %.3g  %.1f img/s  ETA %s",
            step,
            self.total_steps,
            metrics["loss"],
            metrics["lr"],
            rate,
            datetime.timedelta(seconds=round(eta)),
        )
        self._log("train", step, images_seen, metrics)

    def evaluation(self, step: int, images_seen: int, metrics: dict[str, float]) -> None:
        """Report an `evaluate` result and redraw the learning curve (when it holds `mAP@10`)."""
        log.info("step %d/%d  eval %s", step, self.total_steps, "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        self._log("eval", step, images_seen, metrics)
        write_learning_curve(self.dir)

    def close(self) -> None:
        """Nothing is buffered: every report is on disk when it returns."""

    def _log(self, group: str, step: int, images_seen: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            series = self.dir / "plots" / "metrics" / group / f"{name}.tsv"
            series.parent.mkdir(parents=True, exist_ok=True)
            new = not series.exists()
            with series.open("a", newline="") as f:
                f.write(f"step\timages_seen\t{name.rsplit('/', 1)[-1]}\n" if new else "")
                f.write(f"{step}\t{images_seen}\t{float(value)!r}\n")
        self.summary.setdefault(group, {}).update({k: float(v) for k, v in metrics.items()})
        self.summary.update(step=step, images_seen=images_seen)
        tmp = self.dir / f"metrics.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(self.summary, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.dir / "metrics.json")


class MetricWindow:
    """Sums of the loss and logs since the last report, kept on the device so that steps never wait on `.item()`."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.count = 0

    def add(self, values: dict[str, Tensor]) -> None:
        for name, value in values.items():
            value = torch.as_tensor(value).detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.count += 1

    def mean(self, world_size: int, step: int) -> dict[str, float]:
        """Means over the window and all ranks (a collective: every rank calls it at the same steps)."""
        names = sorted(self.sums)
        means = torch.stack([self.sums[n] for n in names]) / self.count
        if world_size > 1:
            dist.all_reduce(means)
            means /= world_size
        self.sums, self.count = {}, 0
        result = dict(zip(names, means.tolist(), strict=True))
        if not math.isfinite(result["loss"]):
            raise FloatingPointError(f"pretrain loss is {result['loss']} at step {step}; lower pretrain.optim.lr")
        return result


def _drop_rows_after(plots_dir: Path, step: int) -> None:
    """Rewrite each metric series keeping only rows with step <= `step`."""
    for series in plots_dir.rglob("*.tsv"):
        with series.open(newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows:
            continue
        kept = [row for row in rows if int(row["step"]) <= step]
        if len(kept) == len(rows):
            continue
        with series.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
            writer.writeheader()
            writer.writerows(kept)
