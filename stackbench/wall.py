"""The wall: which input pixels a walled model provably cannot see.

A walled model's first dense layer ignores the bottom rows of its last feature map. `Wall` holds that
geometry (and the input rows it implies through the receptive field of the convolutional stack) under any of
the 8 dihedral orientations of the square input (`ORIENTATIONS`: the wall at the bottom, top, left or right);
`dead_zone` finds the dead pixels of *any* model by tracing it; `check` proves the wall bitwise.

This module imports nothing of the package: the metric, the generators and the figures all use it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Iterable, Sequence

import numpy as np
import torch

# The dihedral group of the square: g(x) = transpose (if t), then flip rows (if fh), then flip columns (if fw).
# Where the bottom wall goes: identity and hflip keep it at the bottom; the other 6 move it.
ORIENTATIONS = {
    "identity": (False, False, False), "hflip": (False, False, True), "vflip": (False, True, False),
    "rot180": (False, True, True), "transpose": (True, False, False), "rot90": (True, True, False),
    "rot270": (True, False, True), "antitranspose": (True, True, True),
}
MOVING = ("vflip", "rot180", "transpose", "rot90", "rot270", "antitranspose")


def _check_orientation(g: str) -> str:
    if g not in ORIENTATIONS:
        raise ValueError(f"unknown orientation {g!r}; expected one of {', '.join(ORIENTATIONS)}")
    return g


def apply(x: torch.Tensor, g: str) -> torch.Tensor:
    """g(x) on the last two (spatial) dims of a tensor or numpy array (a view where possible)."""
    t, fh, fw = ORIENTATIONS[_check_orientation(g)]
    if isinstance(x, torch.Tensor):
        if t:
            x = x.transpose(-1, -2)
        dims = [d for d, f in ((-2, fh), (-1, fw)) if f]
        return x.flip(dims) if dims else x
    if t:
        x = np.swapaxes(x, -1, -2)
    if fh:
        x = x[..., ::-1, :]
    if fw:
        x = x[..., ::-1]
    return x


def inverse(g: str) -> str:
    """The orientation that undoes g."""
    return next(h for h in ORIENTATIONS if compose(_check_orientation(g), h) == "identity")


def compose(first: str, then: str) -> str:
    """The orientation h with h(x) = then(first(x))."""
    probe = torch.arange(9).view(3, 3)
    target = apply(apply(probe, first), then)
    return next(h for h in ORIENTATIONS if torch.equal(apply(probe, h), target))


@dataclass(frozen=True)
class Wall:
    """Geometry of a wall.

    grid: (h, w) of the feature map the dense head reads.
    masked_rows: how many feature rows at the bottom the head ignores before `orientation` (0: no wall).
    input_size: (H, W) of the model input.
    dead_from: first input row that no logit depends on before `orientation` (H when there is no dead zone).
    orientation: the dihedral transform (`ORIENTATIONS`) applied to that bottom wall; `side` says where it lands.
    """

    grid: tuple[int, int] = (14, 14)
    masked_rows: int = 9
    input_size: tuple[int, int] = (224, 224)
    dead_from: int = 170
    orientation: str = "identity"

    def __post_init__(self):
        if not 0 <= self.masked_rows <= self.grid[0]:
            raise ValueError(f"masked_rows={self.masked_rows} outside 0..{self.grid[0]}")
        _check_orientation(self.orientation)
        square = self.grid[0] == self.grid[1] and self.input_size[0] == self.input_size[1]
        if self.orientation != "identity" and not square:
            raise ValueError(f"orientation {self.orientation!r} needs a square input and feature map")

    @property
    def side(self) -> str:
        """Where the dead band lies: bottom, top, right or left."""
        t, fh, fw = ORIENTATIONS[self.orientation]
        return ("left" if fw else "right") if t else ("top" if fh else "bottom")

    @property
    def axis(self) -> int:
        """-2 when the band is rows (bottom, top), -1 when it is columns (left, right)."""
        return -1 if ORIENTATIONS[self.orientation][0] else -2

    def oriented(self, g: str) -> "Wall":
        """This wall after the input (and the model) are transformed by g."""
        return replace(self, orientation=compose(self.orientation, g))

    def canonical(self) -> "Wall":
        return replace(self, orientation="identity")

    def _band(self, rows: slice) -> torch.Tensor:
        """(H, W) bool: the canonical (bottom-wall) input rows `rows`, in this orientation."""
        m = torch.zeros(self.input_size, dtype=torch.bool)
        m[rows] = True
        return apply(m, self.orientation).contiguous()

    def dead_mask(self) -> torch.Tensor:
        """(H, W) bool: True on the input pixels behind the wall, in this orientation."""
        return self._band(slice(self.dead_from, None))

    def seen_mask(self) -> torch.Tensor:
        """(H, W) bool: the pixels in front of the wall."""
        return ~self.dead_mask()

    def read_cells(self) -> torch.Tensor:
        """(H, W) bool: the input pixels under the feature cells the head reads (the live feature rows scaled to
        the input: rows 0..79 of 224 for the paper's geometry), in this orientation. Where a map's ranking is
        tested against the model's (the randomisation check)."""
        stride = self.input_size[0] // self.grid[0]
        return self._band(slice(0, (self.grid[0] - self.masked_rows) * stride))

    def live_slice(self, stride: int) -> tuple[int, slice]:
        """(axis, slice): the input lines the live feature lines can see, widened to a multiple of `stride` at the
        wall's side, so a conv stack of that stride computes the live features on the slice alone."""
        H = self.input_size[0]
        live = math.ceil(self.dead_from / stride) * stride if self.dead_height else H
        live = min(live, H)
        far = ORIENTATIONS[self.orientation][2 if ORIENTATIONS[self.orientation][0] else 1]
        return self.axis, (slice(H - live, H) if far else slice(0, live))

    @property
    def dead_rows(self) -> range:
        """Input rows behind the wall before `orientation` (empty for an unwalled model)."""
        return range(self.dead_from, self.input_size[0])

    @property
    def dead_height(self) -> int:
        return len(self.dead_rows)

    @property
    def share(self) -> float:
        """Fraction of the image area behind the wall."""
        return self.dead_height / self.input_size[0]

    def feature_mask(self) -> torch.Tensor:
        """(h, w) float mask of the feature map: 1 where the head may look, 0 behind the wall (oriented)."""
        h, w = self.grid
        mask = torch.ones(h, w)
        if self.masked_rows:
            mask[h - self.masked_rows:] = 0
        return apply(mask, self.orientation).contiguous()

    def rows_at(self, height: int) -> range:
        """The dead rows scaled to an image of `height` rows (e.g. a generator's native size)."""
        start = round(self.dead_from * height / self.input_size[0])
        return range(start, height)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["grid"], d["input_size"] = list(self.grid), list(self.input_size)
        d["side"] = self.side
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Wall":
        d = dict(d)
        d["grid"], d["input_size"] = tuple(d["grid"]), tuple(d["input_size"])
        side = d.pop("side", None)  # derived (schema 1 records carry side "bottom" and no orientation)
        wall = cls(**d)
        if side is not None and side != wall.side:
            raise ValueError(f"wall side {side!r} does not match orientation {wall.orientation!r} ({wall.side})")
        return wall

    def band(self) -> tuple[str, int, int]:
        """("rows" | "columns", first, last) of the dead band in this orientation."""
        H = self.input_size[0]
        lo, hi = self.dead_from, H - 1
        if self.side in ("top", "left"):
            lo, hi = 0, H - 1 - self.dead_from
        return ("rows" if self.axis == -2 else "columns"), lo, hi

    def __str__(self) -> str:
        if not self.dead_height:
            return "no wall"
        what, lo, hi = self.band()
        feat = "rows" if self.axis == -2 else "columns"
        g = self.grid[0]
        flo, fhi = (g - self.masked_rows, g - 1) if self.side in ("bottom", "right") else (0, self.masked_rows - 1)
        turned = "" if self.orientation == "identity" else f"; orientation {self.orientation}"
        return (f"{what} {lo}..{hi} ({self.dead_height} px, {100 * self.share:.1f}% of the image, {self.side}); "
                f"feature {feat} {flo}..{fhi} of {g} masked{turned}")


def live_input_rows(layers: Sequence[tuple[int, int, int]], live_rows: tuple[int, int], height: int) -> tuple[int, int]:
    """Input rows [lo, hi] that feature rows `live_rows` can see through a stack of (kernel, stride, padding)
    layers, clipped to the image. Receptive-field arithmetic; `dead_zone` checks it by tracing."""
    lo, hi = live_rows
    for k, s, p in reversed(list(layers)):
        lo, hi = lo * s - p, hi * s - p + k - 1
    return max(lo, 0), min(hi, height - 1)


def wall_for(layers: Sequence[tuple[int, int, int]], input_size: tuple[int, int], masked_rows: int) -> Wall:
    """The Wall of a conv stack whose head ignores the bottom `masked_rows` feature rows."""
    h = input_size[0]
    for k, s, p in layers:
        h = (h + 2 * p - k) // s + 1
    w = input_size[1]
    for k, s, p in layers:
        w = (w + 2 * p - k) // s + 1
    if masked_rows == 0:
        dead_from = input_size[0]
    elif masked_rows == h:
        dead_from = 0
    else:
        dead_from = live_input_rows(layers, (0, h - masked_rows - 1), input_size[0])[1] + 1
    return Wall(grid=(h, w), masked_rows=masked_rows, input_size=tuple(input_size), dead_from=dead_from)


@dataclass
class DeadZone:
    """Result of tracing: `mask` (H, W) is True where every trace gave an exactly zero gradient. `rows` and
    `columns` are the lines dead across the whole image (a wall is one band of them)."""

    mask: torch.Tensor
    traces: int
    seed: int
    rows: list[int] = field(default_factory=list)
    columns: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.rows = [int(r) for r in torch.nonzero(self.mask.all(dim=1)).flatten()]
        self.columns = [int(c) for c in torch.nonzero(self.mask.all(dim=0)).flatten()]

    @property
    def pixels(self) -> int:
        return int(self.mask.sum())

    @property
    def share(self) -> float:
        return self.pixels / self.mask.numel()

    def band_mask(self) -> torch.Tensor:
        """(H, W) bool: the pixels on a fully dead row or column (what `check` puts noise on)."""
        m = torch.zeros_like(self.mask)
        if self.rows:
            m[self.rows] = True
        if self.columns:
            m[:, self.columns] = True
        return m

    def matches(self, wall: Wall) -> bool:
        """The traced band is exactly the wall's dead band in its orientation (no band for an unwalled model)."""
        return torch.equal(self.band_mask(), wall.dead_mask())

    def __str__(self) -> str:
        H, W = self.mask.shape
        parts = [f"{what} {format_rows(lines)} ({len(lines)} px, {100 * len(lines) / n:.1f}% of the image)"
                 for what, lines, n in (("rows", self.rows, H), ("columns", self.columns, W))
                 if lines and len(lines) < n]
        if not parts:
            if self.rows:
                return "every pixel is dead"
            extra = f" ({self.pixels} isolated dead pixels)" if self.pixels else ""
            return "no dead rows or columns" + extra
        return "; ".join(parts)


def format_rows(rows: Iterable[int]) -> str:
    """[170, 171, ..., 223] -> '170..223'; gaps are listed as separate runs."""
    rows = sorted(rows)
    if not rows:
        return "none"
    runs, start, prev = [], rows[0], rows[0]
    for r in rows[1:]:
        if r != prev + 1:
            runs.append((start, prev))
            start = r
        prev = r
    runs.append((start, prev))
    return ", ".join(f"{a}..{b}" if a != b else f"{a}" for a, b in runs)


def _device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters(), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


def dead_zone(model: torch.nn.Module, input_size: tuple[int, int] = (224, 224), traces: int = 4,
              seed: int = 0, channels: int = 3) -> DeadZone:
    """Find the input pixels no logit depends on, by tracing the model itself.

    Each trace takes a random input and a random projection of the logits and back-propagates to the
    input; a pixel is dead when every trace gives exactly zero gradient there (any channel). Several
    traces are needed because a max-pool routes gradient to one pixel per window and a ReLU may be
    off: a live pixel can be zero in one trace, not in all of them.
    """
    device, dtype = _device_dtype(model)
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        x = torch.randn(traces, channels, *input_size, generator=gen).to(device, dtype).requires_grad_(True)
        with torch.enable_grad():
            logits = model(x)
            proj = torch.randn(logits.shape, generator=gen).to(device, logits.dtype)
            (grad,) = torch.autograd.grad((logits * proj).sum(), x)
    finally:
        model.train(was_training)
    dead = (grad == 0).all(dim=1).all(dim=0).cpu()
    return DeadZone(mask=dead, traces=traces, seed=seed)


@dataclass
class CheckResult:
    rows: list[int]
    identical: bool
    max_abs_diff: float
    trials: int
    columns: list[int] = field(default_factory=list)
    mask: torch.Tensor | None = field(default=None, repr=False)

    def holds(self, wall: Wall) -> bool:
        """The verdict: the checked band is exactly the wall's dead band in its orientation (none for an unwalled
        model) and noise there left every logit bitwise identical."""
        mask = self.mask if self.mask is not None else torch.zeros(wall.input_size, dtype=torch.bool)
        return self.identical and tuple(mask.shape) == tuple(wall.input_size) and torch.equal(mask, wall.dead_mask())

    def __str__(self) -> str:
        if self.mask is None or not bool(self.mask.any()):
            return "nothing to check (no dead rows or columns)"
        verdict = "PASS: logits bitwise identical" if self.identical else \
            f"FAIL: logits differ (max |diff| {self.max_abs_diff:.3g})"
        where = "; ".join(f"{what} {format_rows(lines)}"
                          for what, lines in (("rows", self.rows), ("columns", self.columns))
                          if lines) or f"{int(self.mask.sum())} pixels"
        return f"{verdict} with {where} replaced by noise ({self.trials} inputs)"


def _as_mask(where, input_size) -> torch.Tensor:
    """Rows (a list of ints) or an (H, W) bool mask -> an (H, W) bool mask."""
    if isinstance(where, torch.Tensor) and where.dtype == torch.bool:
        return where.cpu()
    mask = torch.zeros(input_size, dtype=torch.bool)
    rows = sorted(int(r) for r in where)
    if rows:
        mask[rows] = True
    return mask


@torch.no_grad()
def logits_unchanged(model: torch.nn.Module, where, input_size: tuple[int, int] = (224, 224),
                     trials: int = 2, seed: int = 1, channels: int = 3) -> CheckResult:
    """Replace the pixels `where` (a list of rows, or an (H, W) bool mask) of random inputs with fresh noise and
    compare every logit bitwise."""
    device, dtype = _device_dtype(model)
    gen = torch.Generator().manual_seed(seed)
    mask = _as_mask(where, input_size)
    was_training = model.training
    model.eval()
    try:
        x = torch.randn(trials, channels, *input_size, generator=gen)
        noise = 3 * torch.randn(trials, channels, *input_size, generator=gen)
        y = torch.where(mask, noise, x)
        a = model(x.to(device, dtype))
        b = model(y.to(device, dtype))
    finally:
        model.train(was_training)
    rows = [int(r) for r in torch.nonzero(mask.all(dim=1)).flatten()]
    cols = [int(c) for c in torch.nonzero(mask.all(dim=0)).flatten()]
    return CheckResult(rows=rows, columns=cols, identical=bool(torch.equal(a, b)),
                       max_abs_diff=float((a - b).abs().max()), trials=trials, mask=mask)


def check(model: torch.nn.Module, input_size: tuple[int, int] = (224, 224), traces: int = 4, seed: int = 0,
          zone: DeadZone | None = None) -> CheckResult:
    """Trace the dead zone (unless given) and verify that noise on its dead rows and columns leaves every logit
    bitwise identical."""
    zone = zone or dead_zone(model, input_size, traces=traces, seed=seed)
    return logits_unchanged(model, zone.band_mask(), input_size, seed=seed + 1)
