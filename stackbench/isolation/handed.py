"""The model a method is handed, and the check that it came back unchanged.

A method gets the weights and the forward, nothing that names the wall: the copy has no `wall` attribute, and a
VGG's walled dense layer (a mask buffer) becomes a plain `nn.Linear` whose weights are zero behind the wall, the
same function. The backbone a worker builds on it finds the lines the head can see from those zero weights
(`wall_of`), as any method could; the harness never hands it the wall. A ViT's wall is its forward (the dead-token
buffers its attention reads), so those stay.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..models.vgg import WallLinear
from ..wall import ORIENTATIONS, Wall, wall_for


@torch.no_grad()
def handed(model: nn.Module) -> nn.Module:
    """The copy of a walled model a method is handed. Its tensors are `model`'s own (no copy), except a dense
    layer's weight that was not already zero behind the wall."""
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
    out = copy.deepcopy(model, memo)
    out.__dict__.pop("wall", None)
    for parent in list(out.modules()):
        for name, m in list(parent.named_children()):
            if isinstance(m, WallLinear):
                setattr(parent, name, _plain_linear(m))
    return out


def _plain_linear(m: WallLinear) -> nn.Linear:
    # built on the meta device, its tensors then the model's (skip_init's to_empty imports sympy: 0.3 s a process)
    lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta", dtype=m.weight.dtype)
    dead = m.dead
    w = m.weight if not m.weight[:, dead].any() else nn.Parameter(m.weight.masked_fill(dead, 0))
    lin.weight = w
    if m.bias is not None:
        lin.bias = m.bias
    return lin


def skeleton(model: nn.Module) -> nn.Module:
    """`model` without its numbers: the same modules, every parameter and buffer on the meta device."""
    memo = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        if b is not None:
            memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by its (first) name, the non-persistent buffers (a ViT's dead tokens) included."""
    return {**dict(model.named_parameters()), **{k: b for k, b in model.named_buffers() if b is not None}}


def fill(model: nn.Module, buffer, layout: list) -> nn.Module:
    """A skeleton whose every parameter and buffer is a view into `buffer` (the worker's side of a hand-over);
    tied tensors stay tied."""
    from .wire import view

    where = {key: (offset, dtype, shape) for key, offset, dtype, shape in layout}
    name_of = {id(t): k for k, t in tensors(model).items()}
    made: dict[int, torch.Tensor] = {}
    for mod in model.modules():
        for table, is_param in ((mod._parameters, True), (mod._buffers, False)):
            for name, t in list(table.items()):
                if t is None:
                    continue
                if id(t) not in made:
                    v = view(buffer, *where[name_of[id(t)]])
                    made[id(t)] = nn.Parameter(v, requires_grad=t.requires_grad) if is_param else v
                table[name] = made[id(t)]
    return model


class Handed:
    """A handed model packed for hand-over: its skeleton (no numbers), the layout of its numbers in one flat buffer,
    and that buffer (the harness's reference, never handed: each worker gets a copy). `crop`: whether the
    harness's own backbone of these weights computes only the lines the head reads (checked there, not again)."""

    def __init__(self, model: nn.Module, crop: bool = True):
        from multiprocessing.reduction import ForkingPickler

        from .wire import layout_of, put

        self.crop = crop
        ts = tensors(model)
        self.skeleton = bytes(ForkingPickler.dumps(skeleton(model)))  # pickled once, for every worker
        self.layout, nbytes = layout_of(ts)
        # the harness's own (no worker maps it); the padding zeroed, as the buffers are compared whole
        self.numbers = torch.zeros(max(nbytes, 64), dtype=torch.uint8, device=next(iter(ts.values())).device)
        put(self.numbers, ts, self.layout)

    def changed(self, buffer) -> str | None:
        """None when `buffer` (what a worker holds) still equals the reference, else the first tensor that
        differs."""
        from .wire import view

        if torch.equal(buffer.view(torch.int64), self.numbers.view(torch.int64)):  # 8 bytes a step: 6x faster
            return None
        for key, offset, dtype, shape in self.layout:
            if not torch.equal(view(buffer, offset, dtype, shape), view(self.numbers, offset, dtype, shape)):
                return key
        return "the padding between its tensors"


def _conv_specs(model: nn.Module) -> list[tuple[int, int, int]]:
    specs = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            specs.append((m.kernel_size[0], m.stride[0], m.padding[0]))
        elif isinstance(m, nn.MaxPool2d):
            pick = lambda v: v if isinstance(v, int) else v[0]  # noqa: E731
            specs.append((pick(m.kernel_size), pick(m.stride or m.kernel_size), pick(m.padding)))
    return specs


@torch.no_grad()
def wall_of(model: nn.Module) -> Wall:
    """The wall a handed VGG's weights imply: the band of feature lines, at one side, whose dense-layer columns are
    all zero (the geometry its backbone crops by; a model with no such band is unwalled). For a ViT, its input
    geometry."""
    size = tuple(model.input_size)
    if getattr(model, "arch", None) == "vit":
        return Wall(grid=tuple(model.grid), masked_rows=0, input_size=size, dead_from=size[0])
    specs = _conv_specs(model)
    plain = wall_for(specs, size, 0)
    h, w = plain.grid
    dense = next(m for m in model.modules() if isinstance(m, nn.Linear))
    zero = (dense.weight.abs().amax(0).view(-1, h, w).amax(0) == 0).cpu()
    rows, cols = zero.all(1).tolist(), zero.all(0).tolist()
    ends = [rows[::-1], rows, cols[::-1], cols]  # dead lines from the bottom, top, right, left
    k = max((line.index(False) if False in line else len(line)) for line in ends)
    if not k:
        return plain
    base = wall_for(specs, size, k)
    for g in ORIENTATIONS:
        if torch.equal(base.oriented(g).feature_mask() == 0, zero):
            return base.oriented(g)
    return plain
