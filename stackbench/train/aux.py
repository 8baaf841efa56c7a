"""Dense supervision from object masks (`TrainConfig.aux_masks`): a training-only head on every live token of a
walled ViT predicts how much of each of the token's 4x4 sub-cells the object covers.

On the `shapes`, whose classes differ only by outline, this is what took a small ViT off the chance plateau on a
CPU budget (FIELD_NOTES). It is privileged information: it tells every token where the object is. The head is
never part of the classifier: `WithMaskHead` wraps the model for the run, and the run saves the model alone.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import StackbenchError

SUBCELL = 4  # pixels per side of a sub-cell: 16 targets per 16x16 patch


class WithMaskHead(nn.Module):
    """The model and its auxiliary mask head, for training: in training mode `forward` returns (logits, the mask
    head's logits per live token (B, n_live, cells)); in evaluation mode the model's logits alone."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if not hasattr(model, "live_forward"):  # the run refuses a non-ViT earlier, naming the option's source
            raise StackbenchError(f"--aux-masks: {getattr(model, 'name', type(model).__name__)} is not a stackbench "
                                  "ViT; the mask loss is read per token")
        if model.patch_size % SUBCELL:
            raise StackbenchError(f"--aux-masks: patch {model.patch_size} is not a multiple of {SUBCELL} pixels")
        self.model = model
        self.mask_head = nn.Linear(model.dim, (model.patch_size // SUBCELL) ** 2)

    def forward(self, x: torch.Tensor):
        if not self.training:
            return self.model(x)
        logits, tokens = self.model.live_forward(x)
        return logits, self.mask_head(tokens)


def mask_targets(masks: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """(B, 1, H, W) uint8 object masks -> the object's coverage in [0, 1] of each live token's sub-cells,
    (B, n_live, cells), in the order of `model.live_forward`'s tokens."""
    p, g = model.patch_size, model.grid
    k = p // SUBCELL
    cover = F.avg_pool2d(masks.float() / 255.0, SUBCELL)  # (B, 1, H/4, W/4)
    B = cover.shape[0]
    cells = cover.view(B, g[0], k, g[1], k).permute(0, 1, 3, 2, 4).reshape(B, g[0] * g[1], k * k)
    return cells.index_select(1, model.live_index.to(cells.device))


def mask_loss(pred: torch.Tensor, masks: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Binary cross-entropy of the mask head's logits against the sub-cells' coverage."""
    return F.binary_cross_entropy_with_logits(pred.float(), mask_targets(masks, model))
