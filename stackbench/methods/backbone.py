"""What the methods share per batch: the walled model split at its target layer (`Backbone`) and one batch as the
methods see it (`Batch`). The passes (`stackbench.methods.passes`) fill them; the methods read them."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.nn import functional as F

from ..constants import IMAGENET_MEAN, IMAGENET_STD
from ..errors import StackbenchError


@dataclass
class Batch:
    """One batch as the methods see it. `x` is ImageNet-normalised; `x01` is the same images in [0, 1]."""

    x: torch.Tensor
    x01: torch.Tensor
    targets: torch.Tensor                   # (N,) long: the class each map explains
    logits: torch.Tensor                    # (N, K) of the unmodified images
    index: list[int]                        # global item indices (for per-item seeding)
    ids: list[str]
    backbone: "Backbone"
    activations: torch.Tensor | None = None
    gradients: torch.Tensor | None = None
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def message(self) -> dict:
        """The batch as a method's worker gets it: its tensors by name, and the rest (the worker rebuilds `x` from
        `x01` and holds its own backbone)."""
        ts = {"x01": self.x01, "targets": self.targets, "logits": self.logits, "activations": self.activations,
              "gradients": self.gradients, **{f"extra.{k}": v for k, v in self.extra.items()}}
        return {"tensors": {k: v.detach() for k, v in ts.items() if v is not None}, "index": list(self.index),
                "ids": list(self.ids), "seed": self.seed}

    def copy(self) -> "Batch":
        """The same batch with its own tensors: what one method changes in place, the next one does not see."""
        own = lambda t: t.clone() if isinstance(t, torch.Tensor) else t  # noqa: E731
        return replace(self, x=own(self.x), x01=own(self.x01), targets=own(self.targets), logits=own(self.logits),
                       activations=own(self.activations), gradients=own(self.gradients), index=list(self.index),
                       ids=list(self.ids), extra=dict(self.extra))


@torch.no_grad()
def fold_batch_norm(seq: nn.Sequential) -> nn.Sequential:
    """An eval-mode Sequential with each BatchNorm2d folded into the Conv2d before it (the same function, about a
    fifth fewer operations per forward; equal up to float rounding)."""
    layers, mods = [], list(seq)
    for m in mods:
        if isinstance(m, nn.BatchNorm2d) and layers and isinstance(layers[-1], nn.Conv2d) and m.affine \
                and m.track_running_stats:
            conv = layers[-1]
            scale = m.weight / torch.sqrt(m.running_var + m.eps)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(m.running_mean)
            conv.bias = nn.Parameter((bias - m.running_mean) * scale + m.bias)
            continue
        layers.append(m)
    return nn.Sequential(*layers)


class Backbone:
    """A walled model split at its target layer: `features(x)` -> A, `head(A)` -> logits.

    `activations(x)` runs the model's own convolutional layers. `features` is a private channels_last copy of
    them with frozen parameters and batch norm folded into the convolutions, for the many extra forwards of
    perturbation methods and deletion (inference is faster so; the user's model object is left as it is).
    `logits(x)` uses the wall: no logit depends on the input lines behind it, so only the lines the live feature
    lines can see are computed (`crop`: 176 of 224 for the paper's geometry, the first multiple of the network
    stride past the wall); the dead feature lines are padded with zeros, which the walled head ignores. Checked
    against the full forward at construction (unless `check_crop` is False: a method's worker is told whether the
    harness's backbone of the same weights passed); turned off (full forward) if it ever disagrees.

    The wall may lie on any side (a hidden wall, `stackbench.models.variants.orient`); a backbone does not expose
    it publicly (a determined method could still dig it out of `_wall` or the weights). `wall` overrides the
    model's own (the harness removes the latter from hidden copies).
    """

    MEAN, STD = IMAGENET_MEAN, IMAGENET_STD
    arch = "vgg"

    def __init__(self, model: nn.Module, channels_last: bool = True, live_crop: bool = True, wall=None,
                 check_crop: bool = True):
        if not (hasattr(model, "target_layer") and hasattr(model, "head") and isinstance(model, nn.Sequential)
                and list(model.children())[-3] is model.target_layer):
            raise StackbenchError("the model must be a stackbench walled model (nn.Sequential ending in target layer, "
                                  "Flatten, classifier; with .target_layer and .head); load it with "
                                  "stackbench.models.load_model")
        self.model = model
        self._wall = wall if wall is not None else model.wall
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # The model's own layers (standard layout) give the target-layer activations: bitwise what a hook on
        # the model sees, which keeps ill-conditioned weights (AblationCAM's relative score drops) identical.
        self.target_features = nn.Sequential(*list(model.children())[:-2])
        self._features = None  # built on first use: the gradient CAMs never need it
        self.head = model.head.eval()
        self.mean = torch.tensor(self.MEAN, device=self.device, dtype=self.dtype).view(1, 3, 1, 1)
        self.std = torch.tensor(self.STD, device=self.device, dtype=self.dtype).view(1, 3, 1, 1)
        w = self._wall
        self._axis, self._live = w.live_slice(w.input_size[0] // w.grid[0])
        self._full = slice(0, w.input_size[0])
        if not live_crop or (self._live == self._full) or (check_crop and not self._crop_is_exact()):
            self._live = self._full

    @property
    def features(self) -> nn.Sequential:
        """The conv layers for `logits`: a channels_last copy, batch norm folded in, parameters frozen."""
        if self._features is None:
            f = fold_batch_norm(copy.deepcopy(self.target_features).eval()).requires_grad_(False)
            self._features = f.to(memory_format=torch.channels_last) if self.memory_format == torch.channels_last else f
        return self._features

    @property
    def live_lines(self) -> int:
        """How many input lines (rows or columns) `logits` computes."""
        return self._live.stop - self._live.start

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """The part of full-size images (or maps) that `logits` needs: the lines in front of the wall."""
        if x.shape[self._axis] != self._wall.input_size[0] or self._live == self._full:
            return x
        return x[..., self._live, :] if self._axis == -2 else x[..., self._live]

    def _fmt(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, self.dtype).contiguous(memory_format=self.memory_format)

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        # The division in place: the same numbers, one full-size temporary fewer per batch (and per Opti-CAM step).
        return (x01 - self.mean).div_(self.std)

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """Target-layer activations of normalised images (no graph)."""
        with torch.no_grad():
            return self.target_features(x.to(self.device, self.dtype))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of normalised images (full size, or already `crop`ped), computing only the input lines the head
        can see (see class doc). Differentiable with respect to x."""
        a = self.features(self._fmt(self.crop(x)))
        missing = self._wall.grid[0] - a.shape[self._axis]
        if missing > 0:
            start = self._live.start > 0  # the crop dropped the first lines: pad before
            pad = (missing, 0) if start else (0, missing)
            a = F.pad(a, (0, 0, *pad) if self._axis == -2 else (*pad, 0, 0))
        return self.head(a)

    def reference_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The logits a method checked against a reference implementation scores with (ScoreCAM): `logits`, whose
        live crop stays within float rounding of the full forward on the VGGs."""
        return self.logits(x)

    def shared(self, x: torch.Tensor, pick, need_grads: bool):
        """The shared pass: one forward to the target layer and, if needed, one backward through what follows it
        only. `pick(logits)` gives the explained classes. Returns (logits, targets, A, G or None, extra), A and G on
        the grid the methods read."""
        ctx, a = self._front(x)
        extra = self._extra(ctx, a)
        if not need_grads:
            with torch.no_grad():
                logits = self._back(ctx, a)
            return logits, pick(logits), self._grid(a), None, extra
        with torch.enable_grad():
            leaf = a.detach().requires_grad_(True)
            logits = self._back(ctx, leaf)
            t = pick(logits)
            (g,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), leaf)
        return logits.detach(), t, self._grid(a), self._grid(g), extra

    # The shared pass's parts, which a backbone of another architecture replaces: (context, target-layer output)
    # without a graph; the logits from them; the grid the methods see; what else the methods may read.
    def _front(self, x: torch.Tensor):
        return None, self.activations(x)

    def _back(self, ctx, a: torch.Tensor) -> torch.Tensor:
        return self.head(a)

    def _grid(self, a: torch.Tensor) -> torch.Tensor:
        return a

    def _extra(self, ctx, a: torch.Tensor) -> dict:
        return {}

    def ablation_floor(self, batch: Batch, n: int) -> torch.Tensor:
        """The smallest target-layer activation of image n (AblationCAM's ablation value is set from it)."""
        return batch.activations[n].min()

    def ablated_logits(self, batch: Batch, n: int, chans: torch.Tensor, value: float) -> torch.Tensor:
        """Logits of image n with each channel of `chans` (one per row) set to `value` at the target layer."""
        A = batch.activations
        ablated = A[n].expand(len(chans), *A.shape[1:]).clone()
        ablated[torch.arange(len(chans)), chans] = value
        return self.head(ablated)

    def _crop_is_exact(self) -> bool:
        x = torch.randn(1, 3, *self._wall.input_size, generator=torch.Generator().manual_seed(0))
        x = x.to(self.device, self.dtype)
        with torch.no_grad():
            full = self.head(self.features(self._fmt(x)))
            live = self.logits(x)
        return bool(torch.allclose(full, live, rtol=1e-4, atol=1e-6 * float(full.abs().max()) + 1e-12))


class TokenBackbone(Backbone):
    """A walled ViT (`stackbench.models.vit.WalledViT`) split at its target layer, the last block's norm1.

    The methods see the token grid as pytorch-grad-cam's ViT usage builds it: the target layer's output without the
    class token, reshaped to (N, D, h, w). The shared pass runs the trunk (every block but the last) once and the
    last block from the target layer's output, so the gradient with respect to it is one backward through the last
    block only (what a hook on `blocks[-1].norm1` sees: the residual does not pass through the norm). `extra` keeps
    the tokens for the methods that change the target layer's output across all tokens (AblationCAM)."""

    arch = "vit"

    def __init__(self, model: nn.Module, wall=None, **_):
        if getattr(model, "arch", None) != "vit":
            raise StackbenchError("the model must be a stackbench walled ViT (stackbench.models.vit.WalledViT)")
        self.model = model.eval()
        self._wall = wall if wall is not None else model.wall
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.mean = torch.tensor(self.MEAN, device=self.device, dtype=self.dtype).view(1, 3, 1, 1)
        self.std = torch.tensor(self.STD, device=self.device, dtype=self.dtype).view(1, 3, 1, 1)
        self._axis, self._full = -2, slice(0, self._wall.input_size[0])
        self._live = self._full  # every patch is computed: the dead tokens are still there (the pixel wall) or cheap

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens entering the last block, its norm1 output), no graph."""
        with torch.no_grad():
            t = self.model.trunk(x.to(self.device, self.dtype))
            return t, self.model.blocks[-1].norm1(t)

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.reshape_transform(self._tokens(x)[1])

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        # The scoring forwards (Opti-CAM, deletion) leave the attention wall's dead tokens out.
        return self.model.live_logits(x.to(self.device, self.dtype))

    def reference_logits(self, x: torch.Tensor) -> torch.Tensor:
        # The masked forward itself: with the dead tokens left out, ScoreCAM's maps at initialisation moved 3e-5
        # from pytorch-grad-cam's (nearly equal channel scores amplify float rounding), past the 1e-5 parity.
        return self.model(x.to(self.device, self.dtype))

    def head(self, A: torch.Tensor) -> torch.Tensor:
        raise StackbenchError("a ViT's logits are not a function of the token grid alone (the class token and the "
                              "residual): use the backbone's shared pass or ablated_logits")

    def _front(self, x: torch.Tensor):
        return self._tokens(x)

    def _back(self, t: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.model.top(t, a)

    def _grid(self, a: torch.Tensor) -> torch.Tensor:
        return self.model.reshape_transform(a)

    def _extra(self, t: torch.Tensor, a: torch.Tensor) -> dict:
        return {"tokens": t, "norm1": a}

    def ablation_floor(self, batch: Batch, n: int) -> torch.Tensor:
        # pytorch-grad-cam's AblationLayerVit takes the minimum over every token, the class token's included.
        return batch.extra["norm1"][n].min()

    def ablated_logits(self, batch: Batch, n: int, chans: torch.Tensor, value: float) -> torch.Tensor:
        # AblationLayerVit sets the channel on every token, the class token's included.
        a, t = batch.extra["norm1"], batch.extra["tokens"]
        ablated = a[n].expand(len(chans), *a.shape[1:]).clone()
        ablated[torch.arange(len(chans)), :, chans] = value
        return self.model.top(t[n].expand(len(chans), *t.shape[1:]), ablated)

    def attention(self, x: torch.Tensor, targets: torch.Tensor | None = None):
        """Every block's attention probabilities (B, heads, T, T), first block first, and with `targets` their
        gradients of the target logits (None otherwise): what attention rollout and relevancy read."""
        keep: list[torch.Tensor] = []
        with torch.set_grad_enabled(targets is not None):
            logits = self.model.top(self.model.trunk(x.to(self.device, self.dtype), keep=keep), keep=keep)
            if targets is None:
                return [a.detach() for a in keep], None
            grads = torch.autograd.grad(logits.gather(1, targets.to(logits.device)[:, None]).sum(), keep)
        return [a.detach() for a in keep], list(grads)


def backbone_for(model: nn.Module, wall=None, **kw) -> Backbone:
    """The backbone of a stackbench walled model: `TokenBackbone` for a ViT, `Backbone` for the VGGs."""
    cls = TokenBackbone if getattr(model, "arch", None) == "vit" else Backbone
    return cls(model, wall=wall, **kw)
