"""The zoo entries. Importing this module registers them."""
from __future__ import annotations

from .registry import register_model
from .vgg import WalledVGG

PAPER_WEIGHTS = ("the authors' weights are not on the Hub: download params_vgg16_masked.pt / params_vgg16_baseline.pt "
                 "from the paper's repository and load them with --model paper:PATH, or train one with `stackbench train`")


@register_model("vgg16-masked", "the paper's walled VGG16 (conv5_3 -> 256 ch, no last pool, bottom 9 of 14 feature rows masked)",
                how_to_get=PAPER_WEIGHTS)
def vgg16_masked(num_classes: int = 1000) -> WalledVGG:
    return WalledVGG(name="vgg16-masked", num_classes=num_classes, masked_rows=9)


@register_model("vgg16", "the paper's unmasked baseline (same network, no wall)", how_to_get=PAPER_WEIGHTS)
def vgg16(num_classes: int = 1000) -> WalledVGG:
    return WalledVGG(name="vgg16", num_classes=num_classes, masked_rows=0)


MINI = dict(width_divisor=8, hidden=256, batch_norm=True)
MINI_HOW = "train one with `stackbench train --preset mini`"


@register_model("minivgg-masked", "VGG16 topology at 1/8 width with BN, same 224 px / 14x14 / 54 px wall (CPU track)",
                how_to_get=MINI_HOW)
def minivgg_masked(num_classes: int = 10) -> WalledVGG:
    return WalledVGG(name="minivgg-masked", num_classes=num_classes, masked_rows=9, **MINI)


@register_model("minivgg", "minivgg-masked without the wall", how_to_get=MINI_HOW)
def minivgg(num_classes: int = 10) -> WalledVGG:
    return WalledVGG(name="minivgg", num_classes=num_classes, masked_rows=0, **MINI)
