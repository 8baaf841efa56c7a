"""The wall: which input pixels a walled model provably cannot see.

A walled model's first dense layer ignores the bottom rows of its last feature map. `Wall` holds that
geometry (and the input rows it implies through the receptive field of the convolutional stack);
`dead_zone` finds the dead pixels of *any* model by tracing it; `check` proves the wall bitwise.

This module imports nothing of the package: the metric, the generators and the figures all use it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import torch


@dataclass(frozen=True)
class Wall:
    """Geometry of a wall.

    grid: (h, w) of the feature map the dense head reads.
    masked_rows: how many feature rows on `side` the head ignores (0: no wall).
    input_size: (H, W) of the model input.
    dead_from: first input row that no logit depends on (H when there is no dead zone).
    """

    grid: tuple[int, int] = (14, 14)
    masked_rows: int = 9
    side: str = "bottom"
    input_size: tuple[int, int] = (224, 224)
    dead_from: int = 170

    def __post_init__(self):
        if self.side != "bottom":
            raise ValueError(f"wall side {self.side!r} is not supported; only 'bottom' is")
        if not 0 <= self.masked_rows <= self.grid[0]:
            raise ValueError(f"masked_rows={self.masked_rows} outside 0..{self.grid[0]}")

    @property
    def dead_rows(self) -> range:
        """Input rows behind the wall (empty for an unwalled model)."""
        return range(self.dead_from, self.input_size[0])

    @property
    def dead_height(self) -> int:
        return len(self.dead_rows)

    @property
    def share(self) -> float:
        """Fraction of the image area behind the wall."""
        return self.dead_height / self.input_size[0]

    def feature_mask(self) -> torch.Tensor:
        """(h, w) float mask of the feature map: 1 where the head may look, 0 behind the wall."""
        h, w = self.grid
        mask = torch.ones(h, w)
        if self.masked_rows:
            mask[h - self.masked_rows:] = 0
        return mask

    def rows_at(self, height: int) -> range:
        """The dead rows scaled to an image of `height` rows (e.g. a generator's native size)."""
        start = round(self.dead_from * height / self.input_size[0])
        return range(start, height)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["grid"], d["input_size"] = list(self.grid), list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Wall":
        d = dict(d)
        d["grid"], d["input_size"] = tuple(d["grid"]), tuple(d["input_size"])
        return cls(**d)

    def describe(self) -> str:
        if not self.dead_height:
            return "no wall"
        last = self.input_size[0] - 1
        return (f"rows {self.dead_from}..{last} ({self.dead_height} px, {100 * self.share:.1f}% of the image); "
                f"feature rows {self.grid[0] - self.masked_rows}..{self.grid[0] - 1} of {self.grid[0]} masked")


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
    """Result of tracing: `mask` (H, W) is True where every trace gave an exactly zero gradient."""

    mask: torch.Tensor
    traces: int
    seed: int
    rows: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.rows = [int(r) for r in torch.nonzero(self.mask.all(dim=1)).flatten()]

    @property
    def pixels(self) -> int:
        return int(self.mask.sum())

    @property
    def share(self) -> float:
        return self.pixels / self.mask.numel()

    def describe(self) -> str:
        if not self.rows:
            extra = f" ({self.pixels} isolated dead pixels)" if self.pixels else ""
            return "no dead rows" + extra
        return f"rows {format_rows(self.rows)} ({len(self.rows)} px, {100 * len(self.rows) / self.mask.shape[0]:.1f}% of the image)"


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

    def holds(self, wall: Wall) -> bool:
        """The verdict: the traced dead rows are exactly the declared ones (none for an unwalled model) and noise
        there left every logit bitwise identical."""
        return self.identical and self.rows == list(wall.dead_rows)

    def describe(self) -> str:
        if not self.rows:
            return "nothing to check (no dead rows)"
        verdict = "PASS: logits bitwise identical" if self.identical else f"FAIL: logits differ (max |diff| {self.max_abs_diff:.3g})"
        return f"{verdict} with rows {format_rows(self.rows)} replaced by noise ({self.trials} inputs)"


@torch.no_grad()
def logits_unchanged(model: torch.nn.Module, rows: Sequence[int], input_size: tuple[int, int] = (224, 224),
                     trials: int = 2, seed: int = 1, channels: int = 3) -> CheckResult:
    """Replace `rows` of random inputs with fresh noise and compare every logit bitwise."""
    device, dtype = _device_dtype(model)
    gen = torch.Generator().manual_seed(seed)
    rows = sorted(int(r) for r in rows)
    was_training = model.training
    model.eval()
    try:
        x = torch.randn(trials, channels, *input_size, generator=gen)
        y = x.clone()
        if rows:
            idx = torch.tensor(rows)
            y[:, :, idx] = 3 * torch.randn(trials, channels, len(rows), input_size[1], generator=gen)
        a = model(x.to(device, dtype))
        b = model(y.to(device, dtype))
    finally:
        model.train(was_training)
    return CheckResult(rows=rows, identical=bool(torch.equal(a, b)),
                       max_abs_diff=float((a - b).abs().max()), trials=trials)


def check(model: torch.nn.Module, input_size: tuple[int, int] = (224, 224), traces: int = 4, seed: int = 0,
          zone: DeadZone | None = None) -> CheckResult:
    """Trace the dead zone (unless given) and verify that noise there leaves every logit bitwise identical."""
    zone = zone or dead_zone(model, input_size, traces=traces, seed=seed)
    return logits_unchanged(model, zone.rows, input_size, seed=seed + 1)
