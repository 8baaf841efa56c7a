"""Figures: saliency overlays with the wall hatched (like the paper's Figure 6) and mu bar charts.

`draw_wall(ax, dead_from, ...)` is the one way the wall is drawn on any matplotlib axis."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

WALL_COLOR = "red"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def draw_wall(ax, dead_from: int, height: int = 224, width: int = 224, color: str = WALL_COLOR,
              label: str | None = None):
    """Hatch the rows behind the wall (dead_from..height-1) on an image axis (pixel coordinates, origin top)."""
    from matplotlib.patches import Rectangle

    if dead_from >= height:
        return None
    patch = Rectangle((-0.5, dead_from - 0.5), width, height - dead_from, fill=False, edgecolor=color,
                      hatch="///", linewidth=1.5, label=label)
    ax.add_patch(patch)
    return patch


def overlay(ax, image: np.ndarray, sal: np.ndarray, dead_from: int, alpha: float = 0.5, cmap: str = "jet"):
    """One panel: the image (H, W, 3 in [0, 1]), its saliency on top, the wall hatched."""
    ax.imshow(np.clip(image, 0, 1))
    ax.imshow(sal, cmap=cmap, alpha=alpha, vmin=0, vmax=max(float(np.max(sal)), 1e-12))
    draw_wall(ax, dead_from, *sal.shape[:2])
    ax.set_xticks([])
    ax.set_yticks([])


def overlay_grid(images: Sequence[np.ndarray], maps: Mapping[str, np.ndarray], ids: Sequence[str], dead_from: int,
                 path: str | Path) -> Path:
    """Rows = images, columns = the image then one overlay per method; written as PNG."""
    from .metrics import mu as mu_fn

    plt = _plt()
    names = list(maps)
    n = len(images)
    fig, axes = plt.subplots(n, len(names) + 1, figsize=(2.0 * (len(names) + 1), 2.0 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(np.clip(images[i], 0, 1))
        draw_wall(axes[i, 0], dead_from, *images[i].shape[:2])
        axes[i, 0].set_xticks([])
        axes[i, 0].set_yticks([])
        axes[i, 0].set_ylabel(str(ids[i])[:18], fontsize=7)
        for j, name in enumerate(names):
            sal = maps[name][i]
            overlay(axes[i, j + 1], images[i], sal, dead_from)
            val = float(mu_fn(sal, dead_from)[0])
            axes[i, j + 1].set_xlabel("empty" if np.isnan(val) else f"mu={100 * val:.1f}", fontsize=7)
            if i == 0:
                axes[i, j + 1].set_title(name, fontsize=8)
    if n:
        axes[0, 0].set_title("image (wall hatched)", fontsize=8)
    return save_figure(fig, path)


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
        means = [100 * (a.get("mean") or 0.0) for a in aggs]
        stds = [100 * (a.get("std") or 0.0) for a in aggs]
        ax.bar(x + (k - (len(datasets) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=d.upper())
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("mu x100 (lower is better)")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(bottom=0)
    if len(datasets) > 1:
        ax.legend(fontsize=8)


def mu_bars(results: Mapping[str, Mapping[str, Mapping]], path: str | Path, datasets: Sequence[str] | None = None,
            title: str = "mu x100 per method (mean +- std over images)") -> Path:
    """The mu bar chart of one evaluation: methods x datasets."""
    datasets = list(datasets or dict.fromkeys(d for r in results.values() for d in r))
    fig, ax = _plt().subplots(figsize=(max(5.0, 0.9 * len(results) + 2), 3.6))
    mu_bars_ax(ax, results, datasets, title)
    return save_figure(fig, path)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (lower is better), by the first one."""
    order = sorted(range(len(points)), key=lambda i: points[i])
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def pareto_ax(ax, points: Sequence[tuple[str, float, float, str]], title: str = "", uniform: float | None = None) -> None:
    """One point per method: (name, mu_hidden, deletion AUC, section). Controls are crosses, unranked rows hollow;
    the Pareto front of the ranked rows (lower is better on both axes) is drawn."""
    style = {"ranked": dict(marker="o", color="C0"), "unranked": dict(marker="o", facecolors="none", edgecolors="C1"),
             "control": dict(marker="x", color="C3")}
    for section, label in (("ranked", "ranked"), ("unranked", "listed, not ranked"), ("control", "control")):
        pts = [p for p in points if p[3] == section]
        if pts:
            ax.scatter([100 * p[1] for p in pts], [p[2] for p in pts], s=36, label=label, **style[section])
    for name, h, d, _ in points:
        ax.annotate(name, (100 * h, d), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ranked = [(100 * p[1], p[2]) for p in points if p[3] == "ranked"]
    if ranked:
        front = [ranked[i] for i in pareto_front(ranked)]
        ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="C0", lw=1, label="Pareto front (ranked)")
    if uniform is not None:
        ax.axvline(100 * uniform, color="grey", lw=0.8, ls=":", label=f"uniform map ({100 * uniform:.1f})")
    ax.set_xlabel("mu behind a hidden wall x100 (lower is better)")
    ax.set_ylabel("deletion AUC in the seen part (lower is better)")
    if not points:
        return _no_rows(ax, title)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")


def _no_rows(ax, title: str) -> None:
    """A new board's panel: says so, rather than drawing empty bars and a legend of nothing."""
    ax.set_title(title, fontsize=9)
    ax.text(0.5, 0.5, "no rows yet", ha="center", va="center", transform=ax.transAxes, color="grey")


def save_figure(fig, path: str | Path) -> Path:
    """Tight layout, PNG without a version stamp (the same figure gives the same bytes), written atomically."""
    import io

    from .datafolder import atomic_write_bytes

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
