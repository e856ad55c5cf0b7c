"""Preprocessing speed: m3ret's ingest + preprocess stages against a naive per-file loop, per input kind.

For DICOM (CT series + single CR files), NIfTI volumes and mp4 clips, generated deterministically into a temp dir,
it measures items/s, MB/s (input bytes on disk per second) and frames/s of

- `naive`: a plain serial loop: the library's one-line read per file (`pydicom.dcmread(...).pixel_array`, stacked
  per series; `nibabel.load(...).get_fdata()`; decord decoding every frame of a clip, then subsampling), min/max to
  uint8, every kept frame resized with PIL to `size` x `size`, kept in memory;
- `m3ret preprocess`: `m3ret.data.preprocess.preprocess` on the ingested manifest (decode, windowing, slice
  selection, letterbox, 3 channels, shards written to disk) with 1 and 2 workers;
- `m3ret ingest`: `m3ret.data.ingest.ingest` with a cold cache (content hash + a full check decode of every item),
  the one-off cost paid before preprocess;
- `monai` (DICOM and NIfTI): MONAI's `LoadImage` + `ScaleIntensityRange(Percentiles)` + `Resize` of the same kept
  slices to the same size, serial in this process (`benchmarks/monai_baseline.py`), against
- `m3ret read+frames`: m3ret's reader + `item_frames` in the same serial loop: the like-for-like single-process pair.

Volumes keep every `--slice-stride`-th slice (default 2, as params.yaml's `preprocess.slice_stride`) in every
pipeline, the naive one included. `--memory` adds the peak memory of one 512x512x600 CT series
(`benchmarks/preprocess_memory.py`).

Every configuration runs twice in this process and the faster run is kept (warm page cache); speed is reported as a
ratio to the naive loop at the same frame size, since these machines are noisy. Prints a markdown table.

    python benchmarks/preprocess.py [--quick] [--workers 1 2] [--sizes 64 224] [--no-monai] [--memory]
"""

from __future__ import annotations

import os

# parallel_map's progress bars would interleave with the table; tqdm reads TQDM_* variables as defaults
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import PIL  # noqa: E402
import pydicom  # noqa: E402

from m3ret.data.video_reader import decord  # noqa: E402  (loaded after torch)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data"))
from dicom_factory import write_ct_series, write_dicom  # noqa: E402
from mixed_source import write_mp4  # noqa: E402

from m3ret.config import IngestConfig, PreprocessConfig, ReadConfig, SourceConfig  # noqa: E402
from m3ret.data.ingest import ingest  # noqa: E402
from m3ret.data.preprocess import item_frames, preprocess  # noqa: E402
from m3ret.data.readers import read_item  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from monai_baseline import MONAI_KINDS, monai_pipeline  # noqa: E402
from naive_baseline import NAIVE  # noqa: E402
from preprocess_memory import measure, memory_table, write_big_series  # noqa: E402

KINDS = ("dicom", "nifti", "video")
SALT = b"benchmark-salt-benchmark"


@dataclass(frozen=True)
class CorpusSpec:
    """How much synthetic input of each kind to write."""

    ct_series: int
    ct_slices: int
    ct_side: int
    cr_files: int
    cr_side: int
    nifti_volumes: int
    nifti_shape: tuple[int, int, int]
    videos: int
    video_side: int
    video_seconds: float
    fps: int


# 12 NIfTI volumes (6 before the MONAI baseline): with 6, a second worker had too little work to show
FULL = CorpusSpec(8, 64, 256, 40, 512, 12, (128, 128, 96), 6, 256, 10.0, 25)
QUICK = CorpusSpec(3, 32, 256, 10, 512, 2, (128, 128, 96), 2, 256, 4.0, 25)


