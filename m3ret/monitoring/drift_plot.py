"""The drift summary as a bar chart (PIL; matplotlib is not a dependency): a score per scope and the threshold line."""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageDraw, ImageFont

DRIFTED, STEADY, UNTESTED, THRESHOLD, INK = "#d62728", "#1f77b4", "#7f7f7f", "#ff7f0e", "#222222"
_BAR_SLOT, _LEFT, _RIGHT, _TOP, _BOTTOM, _HEIGHT = 110, 80, 30, 60, 90, 420


def drift_chart(summary: dict[str, Any]) -> Image.Image:
    """RGB image of `embedding_drift`'s summary: one bar per tested scope (red when drifted), a dashed threshold line;
    untested scopes show their status instead of a bar (red for a new modality, which counts as drift)."""
    scopes, threshold = summary["scopes"], float(summary["threshold"])
    scores = [s["score"] for s in scopes if s["score"] is not None]
    # Headroom above the larger of threshold and scores so the line and the value labels stay inside.
    top_value = max([threshold, *scores, 1e-6]) * 1.25
    width = _LEFT + _RIGHT + _BAR_SLOT * max(len(scopes), 1)
    image = Image.new("RGB", (width, _HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=12)
    base, plot_h = _HEIGHT - _BOTTOM, _HEIGHT - _BOTTOM - _TOP

    def y_of(value: float) -> float:
        return base - plot_h * max(value, 0.0) / top_value

    verdict = "DRIFT" if summary["drifted"] else "no drift"
    draw.text((_LEFT, 12), f"Embedding drift ({summary['method']}): {verdict}", fill=INK, font=font)
    draw.line([(_LEFT, _TOP), (_LEFT, base), (width - _RIGHT, base)], fill=INK, width=1)
    for tick in range(5):
        value = top_value * tick / 4
        draw.line([(_LEFT - 4, y_of(value)), (_LEFT, y_of(value))], fill=INK)
        draw.text((_LEFT - 8, y_of(value)), f"{value:.3g}", fill=INK, font=small, anchor="rm")
    for i, scope in enumerate(scopes):
        left = _LEFT + _BAR_SLOT * i + 20
        centre = left + (_BAR_SLOT - 40) / 2
        if scope["score"] is not None:
            colour = DRIFTED if scope["drifted"] else STEADY
            draw.rectangle([left, y_of(scope["score"]), left + _BAR_SLOT - 40, base], fill=colour)
            draw.text((centre, y_of(scope["score"]) - 4), f"{scope['score']:.3f}", fill=INK, font=small, anchor="md")
        else:
            colour = DRIFTED if scope["drifted"] else UNTESTED
            draw.text((centre, base - 8), scope["status"], fill=colour, font=small, anchor="md")
        draw.text((centre, base + 8), str(scope["scope"]), fill=INK, font=font, anchor="ma")
        counts = f"{scope['n_reference']} / {scope['n_current']}"
        draw.text((centre, base + 30), counts, fill=UNTESTED, font=small, anchor="ma")
    line_y = y_of(threshold)
    for x in range(_LEFT, width - _RIGHT, 12):
        draw.line([(x, line_y), (min(x + 6, width - _RIGHT), line_y)], fill=THRESHOLD, width=2)
    draw.text((width - _RIGHT, line_y - 4), f"threshold {threshold:g}", fill=THRESHOLD, font=small, anchor="rd")
    draw.text((_LEFT, _HEIGHT - 22), "rows compared: reference / current", fill=UNTESTED, font=small)
    return image
