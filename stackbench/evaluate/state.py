"""What the set-up, the batch loop and the storage of one evaluation share: its `Setting` and a `MethodRun` per
method."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from ..axes import Axes
from ..isolation import Limits, MethodHandle, Session


@dataclass
class MethodRun:
    method: MethodHandle
    spec: str
    status: str = "pending"           # pending | skipped (finished earlier) | done | failed
    error: str | None = None
    rows: list = field(default_factory=list)
    maps: list = field(default_factory=list)
    grid_maps: list = field(default_factory=list)
    seconds: float = 0.0
    record: dict | None = None
    record_path: Path | None = None
    session: Session | None = None    # the method in its worker process

    @property
    def name(self) -> str:
        return self.method.name


@dataclass
class Setting:
    """What every pass of one evaluation shares."""

    target: str
    postprocess: str
    seed: int
    save_maps: bool
    wall: object                       # the model's Wall (the bottom one: the paper's geometry)
    axes: Axes = field(default_factory=Axes)
    chosen: frozenset | None = None    # dataset indices that get the axes (None: every image)
    clock: dict = field(default_factory=lambda: {"forward": 0.0, "backward": 0.0})
    name: str = "dataset"              # how progress names the dataset
    classes: dict | None = None        # `label_space`: do the dataset's labels name the model's classes?
    band_from: int = 170               # the dataset's band, where mu is scored (inside the model's dead zone)
    limits: Limits = field(default_factory=Limits)  # what a method's worker may spend
    batch_size: int = 8                # images per batch (a batch is the same images in every process)

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.wall.input_size)

    @property
    def shapes(self) -> tuple:
        return (tuple(self.wall.grid), self.size)

    @cached_property
    def seen(self) -> torch.Tensor:
        """(H, W) bool: the pixels in front of the wall (deletion removes these)."""
        return self.wall.seen_mask()

    @cached_property
    def read_cells(self) -> np.ndarray:
        """(H, W) bool: the pixels under the feature cells the head reads (the randomisation check's cells)."""
        return self.wall.read_cells().numpy()
