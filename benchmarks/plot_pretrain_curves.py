"""Draw retrieval quality during pretraining as a PNG: one line per run (an `eval/<metric>.tsv` series written by the
pretrain stage: columns step, images_seen, <metric>), plus horizontal reference lines (raw pixels, random init).

    python benchmarks/plot_pretrain_curves.py --run simdino=reports/simdino --run mae=reports/mae \\
        --ref "raw pixels=0.624" --ref "random init=0.565" --out curves.png

Plain PIL, so it needs nothing beyond the project's dependencies and renders offline.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
W, H, LEFT, RIGHT, TOP, BOTTOM = 760, 440, 70, 170, 40, 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="NAME=metrics_dir (repeatable)")
    parser.add_argument("--ref", action="append", default=[], help="NAME=value horizontal line (repeatable)")
    parser.add_argument("--metric", default="mAP@10")
    parser.add_argument("--title", default="")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    runs = {}
    for spec in args.run:
        name, root = spec.split("=", 1)
        runs[name] = pd.read_csv(Path(root) / "plots" / "metrics" / "eval" / f"{args.metric}.tsv", sep="\t")
    refs = {name: float(v) for name, v in (spec.rsplit("=", 1) for spec in args.ref)}
    x_max = max(float(t["images_seen"].max()) for t in runs.values())
    values = [v for t in runs.values() for v in t[args.metric]] + list(refs.values())
    y_lo, y_hi = min(values) - 0.01, max(values) + 0.01

    def xy(x: float, y: float) -> tuple[float, float]:
        return (LEFT + x / x_max * (W - LEFT - RIGHT), TOP + (y_hi - y) / (y_hi - y_lo) * (H - TOP - BOTTOM))

    image = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([xy(0, y_hi), xy(x_max, y_lo)], outline="black")
    for i in range(6):
        y = y_lo + (y_hi - y_lo) * i / 5
        px, py = xy(0, y)
        draw.text((px - 45, py - 6), f"{y:.3f}", fill="black")
        x = x_max * i / 5
        px, py = xy(x, y_lo)
        draw.text((px - 15, py + 8), f"{x / 1000:.0f}k", fill="black")
    draw.text((W // 2 - 60, H - 22), "images seen", fill="black")
    draw.text((LEFT, 12), args.title or f"{args.metric} during pretraining", fill="black")
    legend_y = TOP
    for (name, value), colour in zip(refs.items(), [(120, 120, 120), (190, 150, 60)], strict=False):
        draw.line([xy(0, value), xy(x_max, value)], fill=colour, width=1)
        draw.text((W - RIGHT + 10, legend_y), f"-- {name} {value:.3f}", fill=colour)
        legend_y += 16
    for (name, table), colour in zip(runs.items(), COLOURS, strict=False):
        points = [xy(x, y) for x, y in zip(table["images_seen"], table[args.metric], strict=True)]
        draw.line(points, fill=colour, width=2) if len(points) > 1 else None
        for px, py in points:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        draw.text((W - RIGHT + 10, legend_y), f"o {name} {table[args.metric].iloc[-1]:.3f}", fill=colour)
        legend_y += 16
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
