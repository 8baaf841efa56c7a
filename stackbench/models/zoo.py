"""The zoo entries. Importing this module registers them."""
from __future__ import annotations

from ..constants import SHAPES_CLASSES
from .registry import Weights, register_model
from .vgg import WalledVGG
from .vit import WalledViT

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
# stackbench.train.export_weights. Metrics are the shipped fp16 file's, on the held-out shapes val split. On shapes/3
# (the same scenes but for the noise and blotch draws and one-ulp geometry) the same weights give 95.1% top-1, 100%
# top-5 on that split (2026-12-05); they were not retrained.
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


# ---------------------------------------------------------------------------------------------------- ViTs
# The wall of a ViT is a set of dead patch rows; the datasets' band (rows 170..223) must lie inside them: the bottom
# 4 of 14 patch rows at patch 16 (pixels 160..223). Patch 16, not 32 (whose bottom 2 of 7 rows are the same pixels):
# a map on the token grid is upsampled bilinearly (pytorch-grad-cam's post-processing), which spills half a patch
# past a token edge: 8 px at patch 16 (rows 160..167, outside the band, so a map with nothing on dead tokens scores
# mu = 0 exactly), 16 px at patch 32 (rows 160..175: a correct map would score mu > 0). The 14x14 grid is also the
# VGGs' and ViT-B/16's, so the maps of both tracks have the same resolution. 64 wide and 4 blocks, sized for the
# CPU track's demo: its ScoreCAM runs one forward per channel and Opti-CAM 50 forward-backward passes per image, and
# at 96 wide and 6 blocks (2.7x the cost per forward, 1.5x the channels) those two alone took 400 of the demo's 485 s.
MINI_VIT = dict(image_size=224, patch_size=16, dim=64, depth=4, heads=2, mlp_ratio=4.0, masked_rows=4)
# The mini ViT's parts that make it learn the shapes on a CPU budget (FIELD_NOTES, issue 31): a per-patch hMLP stem,
# fixed sin-cos positions and a convolutional head over the live tokens instead of a class token. Every class-token
# variant tried (linear or hMLP stem, learned or sin-cos positions, mean pooling) stayed at chance for 8,000-24,000
# images; the conv head left the plateau. It is still a ViT: four transformer blocks mix the tokens, and each token
# reads only its own patch before them (so both walls stay exact).
MINI_VIT_PARTS = dict(stem="hmlp", position="sincos", global_pool="conv")
MINI_VIT_HOW = "train one with `stackbench train --preset mini-vit`"


def _mini_vit_how(name: str) -> str:
    return MINI_VIT_HOW.replace("mini-vit`", f"mini-vit --model {name}`")
# The official mini ViTs: `stackbench train --preset mini-vit` (with the object-mask loss; the pixel sibling with
# `--model minivit-pixel`) on a 2-core CPU, exported in fp16 by scripts/ship_weights.py, which measured the metrics
# on the shipped file and wrote its card (stackbench/weights/NAME.md).
MINI_VIT_WEIGHTS = Weights(
    file="minivit-masked.safetensors",
    sha256="0c357f8cca27eb522ff0ebb5990c4aee292cacea472d0a3ea5847a019c5c0d31",
    metrics={"top1": 0.911, "top5": 0.996, "split": "shapes:1000@0 (val)", "source_version": "shapes/3",
             "recipe": "stackbench train --preset mini-vit", "train_minutes": 11.8, "aux_masks": 1.0,
             "machine": "2-core Intel Xeon (AVX-512), no GPU, torch 2.14.1, fp32, 2 threads"},
)
MINI_VIT_PIXEL_WEIGHTS = Weights(
    file="minivit-pixel.safetensors",
    sha256="eb686257fda22e12cdafa45b19189ea44accd1717f48775538cf3e80f267fe76",
    metrics={"top1": 0.902, "top5": 0.997, "split": "shapes:1000@0 (val)", "source_version": "shapes/3",
             "recipe": "stackbench train --preset mini-vit --model minivit-pixel", "train_minutes": 22.3,
             "aux_masks": 1.0, "machine": "2-core Intel Xeon (AVX-512), no GPU, torch 2.14.1, fp32, 1 thread "
             "(another training run on the other core)"},
)
VIT_B16 = dict(image_size=224, patch_size=16, dim=768, depth=12, heads=12, mlp_ratio=4.0, masked_rows=4)
VIT_TI16 = dict(image_size=224, patch_size=16, dim=192, depth=12, heads=3, mlp_ratio=4.0, masked_rows=4)


