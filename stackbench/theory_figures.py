"""The figure of `stackbench theory bound`, after the paper's Figure 3: per V, the image with the wall, the
Monte Carlo mean GradCAM map and Theorem 1's bound map on one colour scale.

Drawn in the house style with the one wall drawer (`stackbench.present.style`): a bare matplotlib `Figure` on the
Agg canvas, so it runs headless and inside notebooks alike.
"""
from __future__ import annotations

import numpy as np

from .present.style import draw_wall, figure, png_bytes


def bound_figure_png(report: dict, image: np.ndarray, dpi: int = 110) -> bytes:
    """PNG bytes of the figure for a `theory.bound_report` record and its image (H, W) in [0, 1]."""
    image = np.asarray(image, dtype=float)
    results = report["results"]
    src = report["image"]
    title = f"digit #{src['index']} (label {src['label']})" if "label" in src else src["source"].split("/")[-1]
    with figure(len(results), 3, figsize=(10.5, 3.4 * len(results)), dpi=dpi, layout="constrained") as (fig, axes):
        for row, res in zip(axes, results, strict=True):
            _image_panel(row[0], image, report, title)
            im = _mean_panel(row[1], res, report)
            _bound_panel(row[2], res, report, im.get_clim()[1])
            fig.colorbar(im, ax=list(row[1:]), fraction=0.046, pad=0.02)
            for ax in row:
                ax.set_xticks([])
                ax.set_yticks([])
        return png_bytes(fig)


def _image_panel(ax, image: np.ndarray, report: dict, title: str) -> None:
    dead_from = report["config"]["geometry"]["wall"]["dead_from"]
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    draw_wall(ax, dead_from, *image.shape, look="shade")
    ax.set_title(f"{title}\nrows {dead_from}..{image.shape[0] - 1} unseen")


def _mean_panel(ax, res: dict, report: dict):
    """The Monte Carlo mean map, its colour scale the figure row's; the image of it (for the colour bar)."""
    mean = np.asarray(res["maps"]["mean"], dtype=float)
    im = ax.imshow(mean, cmap="viridis", vmin=0, vmax=float(mean.max()) or 1.0, interpolation="nearest")
    draw_wall(ax, report["config"]["geometry"]["behind_wall_conv_rows"][0], *mean.shape, look="line")
    bw = res["behind_wall"]
    ax.set_title(f"mean GradCAM, V={res['filters']}, T={report['config']['trials']}\n"
                 f"behind wall: mean {bw['mean_gradcam']:.3g},\n{100 * (bw['share_positive_mean'] or 0):.0f}% of "
                 "active pixels > 0")
    return im


def _bound_panel(ax, res: dict, report: dict, vmax: float) -> None:
    """Theorem 1's bound map on the mean's scale, or why there is none (V <= 20)."""
    if res["maps"]["bound"] is None:
        ax.text(0.5, 0.5, f"no bound claimed\n(Theorem 1 needs V > 20;\nV = {res['filters']})", ha="center",
                va="center", transform=ax.transAxes, fontsize=10)
        ax.set_facecolor("#f2f2f2")
        return
    bound = np.asarray(res["maps"]["bound"], dtype=float)
    ax.imshow(bound, cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
    draw_wall(ax, report["config"]["geometry"]["behind_wall_conv_rows"][0], *bound.shape, look="line")
    ax.set_title(f"Theorem 1 bound (same scale)\nmean >= bound at {100 * res['share_mean_ge_bound_3se']:.1f}% "
                 f"(3 SE)\nexact E[GC] / bound = {res['exact_over_bound']:.2f}")
