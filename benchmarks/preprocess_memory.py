"""Peak memory of preprocessing one large CT series, for `benchmarks/preprocess.py --memory`.

One 512x512x600 int16 CT series (600 DICOM files) is written to a temp dir; a fresh Python process per pipeline
imports everything, notes its resident size, runs the reader + item_frames (or MONAI's load + window + resize)
on the series and reports its peak resident size (`getrusage(RUSAGE_SELF).ru_maxrss`); a second fresh process
reports tracemalloc's peak instead (RSS varies between runs with the allocator and the machine's memory state;
the traced peak does not). Both are compared with the volume's decoded size: int16 (the stored samples) and
float32 (what a float pipeline holds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SLICES, SIDE = 600, 512

_CHILD = r"""
import json, resource, sys
from pathlib import Path
sys.path.insert(0, {bench!r})
import numpy as np
from m3ret.config import PreprocessConfig, ReadConfig
from m3ret.data.readers import read_item
from m3ret.data.preprocess import item_frames
files = sorted(Path({folder!r}).glob("*.dcm"))
cfg, read_cfg = PreprocessConfig(out="unused", size={size}, slice_stride={stride}), ReadConfig()
if {pipeline!r} == "monai":
    from monai_baseline import monai_pipeline
    run = monai_pipeline("dicom", cfg, read_cfg)
    # one call on a small file first, so that lazily imported modules count as imports
    run(files[:1])
else:
    read_item("dicom", files[:1], "", read_cfg)
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()
base = rss()
if {traced}:
    import tracemalloc
    tracemalloc.start()
if {pipeline!r} == "monai":
    frames = run(files)
else:
    frames = item_frames(*read_item("dicom", files, "", read_cfg), cfg)[0]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
traced = tracemalloc.get_traced_memory()[1] if {traced} else 0
print(json.dumps({{"base": base, "peak": peak, "traced": traced, "frames": list(frames.shape)}}))
"""


@dataclass(frozen=True)
class MemoryRow:
    pipeline: str
    code: str
    base_mb: float
    increase_mb: float
    traced_mb: float
    frames: tuple[int, ...]


def write_big_series(folder: Path) -> Path:
    """The 512x512x600 CT phantom (a body of 40 HU in air, a bright blob, mild noise), one file per slice."""
    sys.path.insert(0, str(REPO / "tests" / "data"))
    from dicom_factory import write_ct_series

    rng = np.random.default_rng(0)
    axis = np.linspace(-1, 1, SIDE, dtype=np.float32)
    body = (axis[:, None] / 0.85) ** 2 + (axis[None, :] / 0.7) ** 2 <= 1.0
    blob = ((axis[:, None] - 0.2) / 0.15) ** 2 + ((axis[None, :] + 0.1) / 0.2) ** 2 <= 1.0
    hu = np.empty((SLICES, SIDE, SIDE), dtype=np.int16)
    for t in range(SLICES):
        plane = np.where(body, 40, -1000) + np.where(blob, 660, 0)
        hu[t] = plane + rng.integers(-20, 21, (SIDE, SIDE))
    write_ct_series(folder, hu, patient_id="CT-BIG", seed=0)
    return folder


def _child(folder: Path, pipeline: str, size: int, stride: int, code: Path, traced: bool) -> dict:
    script = _CHILD.format(
        bench=str(BENCH_DIR), folder=str(folder), size=size, stride=stride, pipeline=pipeline, traced=traced
    )
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    # cwd = the checkout: `python -c` puts the working directory first on sys.path
    run = [sys.executable, "-c", script]
    done = subprocess.run(run, cwd=code, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"memory child ({pipeline}, {code}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(folder: Path, pipeline: str, size: int, stride: int, code: Path = REPO) -> MemoryRow:
    """Peak memory of one pipeline ("m3ret" or "monai") on the series, each in a fresh process importing m3ret from
    `code` (a checkout: this one, or an older one for a before/after): the peak RSS increase over the RSS after
    imports (what the OS holds for it, allocator slack included), and in a second process tracemalloc's peak of
    the bytes allocated (numpy's arrays included; deterministic, no allocator slack)."""
    rss = _child(folder, pipeline, size, stride, code, traced=False)
    traced = _child(folder, pipeline, size, stride, code, traced=True)
    return MemoryRow(
        pipeline,
        str(code),
        rss["base"] / 2**20,
        (rss["peak"] - rss["base"]) / 2**20,
        traced["traced"] / 2**20,
        tuple(rss["frames"]),
    )


def memory_table(rows: list[MemoryRow]) -> str:
    int16_mb, float32_mb = SLICES * SIDE * SIDE * 2 / 2**20, SLICES * SIDE * SIDE * 4 / 2**20
    lines = [
        f"Peak memory, one {SIDE}x{SIDE}x{SLICES} CT series ({SLICES} DICOM files): decoded size "
        f"{int16_mb:.0f} MiB as int16, {float32_mb:.0f} MiB as float32",
        "",
        "| pipeline | code | frames | RSS before (MiB) | peak RSS increase (MiB) | x int16 | x float32 "
        "| traced peak (MiB) | x int16 | x float32 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.pipeline} | {r.code} | {'x'.join(map(str, r.frames))} | {r.base_mb:.0f} | {r.increase_mb:.0f} "
            f"| {r.increase_mb / int16_mb:.2f} | {r.increase_mb / float32_mb:.2f} | {r.traced_mb:.0f} "
            f"| {r.traced_mb / int16_mb:.2f} | {r.traced_mb / float32_mb:.2f} |"
        )
    return "\n".join(lines)
