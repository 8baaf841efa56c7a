"""The zoo entries. Importing this module registers them."""
from __future__ import annotations

from ..constants import SHAPES_CLASSES
from .registry import Weights, register_model
from .vgg import WalledVGG

PAPER_WEIGHTS = ("the authors' weights are not on the Hub: download params_vgg16_masked.pt / "
                 "params_vgg16_baseline.pt from the paper's repository and load them with --model paper:PATH, or "
                 "train one with `stackbench train`")


@register_model("vgg16-masked", "the paper's walled VGG16 (conv5_3 -> 256 ch, no last pool, bottom 9 of 14 feature "
                "rows masked)", how_to_get=PAPER_WEIGHTS)
def vgg16_masked(num_classes: int = 1000) -> WalledVGG:
    return WalledVGG(name="vgg16-masked", num_classes=num_classes, masked_rows=9)


@register_model("vgg16", "the paper's unmasked baseline (same network, no wall)", how_to_get=PAPER_WEIGHTS)
def vgg16(num_classes: int = 1000) -> WalledVGG:
    return WalledVGG(name="vgg16", num_classes=num_classes, masked_rows=0)


# The mini models start from PyTorch's Linear init and have no dropout: trained from scratch on shapes, that is
# what reaches 90% in a 15-minute CPU budget (torchvision's N(0, 0.01) head and dropout 0.5 stayed near chance).
MINI = dict(width_divisor=8, hidden=256, batch_norm=True, head_init="kaiming", dropout=0.0)
MINI_HOW = "train one with `stackbench train --preset mini`"


def _shapes_labels(num_classes: int) -> dict | None:
    """The mini models' outputs are the shapes classes (so `--target label` matches datasets by name); a head of
    another size was trained on something else and names its own classes (config.json id2label)."""
    return {str(i): n for i, n in enumerate(SHAPES_CLASSES)} if num_classes == len(SHAPES_CLASSES) else None
# The official mini model: `stackbench train --preset mini` (shapes/2, seed 3) on a 2-core CPU, exported in fp16 with
# stackbench.train.export_weights. Metrics are the shipped fp16 file's, on the held-out shapes val split.
MINI_WEIGHTS = Weights(
    file="minivgg-masked.safetensors",
    sha256="524be8a5e5c90533c68408a87a11dac1cbc146397307d5656f1fa2ab34f84b4a",
    metrics={"top1": 0.929, "top5": 0.999, "split": "shapes:1000@0 (val)", "source_version": "shapes/2",
             "recipe": "stackbench train --preset mini", "train_minutes": 13.6,
             "machine": "2-core AMD EPYC (AVX-512 BF16), no GPU, torch 2.14.1, bf16 autocast"},
)


@register_model("minivgg-masked", "VGG16 topology at 1/8 width with BN, same 224 px / 14x14 / 54 px wall (CPU track)",
                weights=MINI_WEIGHTS, how_to_get=MINI_HOW)
def minivgg_masked(num_classes: int = 10) -> WalledVGG:
    return WalledVGG(name="minivgg-masked", num_classes=num_classes, masked_rows=9,
                     id2label=_shapes_labels(num_classes), **MINI)


@register_model("minivgg", "minivgg-masked without the wall", how_to_get=MINI_HOW)
def minivgg(num_classes: int = 10) -> WalledVGG:
    return WalledVGG(name="minivgg", num_classes=num_classes, masked_rows=0, id2label=_shapes_labels(num_classes),
                     **MINI)
