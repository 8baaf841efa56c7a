"""The paper's walled VGG16 and its 1/8-width sibling for the CPU track.

Layout is the authors' `nn.Sequential(*features, Flatten(1), classifier)` so their state_dict keys
(`0.weight` ... `28.bias`, `31.0.*`, `31.3.*`, `31.6.*`) load unchanged. The wall is structural: the
first dense layer zeroes the features behind the wall before its product (a non-persistent buffer), so
weights from any checkpoint cannot leak through it and training cannot use them.
"""
from __future__ import annotations

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn
from torch.nn import functional as F

from ..constants import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401  (every zoo model's input normalisation)
from ..wall import Wall, wall_for

# Head (dense layer) initialisations: "normal" is torchvision's N(0, 0.01) (the paper's VGG16); "kaiming" is
# PyTorch's Linear default (Kaiming-uniform weights and bias), which a narrow head trained from scratch needs: with
# N(0, 0.01) the mini model's logits start tiny and it stayed near chance for 5 epochs.
HEAD_INITS = ("normal", "kaiming")
# VGG16 ("D") without the last max-pool: the head reads the 14x14 map of conv5_3.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class WallLinear(nn.Linear):
    """Linear layer over a flattened (C, h, w) map that never reads the positions behind the wall."""

    def __init__(self, in_features: int, out_features: int, feature_mask: torch.Tensor):
        super().__init__(in_features, out_features)
        channels = in_features // feature_mask.numel()
        keep = feature_mask.bool().expand(channels, *feature_mask.shape).reshape(-1)
        # Not persistent: the mask comes from the config, never from a checkpoint.
        self.register_buffer("dead", ~keep, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # masked_fill, not a multiply: exact zeros even if a dead feature were inf or NaN.
        return F.linear(x.masked_fill(self.dead, 0), self.weight, self.bias)

    def dead_weight_norm(self) -> float:
        """Largest |w| on a column behind the wall (should be 0; harmless either way)."""
        return float(self.weight.detach()[:, self.dead].abs().max()) if self.dead.any() else 0.0

    @torch.no_grad()
    def zero_dead_(self) -> None:
        """Set the weights behind the wall to 0 (a clean checkpoint, as in the authors' weights)."""
        self.weight[:, self.dead] = 0


def class_names_of(id2label: dict | None, num_classes: int) -> list[str] | None:
    """id2label ({"0": "tench", ...}, keys as JSON writes them) -> the class names in output order."""
    if not id2label:
        return None
    names = {int(k): str(v) for k, v in id2label.items()}
    if sorted(names) != list(range(num_classes)):
        raise ValueError(f"id2label names {len(names)} outputs, the head has {num_classes}")
    return [names[i] for i in range(num_classes)]


class WalledVGG(nn.Sequential, PyTorchModelHubMixin, library_name="stackbench",
                tags=["stackbench", "saliency", "image-classification"],
                repo_url="https://github.com/stackbench/stackbench"):
    """VGG16 topology with an optional wall in the first dense layer.

    width_divisor divides every conv width (8 for the mini track); batch_norm adds BN after each conv
    (the wall lives in the dense layer, so BN leaves it intact).
    """

    arch = "vgg"
    # What a zoo name fixes about the network (loading checks a config against it).
    ARCHITECTURE = ("width_divisor", "last_channels", "hidden", "masked_rows", "batch_norm", "input_size")

    def __init__(self, *, name: str = "vgg16-masked", width_divisor: int = 1, last_channels: int = 256,
                 hidden: int = 4096, num_classes: int = 1000, masked_rows: int = 9, batch_norm: bool = False,
                 dropout: float = 0.5, input_size: int = 224, head_init: str = "normal",
                 id2label: dict | None = None, label2id: dict | None = None):
        if head_init not in HEAD_INITS:
            raise ValueError(f"unknown head_init {head_init!r}; use one of {', '.join(HEAD_INITS)}")
        layers: list[nn.Module] = []
        specs: list[tuple[int, int, int]] = []
        c_in = 3
        cfg = list(VGG16_CFG)
        cfg[-1] = last_channels
        for i, v in enumerate(cfg):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                specs.append((2, 2, 0))
                continue
            c_out = max(1, v // width_divisor)
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
            specs.append((3, 1, 1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU(inplace=i != len(cfg) - 1))  # the target layer's output must not be overwritten
            c_in = c_out
        wall = wall_for(specs, (input_size, input_size), masked_rows)
        flat = c_in * wall.grid[0] * wall.grid[1]
        first = WallLinear(flat, hidden, wall.feature_mask()) if masked_rows else nn.Linear(flat, hidden)
        classifier = nn.Sequential(first, nn.ReLU(True), nn.Dropout(dropout),
                                   nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(dropout),
                                   nn.Linear(hidden, num_classes))
        super().__init__(*layers, nn.Flatten(1), classifier)
        self.name = name
        self.wall: Wall = wall
        self.num_classes = num_classes
        self.input_size = (input_size, input_size)
        self.head_init = head_init
        # The class names, when the weights' config records them (`stackbench train` does, as transformers' id2label
        # / label2id): evaluate checks a dataset's labels against them. None: not recorded (vgg16 zoo entries, paper:).
        self.class_names = class_names_of(id2label, num_classes)
        self._init_weights()

    def save_pretrained(self, *args, **kwargs):
        """huggingface_hub's save_pretrained (and push_to_hub), refused for a re-oriented copy: the config holds
        the architecture, not the orientation, so the copy would load as a different model."""
        wall = getattr(self, "wall", None)
        if wall is None or wall.orientation != "identity":
            from ..errors import StackbenchError

            raise StackbenchError("this model was re-oriented (stackbench.models.variants.orient) and cannot be saved: "
                                  "its config would load without the orientation; save the original model instead")
        return super().save_pretrained(*args, **kwargs)

    @property
    def target_layer(self) -> nn.Module:
        """The ReLU after the last conv: the layer the paper explains (the authors' `model[-3]`)."""
        return self[-3]

    @property
    def head(self) -> nn.Sequential:
        """Everything after the target layer (flatten + classifier): what maps activations to logits."""
        return nn.Sequential(self[-2], self[-1])

    @property
    def walled(self) -> bool:
        return self.wall.dead_height > 0

    @property
    def wall_kind(self) -> str:
        """How the wall is built: the first dense layer never reads the dead feature rows."""
        return "dense" if self.wall.masked_rows else "none"

    def _init_weights(self):
        # torchvision's VGG initialisation; head_init="kaiming" keeps PyTorch's own Linear init for the head.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                if self.head_init == "kaiming":
                    m.reset_parameters()
                else:
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.zeros_(m.bias)
        first = self[-1][0]
        if isinstance(first, WallLinear):
            first.zero_dead_()

    def count_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
