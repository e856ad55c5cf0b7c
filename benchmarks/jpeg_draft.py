"""What `read.jpeg_draft_side` buys and costs: decode + stored frame of JPEGs with and without libjpeg's reduced-scale
decoding, measured in this process.

For each JPEG (generated: skimage's retina and astronaut photos resized to 512 px ... 4000 x 3000 and saved at
quality 90; or `--folder`'s own JPEGs, a sample of `--max-files`), the median time of the query path
`decode_query` (reader + letterbox to `preprocess.size`) with every pixel decoded and with each draft side, the ratio,
and how far the stored frame moves from the full decode's (mean and max absolute difference in grey levels, over all
channels). Prints a markdown table.

    python benchmarks/jpeg_draft.py [--sides 128 256] [--size 64] [--folder ../shared/data/medbench --max-files 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

from m3ret.config import PreprocessConfig, ReadConfig
from m3ret.models.query import decode_query

RUNS = 7
SHAPES = ((512, 512), (1024, 1024), (2048, 2048), (3000, 4000))  # (height, width)


def generated(folder: Path) -> list[Path]:
    """skimage's retina (fundus) and astronaut (camera photo) at each of SHAPES, JPEG quality 90."""
    paths = []
    for name, pixels in (("retina", skimage.data.retina()), ("astronaut", skimage.data.astronaut())):
        for height, width in SHAPES:
            path = folder / f"{name}_{width}x{height}.jpg"
            Image.fromarray(pixels).resize((width, height), Image.Resampling.LANCZOS).save(path, quality=90)
            paths.append(path)
    return paths


def median_ms(path: Path, read_cfg: ReadConfig, preprocess: PreprocessConfig) -> tuple[float, np.ndarray]:
    """(median ms of decode_query, its stored frames)."""
    frames, _meta = decode_query(path, read_cfg, preprocess)
    times = []
    for _ in range(RUNS):
        tic = time.perf_counter()
        decode_query(path, read_cfg, preprocess)
        times.append((time.perf_counter() - tic) * 1000)
    return statistics.median(times), frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[128, 256], help="read.jpeg_draft_side values")
    parser.add_argument("--size", type=int, default=PreprocessConfig().size, help="preprocess.size (stored frames)")
    parser.add_argument("--folder", type=Path, help="measure this folder's JPEGs instead of generated ones")
    parser.add_argument("--max-files", type=int, default=200, help="with --folder: every n-th file up to this many")
    args = parser.parse_args()
    preprocess = PreprocessConfig(size=args.size)
    with tempfile.TemporaryDirectory() as tmp:
        if args.folder:
            found = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
            paths = found[:: max(1, len(found) // args.max_files)][: args.max_files]
        else:
            paths = generated(Path(tmp))
        head = "| file | pixels | full decode ms |" + "".join(
            f" draft {s}: ms | x faster | mean diff | max diff |" for s in args.sides
        )
        print(f"decode_query to {args.size} px frames, median of {RUNS} runs\n")
        print(head + "\n|---|---:|---:|" + "---:|---:|---:|---:|" * len(args.sides))
        moved = {s: [] for s in args.sides}
        for path in paths:
            full_ms, full = median_ms(path, ReadConfig(jpeg_draft_side=0), preprocess)
            with Image.open(path) as img:
                width, height = img.size
            cells = []
            for side in args.sides:
                draft_ms, draft = median_ms(path, ReadConfig(jpeg_draft_side=side), preprocess)
                diff = np.abs(full.astype(int) - draft.astype(int))
                moved[side].append(diff.mean())
                cells.append(f" {draft_ms:.1f} | {full_ms / draft_ms:.2f} | {diff.mean():.2f} | {diff.max()} |")
            print(f"| {path.name} | {width}x{height} | {full_ms:.1f} |" + "".join(cells))
        for side, diffs in moved.items():
            changed = sum(d > 0 for d in diffs)
            print(f"\ndraft {side}: {changed} of {len(diffs)} files' stored frames change; mean diff over all "
                  f"{statistics.fmean(diffs):.3f} grey levels")  # fmt: skip


if __name__ == "__main__":
    main()
