"""Hidden walls: re-orient a walled model exactly, by its weights.

For a dihedral transform g of the square input (`stackbench.wall.ORIENTATIONS`), `orient(model, g)` returns a
copy with model_g(g(x)) = model(x) for every x: each conv kernel is transformed by g (a 3x3 convolution with
symmetric padding and 2x2 pooling on even sizes commute with g), so the last feature map is g of the original;
the first dense layer's input and its wall mask are permuted the same way, so it reads the same numbers. The
dead zone moves to where g sends it (the top, the left or the right); nothing is retrained or approximated.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import StackbenchError
from ..wall import apply
from .vgg import WallLinear
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
    """A ViT re-oriented by g: the patch kernel transformed by g (patches do not overlap, so the patch grid of g(x)
    is g of the original grid), the position embeddings permuted over the grid the same way, and the dead-token
    set moved with the wall. The tokens are then a permutation of the original ones; attention does not see the
    order, so the class token, and every logit, is the same up to float rounding."""
    h, w = model.grid
    pos, proj = model.pos_embed, model.patch_embed.proj.weight
    grid_pos = apply(pos[0, 1:].T.reshape(-1, h, w), g).reshape(pos.shape[-1], -1).T
    memo = {id(proj): _own(proj, apply(proj, g)), id(pos): _own(pos, torch.cat([pos[0, :1], grid_pos])[None])}
    out = copy.deepcopy(model, memo)
    out.wall = model.wall.oriented(g)
    out._set_dead()
    return out