# ------------------------------------------------------------------------------------------------ corpus
def _ellipse(shape: tuple[int, ...], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Boolean mask of an axis-aligned ellipse/ellipsoid in a grid of `shape` (coordinates in [-1, 1])."""
    axes = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij", sparse=True)
    return sum(((a - c) / r) ** 2 for a, c, r in zip(axes, centre, radii, strict=True)) <= 1.0


def _phantom(
    shape: tuple[int, ...], rng: np.random.Generator, values: tuple[float, float, float], long_axis: int | None = None
) -> np.ndarray:
    """A body (ellipse/ellipsoid of `values[1]`) in background `values[0]`, with two inner blobs of `values[2]` and
    mild noise; float32 `shape`. The body runs through the whole `long_axis` (the slice axis of a volume), so every
    slice holds structure and none is dropped as blank."""
    out = np.full(shape, values[0], dtype=np.float32)
    radii = rng.uniform(0.75, 0.9, len(shape))
    if long_axis is not None:
        radii[long_axis] = 4.0
    out[_ellipse(shape, np.zeros(len(shape)), radii)] = values[1]
    for _ in range(2):
        out[_ellipse(shape, rng.uniform(-0.4, 0.4, len(shape)), rng.uniform(0.1, 0.3, len(shape)))] = values[2]
    out += rng.normal(0.0, abs(values[1] - values[0]) * 0.02, shape).astype(np.float32)
    return out


def _write_dicom(root: Path, spec: CorpusSpec, rng: np.random.Generator) -> None:
    for s in range(spec.ct_series):
        hu = _phantom((spec.ct_slices, spec.ct_side, spec.ct_side), rng, (-1000.0, 40.0, 700.0), long_axis=0)
        write_ct_series(root / f"ct_{s:02d}", hu.round().astype(np.int16), patient_id=f"CT-{s}", seed=s)
    for c in range(spec.cr_files):
        film = _phantom((spec.cr_side, spec.cr_side), rng, (200.0, 2000.0, 3500.0)).clip(0, 4095)
        write_dicom(root / f"cr_{c:02d}.dcm", film.astype(np.uint16), modality="CR", patient_id=f"CR-{c}")


def _write_nifti(root: Path, spec: CorpusSpec, rng: np.random.Generator) -> None:
    for v in range(spec.nifti_volumes):
        volume = _phantom(spec.nifti_shape, rng, (0.0, 400.0, 900.0), long_axis=2)
        nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.0, 1.5, 1.0])), root / f"mr_{v:02d}.nii.gz")


def _write_video(root: Path, spec: CorpusSpec, rng: np.random.Generator) -> None:
    side, n = spec.video_side, int(spec.video_seconds * spec.fps)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    for v in range(spec.videos):
        texture = (rng.normal(0, 12, (side, side, 3)) + [140, 70, 60]).astype(np.float32)
        clip = np.empty((n, side, side, 3), dtype=np.uint8)
        # a bright blob drifting across a textured background that pans and brightens: camera-like motion, so the
        # encoder needs real inter-frame prediction and decoding costs what a real clip's would
        for i in range(n):
            t = i / n
            cy, cx = 0.5 + 0.3 * np.sin(2 * np.pi * (t + v / 7)), 0.5 + 0.3 * np.cos(2 * np.pi * t)
            blob = 120 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.01)
            clip[i] = (np.roll(texture, 2 * i, axis=1) * (0.7 + 0.3 * t) + blob[..., None]).clip(0, 255)
        write_mp4(root / f"clip_{v:02d}.mp4", clip, fps=spec.fps)


def build_corpus(root: Path, spec: CorpusSpec) -> dict[str, Path]:
    """One folder per kind under `root`; same spec -> same pixels."""
    writers = {"dicom": _write_dicom, "nifti": _write_nifti, "video": _write_video}
    folders = {}
    for i, kind in enumerate(KINDS):
        folders[kind] = root / kind
        folders[kind].mkdir(parents=True, exist_ok=True)
        writers[kind](folders[kind], spec, np.random.default_rng(i))
    return folders


def naive_items(kind: str, folder: Path) -> list[list[Path]]:
    """What a naive script iterates over: one list of files per item (a CT series is its folder)."""
    if kind == "dicom":
        return [sorted(p.glob("*.dcm")) if p.is_dir() else [p] for p in sorted(folder.iterdir())]
    return [[p] for p in sorted(folder.iterdir())]


# --------------------------------------------------------------------------------------------- measuring
@dataclass(frozen=True)
class Row:
    kind: str
    pipeline: str
    workers: int
    size: int | None
    items: int
    frames: int
    seconds: float
    mb: float


def best_of(runs: int, fn: Callable[[], tuple[int, int]]) -> tuple[float, int, int]:
    """(fastest wall seconds, items, frames) over `runs` calls of fn() -> (items, frames)."""
    best, items, frames = float("inf"), 0, 0
    for _ in range(runs):
        start = time.perf_counter()
        items, frames = fn()
        best = min(best, time.perf_counter() - start)
    return best, items, frames


def bench_kind(
    kind: str, folder: Path, work: Path, sizes: list[int], workers: list[int], runs: int, stride: int, monai: bool
) -> list[Row]:
    mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
    read_cfg = ReadConfig()
    num_frames = read_cfg.video.num_frames
    rows: list[Row] = []
    items = naive_items(kind, folder)

    def run_naive(size: int) -> tuple[int, int]:
        kept = [NAIVE[kind](files, size, num_frames, stride) for files in items]
        return len(kept), sum(len(f) for f in kept)

    def run_ingest(w: int) -> tuple[pd.DataFrame, float]:
        cache = work / f"cache-{kind}"
        shutil.rmtree(cache, ignore_errors=True)  # cold cache: every item hashed and decoded
        cfg = IngestConfig(
            sources=(SourceConfig(path=str(folder), dataset=kind),),
            out=str(work / f"manifest-{kind}.parquet"),
            quarantine=str(work / f"quarantine-{kind}.csv"),
            cache_dir=str(cache),
            workers=w,
        )
        start = time.perf_counter()
        manifest, quarantine = ingest(cfg, read_cfg, SALT)
        seconds = time.perf_counter() - start
        if len(quarantine) or len(manifest) != len(items):
            raise SystemExit(f"{kind}: ingest kept {len(manifest)} of {len(items)} items:\n{quarantine}")
        return manifest, seconds

    for w in workers:
        timings = [run_ingest(w) for _ in range(runs)]
        manifest = timings[0][0]
        rows.append(Row(kind, "m3ret ingest", w, None, len(manifest), 0, min(t for _, t in timings), mb))

    readers = dict(zip(manifest.paths, manifest.reader, strict=True))
    jobs = [([Path(p) for p in json.loads(paths)], reader) for paths, reader in readers.items()]

    def run_reader(cfg: PreprocessConfig) -> tuple[int, int]:
        kept = [item_frames(*read_item(reader, files, "", read_cfg), cfg)[0] for files, reader in jobs]
        return len(kept), sum(len(f) for f in kept)

    for size in sizes:
        seconds, n_items, n_frames = best_of(runs, lambda size=size: run_naive(size))
        rows.append(Row(kind, "naive", 1, size, n_items, n_frames, seconds, mb))
        if monai and kind in MONAI_KINDS:
            cfg = PreprocessConfig(out="unused", size=size, slice_stride=stride, workers=1)
            pipeline = monai_pipeline(kind, cfg, read_cfg)

            def run_monai(pipeline: Callable[[list[Path]], np.ndarray] = pipeline) -> tuple[int, int]:
                kept = [pipeline(files) for files in items]
                return len(kept), sum(len(f) for f in kept)

            seconds, n_items, n_frames = best_of(runs, run_monai)
            rows.append(Row(kind, "monai", 1, size, n_items, n_frames, seconds, mb))
            seconds, n_items, n_frames = best_of(runs, lambda cfg=cfg: run_reader(cfg))
            rows.append(Row(kind, "m3ret read+frames", 1, size, n_items, n_frames, seconds, mb))
        for w in workers:
            out = work / f"frames-{kind}-{size}-{w}"
            cfg = PreprocessConfig(out=str(out), size=size, slice_stride=stride, workers=w)

            def run_m3ret(cfg: PreprocessConfig = cfg) -> tuple[int, int]:
                frames, quarantine = preprocess(manifest, cfg, read_cfg)
                if len(quarantine):
                    raise SystemExit(f"{kind}: preprocess quarantined items:\n{quarantine}")
                return frames.item_id.nunique(), len(frames)

            seconds, n_items, n_frames = best_of(runs, run_m3ret)
            rows.append(Row(kind, "m3ret preprocess", w, size, n_items, n_frames, seconds, mb))
            shutil.rmtree(out)
    return rows


# ---------------------------------------------------------------------------------------------- printing
def machine_facts() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pydicom": pydicom.__version__,
        "nibabel": nib.__version__,
        "decord": decord.__version__,
        "pillow": PIL.__version__,
    }
    return (
        f"machine: {platform.machine()} {platform.processor() or ''}, {cores} usable cores "
        f"(os.cpu_count={os.cpu_count()}), {platform.system()} {platform.release()}, {_load()}\n"
        + ", ".join(f"{k} {v}" for k, v in versions.items())
    )


def _load() -> str:
    # other processes on a 2-core machine decide whether a second worker can help at all: report them
    return "load average (1/5/15 min) " + "/".join(f"{x:.1f}" for x in os.getloadavg())


def _ratio(r: Row, base: Row | None, frames: bool = False) -> str:
    if base is None or (frames and not (r.frames and base.frames)):
        return "-"
    mine, theirs = (r.frames, base.frames) if frames else (r.items, base.items)
    return f"{(mine / r.seconds) / (theirs / base.seconds):.2f}"


def table(rows: list[Row]) -> str:
    naive = {(r.kind, r.size): r for r in rows if r.pipeline == "naive"}
    monai = {(r.kind, r.size): r for r in rows if r.pipeline == "monai"}
    lines = [
        "| kind | pipeline | workers | size | items | frames | s | items/s | MB/s | frames/s "
        "| x naive items/s | x naive frames/s | x monai items/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base, other = naive.get((r.kind, r.size)), monai.get((r.kind, r.size))
        lines.append(
            f"| {r.kind} | {r.pipeline} | {r.workers} | {r.size or '-'} | {r.items} | {r.frames or '-'} "
            f"| {r.seconds:.2f} | {r.items / r.seconds:.1f} | {r.mb / r.seconds:.1f} "
            f"| {f'{r.frames / r.seconds:.0f}' if r.frames else '-'} | {_ratio(r, base)} | {_ratio(r, base, True)} "
            f"| {_ratio(r, other)} |"
        )
    return "\n".join(lines)


NOTES = """\
- MB/s is input bytes on disk per second. `x naive` / `x monai`: items/s over that pipeline's at the same size
  (> 1: faster). `m3ret read+frames` vs `monai` is the like-for-like pair: both serial in this process, one core
  (torch 1 thread), same files, same kept slices (every `slice_stride`-th), same output size, frames in memory.
  `m3ret preprocess` is the whole stage (plus shards written to disk, frames table) with 1 or 2 worker processes:
  its `x monai` with 2 workers is 2 cores against MONAI's 1.
- Frame counts differ by design: m3ret keeps at most `max_slices_per_plane` (64) evenly spaced non-blank slices
  per volume and decodes only the `num_frames` (16) sampled video frames; naive resizes every `slice_stride`-th
  slice and decodes every video frame before keeping 16. Compare frames/s for work per output frame, items/s for the
  stage as a whole.
- m3ret also windows (CT preset / percentiles), letterboxes keeping the aspect ratio, writes 3-channel frames;
  naive and MONAI keep 1-channel (grey) frames squashed to a square in memory.
- `workers` 2 can only beat 1 when the second core is idle: read the load average printed above the table.
- `m3ret ingest` (cold cache: sha256 + one full check decode per item) runs once before preprocess; it has no size."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller corpus and size 64 only (< 1 min)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="m3ret worker counts (default 1 2)")
    parser.add_argument("--sizes", type=int, nargs="+", help="frame sizes (default 64 224; --quick: 64)")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--runs", type=int, default=2, help="runs per configuration; the fastest is kept")
    parser.add_argument("--slice-stride", type=int, default=2, help="every n-th slice of a volume (default 2)")
    parser.add_argument("--no-monai", action="store_true", help="leave out the MONAI baseline")
    parser.add_argument("--memory", action="store_true", help="also the peak memory of a 512x512x600 CT series")
    parser.add_argument(
        "--memory-code", nargs="+", type=Path, default=[], help="other m3ret checkouts to measure memory with (before)"
    )
    parser.add_argument("--memory-only", action="store_true", help="only the memory measurement")
    args = parser.parse_args(argv)
    spec = QUICK if args.quick else FULL
    sizes = args.sizes or ([64] if args.quick else [64, 224])
    if not args.no_monai:
        import torch

        torch.set_num_threads(1)  # m3ret's readers use one core per process; so does the MONAI loop

    print(machine_facts())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="m3ret-bench-") as tmp:
        if not args.memory_only:
            folders = build_corpus(Path(tmp) / "corpus", spec)
            print(
                f"corpus ({'quick' if args.quick else 'full'}) written in {time.perf_counter() - started:.1f} s: {spec}"
            )
            rows: list[Row] = []
            for kind in args.kinds:
                work = Path(tmp) / "work"
                rows += bench_kind(
                    kind, folders[kind], work, sizes, args.workers, args.runs, args.slice_stride, not args.no_monai
                )
            print()
            print(table(rows))
            print()
            print(NOTES)
        if args.memory or args.memory_only:
            series = write_big_series(Path(tmp) / "big-ct")
            print()
            mem = [measure(series, "m3ret", sizes[0], args.slice_stride, code) for code in args.memory_code]
            mem.append(measure(series, "m3ret", sizes[0], args.slice_stride))
            if not args.no_monai:
                mem.append(measure(series, "monai", sizes[0], args.slice_stride))
            print(memory_table(mem))
    print(f"\ntotal {time.perf_counter() - started:.0f} s; at the end: {_load()}")


if __name__ == "__main__":
    main()
