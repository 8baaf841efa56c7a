"""Controls: maps that carry no explanation, shipped so the board shows which axis catches each. They are
built-in methods of family `control`, listed on the board in their own section and never ranked.

The first three know the paper's wall (the bottom rows from `wall_row`) and hide from it, as a method tuned
to the benchmark would: mu alone scores them 0. Hidden walls move the wall where they do not look; the
randomisation check sees that the first two ignore the model; deletion sees that they do not find what the
model uses. RandomCAM (random channel weights, in `gradient`) is the fourth.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from .. import metrics as M
from ..errors import StackbenchError
from .backbone import Batch
from .base import SaliencyMethod
from .gradient import ACTS_GRADS, GradCAM
from .registry import register_method

WALL_ROW = 170  # the paper's first dead row at 224 px: what a method tuned to the benchmark would hard-code


class WallRowControl(SaliencyMethod):
    """A control that hides from the paper's wall: `wall_row` is the first row it zeroes."""

    family = "control"
    defaults = {"wall_row": WALL_ROW}

    def __init__(self, model=None, **config):
        super().__init__(model, **config)
        row = self.config["wall_row"]
        if isinstance(row, bool) or not isinstance(row, int) or row < 1:
            raise StackbenchError(f"method {self.name}: wall_row {row!r} must be a positive whole number of rows")


def _zero_below(maps: torch.Tensor, row: int) -> torch.Tensor:
    maps = maps.clone()
    maps[:, int(row):] = 0
    return maps


@register_method("ConstantSeen")
class ConstantSeen(WallRowControl):
    """Control: 1 above the paper's wall row, 0 below; the same map for every image and model."""

    def explain(self, batch: Batch):
        n, _, h, w = batch.x01.shape
        return _zero_below(torch.ones(n, h, w), self.config["wall_row"])


@register_method("SobelSeen")
class SobelSeen(WallRowControl):
    """Control: the Sobel edge magnitude of the grey image, zeroed from the paper's wall row down (no model)."""

    def explain(self, batch: Batch):
        grey = batch.x01.float().mean(dim=1, keepdim=True).cpu()
        kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        k = torch.stack([kx, kx.T])[:, None]
        g = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), k)
        return _zero_below(g.pow(2).sum(dim=1).sqrt(), self.config["wall_row"])


@register_method("GradCAMZeroed")
class GradCAMZeroed(WallRowControl):
    """Control: GradCAM post-processed as the paper does (gradcam-lib), its 224 px map zeroed from the paper's wall
    row down."""

    needs = ACTS_GRADS

    def explain(self, batch: Batch):
        raw = GradCAM().explain(batch)
        up = M.postprocess(raw.detach().float().cpu().numpy(), "gradcam-lib", tuple(batch.x01.shape[-2:]))
        return _zero_below(torch.from_numpy(up), self.config["wall_row"])