def _vit(name: str, geometry: dict, wall: str, num_classes: int, **kw) -> WalledViT:
    return WalledViT(name=name, num_classes=num_classes, wall=wall, **geometry, **kw)


@register_model("minivit-masked", "ViT, patch 16, 64 wide, 4 blocks, 2 heads, hMLP stem, sin-cos positions, a conv "
                "head over the live tokens; the bottom 4 of 14 patch rows (pixels 160..223) masked as keys in every "
                "block: the attention wall (CPU track)", weights=MINI_VIT_WEIGHTS, how_to_get=MINI_VIT_HOW)
def minivit_masked(num_classes: int = 10) -> WalledViT:
    return _vit("minivit-masked", MINI_VIT, "attention", num_classes, id2label=_shapes_labels(num_classes),
                **MINI_VIT_PARTS)


@register_model("minivit-pixel", "minivit with the pixel wall: the bottom 4 patch rows' embeddings replaced by a "
                "constant (the positions are still attended)", weights=MINI_VIT_PIXEL_WEIGHTS,
                how_to_get=_mini_vit_how("minivit-pixel"))
def minivit_pixel(num_classes: int = 10) -> WalledViT:
    return _vit("minivit-pixel", MINI_VIT, "pixel", num_classes, id2label=_shapes_labels(num_classes),
                **MINI_VIT_PARTS)


@register_model("minivit", "minivit-masked without the wall", how_to_get=_mini_vit_how("minivit"))
def minivit(num_classes: int = 10) -> WalledViT:
    return _vit("minivit", MINI_VIT, "none", num_classes, id2label=_shapes_labels(num_classes), **MINI_VIT_PARTS)


def _standard_vit_family(prefix: str, label: str, geometry: dict) -> None:
    """Register a standard ViT under both walls and unwalled (PREFIX-masked, PREFIX-pixel, PREFIX): the class-token
    layout other libraries' checkpoints fill (ARCH:PATH), with no published weights of ours."""
    how = (f"wall a {label} checkpoint you have: --model {prefix}-masked:PATH (torchvision, timm or transformers "
           f"weights; .safetensors, .bin, .pt or .pth) or {prefix}-masked:hf:REPO")
    short = label.split(" ")[0]
    for name, wall, what in (
            (f"{prefix}-masked", "attention", f"{label} with the attention wall: the bottom 4 of 14 patch rows (pixels "
                                              "160..223) masked as keys in every block"),
            (f"{prefix}-pixel", "pixel", f"{short} with the pixel wall: the bottom 4 patch rows' embeddings replaced "
                                         "by a constant"),
            (prefix, "none", f"{short} without a wall (the control)")):
        def build(num_classes: int = 1000, _name=name, _wall=wall) -> WalledViT:
            return _vit(_name, geometry, _wall, num_classes)

        register_model(name, what, how_to_get=how.replace(f"{prefix}-masked", name))(build)


_standard_vit_family("vit-b16", "ViT-B/16", VIT_B16)
# ViT-Ti/16 (DeiT-Tiny, timm's vit_tiny_patch16_224): a standard ImageNet ViT a laptop runs, 5.7M parameters.
_standard_vit_family("vit-ti16", "ViT-Ti/16 (DeiT-Tiny)", VIT_TI16)
