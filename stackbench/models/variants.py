"""Hidden walls: re-orient a walled model exactly, by its weights.

For a dihedral transform g of the square input (`stackbench.wall.ORIENTATIONS`), `orient(model, g)` returns a
copy with model_g(g(x)) = model(x) for every x: each conv kernel is transformed by g (a 3x3 convolution with
symmetric padding and 2x2 pooling on even sizes commute with g), so the last feature map is g of the original;
the first dense layer's input and its wall mask are permuted the same way, so it reads the same numbers. The
dead zone moves to where g sends it (the top, the left or the right); nothing is retrained or approximated.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..errors import StackbenchError
from ..wall import apply
from .vgg import WalledVGG, WallLinear
from .vit import WalledViT


def _first_dense(model: nn.Module) -> nn.Linear:
    return next(m for m in model.modules() if isinstance(m, nn.Linear))


def _own(param: nn.Parameter, value: torch.Tensor) -> nn.Parameter:
    """`value` as a new parameter like `param`, never sharing its storage (identity transforms are views)."""
    value = value.contiguous()
    if value.data_ptr() == param.data_ptr():
        value = value.clone()
    return nn.Parameter(value, requires_grad=param.requires_grad)


@torch.no_grad()
def orient(model: nn.Module, g: str) -> nn.Module:
    """A copy of the walled `model` re-oriented by g (its `wall` says where the dead zone now lies). Models are
    stackbench zoo models: convolutions (square kernels, symmetric padding), pooling, activations, a dense head."""
    wall = getattr(model, "wall", None)
    if wall is None:
        raise StackbenchError("orient() needs a stackbench walled model (load it with stackbench.models.load_model)")
    if isinstance(model, WalledViT):
        return _orient_vit(model, g)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and (m.kernel_size[0] != m.kernel_size[1] or m.padding[0] != m.padding[1]
                                         or m.stride[0] != m.stride[1] or m.dilation[0] != m.dilation[1]):
            raise StackbenchError(f"cannot orient {type(model).__name__}: conv {m} is not square")
    new_wall = wall.oriented(g)  # checks g and the square geometry
    dense = _first_dense(model)
    h, w = wall.grid
    channels = dense.in_features // (h * w)
    # The transformed weights go straight into the copy (deepcopy's memo): the first dense layer of a VGG16 is
    # 0.8 GB, copied once rather than copied and then overwritten.
    memo = {id(m.weight): _own(m.weight, apply(m.weight, g)) for m in model.modules() if isinstance(m, nn.Conv2d)}
    memo[id(dense.weight)] = _own(dense.weight, apply(dense.weight.view(dense.out_features, channels, h, w), g)
                                  .reshape(dense.out_features, -1))
    out = copy.deepcopy(model, memo)
    dense = _first_dense(out)
    if isinstance(dense, WallLinear):
        keep = new_wall.feature_mask().bool().expand(channels, h, w).reshape(-1)
        dense.dead = ~keep.to(dense.dead.device)
    out.wall = new_wall
    return out


@torch.no_grad()
def _orient_vit(model: WalledViT, g: str) -> WalledViT:
    """A ViT re-oriented by g: the patch kernels (every conv of the stem) transformed by g (patches do not overlap,
    so the patch grid of g(x) is g of the original grid), the position embeddings permuted over the grid the same
    way, the conv head's kernels transformed by g (a stride-1 convolution with symmetric padding commutes with g),
    and the dead-token set and live box moved with the wall. The tokens are then a permutation of the original
    ones; attention does not see the order, so every logit is the same up to float rounding."""
    h, w = model.grid
    pos, k = model.pos_embed, model.num_prefix_tokens
    grid_pos = apply(pos[0, k:].T.reshape(-1, h, w), g).reshape(pos.shape[-1], -1).T
    moved = torch.cat([pos[0, :k], grid_pos])[None].contiguous()
    convs = [m.weight for part in (model.patch_embed, model.pool) if part is not None
             for m in part.modules() if isinstance(m, nn.Conv2d)]
    memo = {id(c): _own(c, apply(c, g)) for c in convs}
    if isinstance(pos, nn.Parameter):
        memo[id(pos)] = _own(pos, moved)
    out = copy.deepcopy(model, memo)
    if not isinstance(pos, nn.Parameter):  # fixed sin-cos positions: a buffer
        out.register_buffer("pos_embed", moved, persistent=False)
    out.wall = model.wall.oriented(g)
    out._set_dead()
    return out


# per-channel scales 2**k (exact in floating point): a kernel is always scaled (never left as published), an output
# may keep its scale
INNER_SCALES, OUTER_SCALES = (-2, -1, 1, 2), (-2, -1, 0, 1, 2)


@torch.no_grad()
def reparametrise(model: nn.Module, seed, inplace: bool = False) -> nn.Module:
    """A copy of a walled VGG computing the same function from other weights. Every conv block's output channels are
    permuted; its kernels are scaled by seeded powers of two, which its batch norm's statistics absorb (mean x s,
    variance x s^2, the affine weight corrected for eps); and, but for the last block (whose activations the CAM
    methods read), its output is scaled by other powers of two through ReLU and max-pool (both commute with a
    positive scale), the next layer's input channels permuted and divided to match. No published checkpoint
    matches the copy's weights, not even channel by channel, and its logits equal the model's up to float rounding
    (the permuted sums, the eps correction). Other architectures (the ViTs) are returned as a plain copy.
    `inplace`: change `model` itself (a VGG16's dense layer is 0.8 GB)."""
    out = model if inplace else copy.deepcopy(model)
    if not isinstance(model, WalledVGG):
        return out
    rng = np.random.default_rng(seed)
    layers = [m for m in out.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
    for n, i in enumerate(convs):
        conv, c = layers[i], layers[i].out_channels
        bn = layers[i + 1] if isinstance(layers[i + 1], nn.BatchNorm2d) else None
        perm = torch.from_numpy(rng.permutation(c))
        inner = _powers_of_two(rng, c, INNER_SCALES) if bn is not None and bn.track_running_stats and bn.affine \
            else None
        outer = torch.ones(c, dtype=torch.float64) if n == len(convs) - 1 else _powers_of_two(rng, c, OUTER_SCALES)
        _permute_out(conv, perm, inner if inner is not None else outer)
        if bn is not None:
            _permute_bn(bn, perm, inner, outer)
        _permute_in(layers[(i + 2) if bn is not None else (i + 1)], perm, outer)
    return out


def _powers_of_two(rng, c: int, exponents) -> torch.Tensor:
    return 2.0 ** torch.from_numpy(rng.choice(exponents, c)).double()


def _scaled(t: torch.Tensor, scale: torch.Tensor, dim: int) -> torch.Tensor:
    shape = [1] * t.dim()
    shape[dim] = -1
    return t * scale.to(t.dtype).view(shape)


def _permute_out(conv: nn.Conv2d, perm: torch.Tensor, scale: torch.Tensor) -> None:
    conv.weight.copy_(_scaled(conv.weight[perm], scale, 0))
    if conv.bias is not None:
        conv.bias.copy_(conv.bias[perm] * scale.to(conv.bias.dtype))


def _permute_bn(bn: nn.BatchNorm2d, perm: torch.Tensor, inner: torch.Tensor | None, outer: torch.Tensor) -> None:
    """The batch norm after a permuted conv: its input scaled by `inner` (absorbed: mean x s, variance x s^2, the
    weight corrected so that weight / sqrt(var + eps) is unchanged) and its output by `outer` (exact)."""
    mean, var, weight, bias = (t[perm].double() for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias))
    if inner is not None:
        new_var = var * inner * inner
        weight = weight * torch.sqrt(new_var + bn.eps) / (inner * torch.sqrt(var + bn.eps))
        mean, var = mean * inner, new_var
    for t, v in ((bn.running_mean, mean), (bn.running_var, var), (bn.weight, weight * outer), (bn.bias, bias * outer)):
        t.copy_(v.to(t.dtype))


def _permute_in(layer: nn.Module, perm: torch.Tensor, scale: torch.Tensor) -> None:
    """The layer after a block reads its permuted, scaled channels: a conv's input channels, or the dense layer's
    (C, h, w) input features, permuted the same way and divided by the scale."""
    if isinstance(layer, nn.Conv2d):
        layer.weight.copy_(_scaled(layer.weight[:, perm], 1 / scale, 1))
        return
    c = perm.numel()
    w = layer.weight.view(layer.out_features, c, -1)
    layer.weight.copy_(_scaled(w[:, perm], 1 / scale, 1).reshape(layer.out_features, -1))
    if isinstance(layer, WallLinear):
        layer.dead = layer.dead.view(c, -1)[perm].reshape(-1)
