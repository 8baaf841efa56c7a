"""Figures: saliency overlays with the wall hatched (like the paper's Figure 6), mu bar charts and the board's
Pareto chart, in the house style with the one wall drawer (`stackbench.present.style`)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .metrics import METRICS
from .present.style import draw_wall, figure, save_png

MU, HIDDEN, DELETION = METRICS["mu"], METRICS["mu_hidden"], METRICS["deletion_auc"]


def overlay(ax, image: np.ndarray, sal: np.ndarray | None, dead_from: int, alpha: float = 0.5, cmap: str = "jet"):
    """One panel: the image (H, W, 3 in [0, 1]), its saliency on top (None: the image alone), the wall hatched."""
    ax.imshow(np.clip(image, 0, 1))
    if sal is not None:
        ax.imshow(sal, cmap=cmap, alpha=alpha, vmin=0, vmax=max(float(np.max(sal)), 1e-12))
    draw_wall(ax, dead_from, *image.shape[:2])
    ax.set_xticks([])
    ax.set_yticks([])


def overlay_grid(images: Sequence[np.ndarray], maps: Mapping[str, np.ndarray], ids: Sequence[str], dead_from: int,
                 path: str | Path) -> Path:
    """Rows = images, columns = the image then one overlay per method; written as PNG."""
    names, n = list(maps), len(images)
    with figure(n, len(names) + 1, figsize=(2.0 * (len(names) + 1), 2.0 * n)) as (fig, axes):
        for i in range(n):
            _image_panel(axes[i, 0], images[i], ids[i], dead_from)
            for j, name in enumerate(names):
                _overlay_panel(axes[i, j + 1], images[i], maps[name][i], dead_from, name if i == 0 else None)
        if n:
            axes[0, 0].set_title("image (wall hatched)", fontsize=8)
        return save_png(fig, path)


def _image_panel(ax, image: np.ndarray, item_id, dead_from: int) -> None:
    overlay(ax, image, None, dead_from)
    ax.set_ylabel(str(item_id)[:18], fontsize=7)


def _overlay_panel(ax, image: np.ndarray, sal: np.ndarray, dead_from: int, title: str | None) -> None:
    overlay(ax, image, sal, dead_from)
    val = float(MU.per_image(sal, dead_from)[0])
    ax.set_xlabel("empty" if np.isnan(val) else f"mu={MU.show(val)}", fontsize=7)
    if title:
        ax.set_title(title, fontsize=8)


def mu_bars_ax(ax, results: Mapping[str, Mapping[str, Mapping]], datasets: Sequence[str], title: str = "") -> None:
    """Grouped bars on `ax`: mean mu x100 per method (x) and dataset (colour) with std error bars.
    `results` maps method -> dataset -> {mean, std, ...}."""
    names = list(results)
    if not names:
        return _no_rows(ax, title)
    x = np.arange(len(names))
    width = 0.8 / max(1, len(datasets))
    for k, d in enumerate(datasets):
        aggs = [results[n].get(d) or {} for n in names]
        means = [MU.scale * (a.get("mean") or 0.0) for a in aggs]
        stds = [MU.scale * (a.get("std") or 0.0) for a in aggs]
        ax.bar(x + (k - (len(datasets) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=d.upper())
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=35, ha="right")
    ax.set_ylabel(f"{MU.label} ({MU.better})")
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    if len(datasets) > 1:
        ax.legend()


def mu_bars(results: Mapping[str, Mapping[str, Mapping]], path: str | Path, datasets: Sequence[str] | None = None,
            title: str = f"{MU.label} per method (mean +- std over images)") -> Path:
    """The mu bar chart of one evaluation: methods x datasets."""
    datasets = list(datasets or dict.fromkeys(d for r in results.values() for d in r))
    with figure(figsize=(max(5.0, 0.9 * len(results) + 2), 3.6)) as (fig, axes):
        mu_bars_ax(axes[0, 0], results, datasets, title)
        return save_png(fig, path)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (is lower than) on both coordinates, by the first one."""
    order = sorted(range(len(points)), key=lambda i: points[i])
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


PARETO_LOOK = {"ranked": ("ranked", dict(marker="o", color="C0")),
               "unranked": ("listed, not ranked", dict(marker="o", facecolors="none", edgecolors="C1")),
               "control": ("control", dict(marker="x", color="C3"))}


def pareto_ax(ax, points: Sequence[tuple[str, float, float, str]], title: str = "",
              uniform: float | None = None) -> None:
    """One point per method: (name, mu_hidden, deletion AUC, section). Controls are crosses, unranked rows hollow;
    the Pareto front of the ranked rows (the better on both axes) is drawn."""
    for section, (label, look) in PARETO_LOOK.items():
        pts = [p for p in points if p[3] == section]
        if pts:
            ax.scatter([HIDDEN.scale * p[1] for p in pts], [DELETION.scale * p[2] for p in pts], s=36, label=label,
                       **look)
    for name, h, d, _ in points:
        ax.annotate(name, (HIDDEN.scale * h, DELETION.scale * d), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ranked = [(HIDDEN.scale * p[1], DELETION.scale * p[2]) for p in points if p[3] == "ranked"]
    if ranked:
        front = [ranked[i] for i in pareto_front(ranked)]
        ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="C0", lw=1, label="Pareto front (ranked)")
    if uniform is not None:
        ax.axvline(MU.scale * uniform, color="grey", lw=0.8, ls=":", label=f"uniform map ({MU.show(uniform)})")
    ax.set_xlabel(f"{HIDDEN.title} {HIDDEN.scaled} ({HIDDEN.better})")
    ax.set_ylabel(f"{DELETION.title} in the seen part ({DELETION.better})")
    if not points:
        return _no_rows(ax, title)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")


def _no_rows(ax, title: str) -> None:
    """A new board's panel: says so, rather than drawing empty bars and a legend of nothing."""
    ax.set_title(title)
    ax.text(0.5, 0.5, "no rows yet", ha="center", va="center", transform=ax.transAxes, color="grey")
