"""Figures for people to look at: per-case overlays and a best/worst grid (matplotlib, no screen)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .outputs import replacing
from .prompts import Box


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def overlay_figure(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, boxes: dict[int, list[Box]],
                   path: Path, title: str) -> Path:
    """The slice with most ground truth: image in grey, truth green, prediction red, boxes yellow."""
    plt = _pyplot()
    area = truth.reshape(truth.shape[0], -1).sum(axis=1)
    if not area.any():
        area = prediction.reshape(prediction.shape[0], -1).sum(axis=1)
    z = int(np.argmax(area))
    fig, ax = plt.subplots(figsize=(5, 5 * image.shape[1] / image.shape[2] + 0.4), dpi=100)
    ax.imshow(image[z], cmap="gray")
    if truth[z].any():
        ax.contour(truth[z], levels=[0.5], colors="lime", linewidths=1.2)
    if prediction[z].any():
        ax.contour(prediction[z], levels=[0.5], colors="red", linewidths=1.2)
    for x0, y0, x1, y1 in boxes.get(z, []):
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="yellow", linewidth=1))
    ax.set_title(title + ("" if image.shape[0] == 1 else f"  (slice {z})"), fontsize=9)
    ax.axis("off")
    save_figure(fig, path)
    return path


def best_worst_grid(rows: list[dict], out: Path, count: int = 4) -> Path | None:
    """Tile the overlays of the ``count`` best and worst cases by DSC into one figure."""
    plt = _pyplot()
    ranked = sorted(rows, key=lambda r: float(r["dsc"]), reverse=True)
    picks = [("best", r) for r in ranked[:count]] + [("worst", r) for r in ranked[::-1][:count]]
    picks = [(kind, r) for kind, r in picks if (out / "overlays" / f"{r['case']}.png").exists()]
    if not picks:
        return None
    fig, axes = plt.subplots(2, count, figsize=(4 * count, 8), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (kind, row) in enumerate(picks[: 2 * count]):
        ax = axes[0 if kind == "best" else 1][i % count if kind == "best" else (i - min(count, len(ranked))) % count]
        ax.imshow(plt.imread(out / "overlays" / f"{row['case']}.png"))
        ax.set_title(f"{kind}: {row['case']}", fontsize=9)
    path = out / "best_worst.png"
    save_figure(fig, path, dpi=100)
    return path


def save_figure(fig, path: Path, **options) -> None:
    """Write the figure atomically and close it (the command checked beforehand that it may replace ``path``)."""
    try:
        with replacing(path, overwrite=True) as temp:
            fig.savefig(temp, bbox_inches="tight", **options)
    finally:
        _pyplot().close(fig)
