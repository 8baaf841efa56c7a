"""The one look of every figure (the board's charts, the report's, the overlays, the theory figure) and the one
way the wall is drawn on any of them.

Figures are bare matplotlib `Figure`s on the Agg canvas: no pyplot state and no global backend change, so they
render headless and inside notebooks alike, and the same figure gives the same PNG bytes (no version stamp).
matplotlib is imported when a figure is made, never at import."""
from __future__ import annotations

import contextlib
import io
import numbers
from pathlib import Path
from typing import Iterator, Mapping

WALL_COLOR = "red"
# Small text: the panels are small and the method names many.
STYLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8,
         "legend.fontsize": 8, "savefig.dpi": "figure"}
LOOKS = ("hatch", "line", "shade")


@contextlib.contextmanager
def figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6.4, 4.8), dpi: int = 100,
           layout: str = "tight") -> Iterator[tuple]:
    """(figure, 2-d array of axes) drawn in the house style; render it (`png_bytes`, `save_png`) inside the block."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=figsize, dpi=dpi, layout=layout)
        FigureCanvasAgg(fig)
        yield fig, fig.subplots(nrows, ncols, squeeze=False)


def png_bytes(fig) -> bytes:
    """The figure as PNG without a version stamp (the same figure gives the same bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def save_png(fig, path: str | Path) -> Path:
    """`png_bytes`, written atomically."""
    from ..datafolder import atomic_write_bytes

    atomic_write_bytes(path, png_bytes(fig))
    return Path(path)


def _band(wall, height: int | None, width: int | None) -> tuple[str, int, int, int, int, str]:
    """(axis "rows" | "columns", first, last, height, width, side) of the dead band on an image of (height, width).
    `wall`: the first dead row (the wall at the bottom), a `stackbench.wall.Wall`, or a record's wall dict."""
    if isinstance(wall, numbers.Integral):
        if height is None or width is None:
            raise ValueError("a wall given as a row needs the image's height and width")
        return "rows", int(wall), height - 1, height, width, "bottom"
    if isinstance(wall, Mapping):
        from ..wall import Wall

        wall = Wall.from_dict(wall)
    H, W = wall.input_size
    height, width = height or H, width or W
    axis, lo, hi = wall.band()
    size, full = (height, H) if axis == "rows" else (width, W)
    # A wall declared on the model's input, drawn on an image of another size (a feature map, a native image).
    lo, hi = round(lo * size / full), round((hi + 1) * size / full) - 1
    return axis, lo, hi, height, width, wall.side


def draw_wall(ax, wall, height: int | None = None, width: int | None = None, look: str = "hatch",
              color: str = WALL_COLOR, label: str | None = None):
    """Mark what is behind the wall on an image axis (pixel coordinates, origin top left): `look` "hatch"
    (outlined and hatched, as the paper's Figure 6), "line" (the wall's edge only) or "shade" (the edge and a light
    fill). `wall`: see `_band`; height and width are the image's (default: the wall's input size). Returns what
    was drawn, None when nothing is behind the wall."""
    from matplotlib.patches import Rectangle

    if look not in LOOKS:
        raise ValueError(f"unknown wall look {look!r}; expected one of {', '.join(LOOKS)}")
    axis, lo, hi, height, width, side = _band(wall, height, width)
    if hi < lo or (axis == "rows" and (lo >= height or hi < 0)) or (axis == "columns" and (lo >= width or hi < 0)):
        return None
    xy, w, h = ((-0.5, lo - 0.5), width, hi - lo + 1) if axis == "rows" else ((lo - 0.5, -0.5), hi - lo + 1, height)
    drawn = None
    if look == "hatch":
        drawn = ax.add_patch(Rectangle(xy, w, h, fill=False, edgecolor=color, hatch="///", linewidth=1.5,
                                       label=label))
    elif look == "shade":
        ax.add_patch(Rectangle(xy, w, h, facecolor=color, alpha=0.25, edgecolor="none"))
    if look != "hatch":
        edge = lo - 0.5 if side in ("bottom", "right") else hi + 0.5  # the side facing what the model sees
        line = ax.axhline if axis == "rows" else ax.axvline
        drawn = line(edge, color=color, linewidth=1.5, label=label)
    return drawn
