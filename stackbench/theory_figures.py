"""The figure of `stackbench theory bound`, after the paper's Figure 3: per V, the image with the wall, the
Monte Carlo mean GradCAM map and Theorem 1's bound map on one colour scale.

Drawn on a bare matplotlib `Figure` rendered by the Agg canvas: no pyplot state, no global backend change,
so it runs headless and inside notebooks alike.
"""
from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .figures import WALL_COLOR


def _wall(ax, first_row: int, height: int, width: int, shade: bool = False) -> None:
    """Draw the wall line above rows first_row.. (the part the network cannot use); shade them if asked."""
    if first_row >= height:
        return
    if shade:
        ax.add_patch(Rectangle((-0.5, first_row - 0.5), width, height - first_row, facecolor=WALL_COLOR,
                               alpha=0.25, edgecolor="none"))
    ax.axhline(first_row - 0.5, color=WALL_COLOR, linewidth=1.5)


def bound_figure_png(report: dict, image: np.ndarray, dpi: int = 110) -> bytes:
    """PNG bytes of the figure for a `theory.bound_report` record and its image (H, W) in [0, 1]."""
    image = np.asarray(image, dtype=float)
    geom = report["config"]["geometry"]
    dead_from = geom["wall"]["dead_from"]
    behind_from = geom["behind_wall_conv_rows"][0]
    results = report["results"]
    fig = Figure(figsize=(10.5, 3.4 * len(results)), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(results), 3, squeeze=False)
    src = report["image"]
    title = f"digit #{src['index']} (label {src['label']})" if "label" in src else src["source"].split("/")[-1]
    for row, res in zip(axes, results):
        v = res["filters"]
        mean = np.asarray(res["maps"]["mean"], dtype=float)
        bound = None if res["maps"]["bound"] is None else np.asarray(res["maps"]["bound"], dtype=float)
        vmax = float(mean.max()) or 1.0

        ax = row[0]
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        _wall(ax, dead_from, *image.shape, shade=True)
        ax.set_title(f"{title}\nrows {dead_from}..{image.shape[0] - 1} unseen", fontsize=9)

        ax = row[1]
        im = ax.imshow(mean, cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
        _wall(ax, behind_from, *mean.shape)
        bw = res["behind_wall"]
        ax.set_title(f"mean GradCAM, V={v}, T={report['config']['trials']}\n"
                     f"behind wall: mean {bw['mean_gradcam']:.3g},\n{100 * (bw['share_positive_mean'] or 0):.0f}% of "
                     "active pixels > 0", fontsize=9)

        ax = row[2]
        if bound is None:
            ax.text(0.5, 0.5, f"no bound claimed\n(Theorem 1 needs V > 20;\nV = {v})", ha="center", va="center",
                    transform=ax.transAxes, fontsize=10)
            ax.set_facecolor("#f2f2f2")
        else:
            ax.imshow(bound, cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
            _wall(ax, behind_from, *bound.shape)
            share = res["share_mean_ge_bound_3se"]
            ax.set_title(f"Theorem 1 bound (same scale)\nmean >= bound at {100 * share:.1f}% (3 SE)\n"
                         f"exact E[GC] / bound = {res['exact_over_bound']:.2f}", fontsize=9)
        fig.colorbar(im, ax=list(row[1:]), fraction=0.046, pad=0.02)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    buf = io.BytesIO()
    # No Software/date metadata: the same report gives the same bytes.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
