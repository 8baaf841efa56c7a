"""Walled Vision Transformers: the wall as a set of dead patch tokens.

The image is cut into p x p patches; the tokens of the bottom `masked_rows` patch rows are dead, and no logit
depends on their pixels. Two walls, both structural (a non-persistent buffer built from the config, so no
checkpoint and no copy can drop it):

- `attention`: every block's attention masks the dead tokens as keys, for every query. The class token, which
  the head reads, never mixes in a dead token, and nothing else reaches it.
- `pixel`: the dead patches' embeddings are replaced by a constant (zero) before the position embeddings. The
  dead positions are still attended; only their pixels are gone.

Two readouts (`global_pool`, timm's name): `token`, the standard class-token head; `conv`, no class token and a
small convolutional head over the grid of live tokens (`ConvPool`), with a per-patch hierarchical MLP stem
(`stem="hmlp"`) and fixed 2D sin-cos positions (`position="sincos"`). The second is the mini track's ViT: on the
`shapes`, whose classes differ only by outline, every class-token ViT tried stayed at chance for tens of
thousands of images on a CPU budget, and the convolutional head over the tokens is what got off the plateau
(FIELD_NOTES). Every part of both reads one patch per token before the blocks mix them, so the walls stay exact.

The layout follows timm's `VisionTransformer` (`patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.i.norm1`,
`attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1`, `mlp.fc2`, `norm`, `head`); `stackbench.models.vit_weights` maps
torchvision's and transformers' key names onto it.
"""
from __future__ import annotations

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn
from torch.nn import functional as F

from ..wall import Wall
from .vgg import class_names_of

WALLS = ("attention", "pixel", "none")
STEMS = ("linear", "hmlp")
POSITIONS = ("learned", "sincos")
POOLS = ("token", "conv")


class Attention(nn.Module):
    """Multi-head self-attention with an optional boolean key mask (True = may attend, SDPA's convention)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, keys: torch.Tensor | None = None, keep: list | None = None) -> torch.Tensor:
        """keys: (T,) bool, the tokens that may be attended (None: all). keep: a list that receives the
        attention probabilities (B, heads, T, T), computed explicitly and kept in the graph (attention methods)."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        mask = None if keys is None else keys.view(1, 1, 1, T)
        if keep is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            scores = (q * (q.shape[-1] ** -0.5)) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            attn = scores.softmax(dim=-1)
            keep.append(attn)
            out = attn @ v
        return self.proj(out.transpose(1, 2).reshape(B, T, D))

    def first_query(self, x: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """The attention output of the first token (the class token) alone, (B, 1, D): its query against every
        key. Equal to forward(x)[:, :1] up to float rounding, at a fraction of the cost."""
        B, T, D = x.shape
        h, hd = self.heads, D // self.heads
        q = F.linear(x[:, :1], self.qkv.weight[:D], self.qkv.bias[:D]).reshape(B, 1, h, hd).transpose(1, 2)
        k, v = F.linear(x, self.qkv.weight[D:], self.qkv.bias[D:]).reshape(B, T, 2, h, hd).permute(2, 0, 3, 1,
                                                                                                  4).unbind(0)
        mask = None if keys is None else keys.view(1, 1, 1, T)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(B, 1, D))


class _PatchEmbedding(torch.autograd.Function):
    """The patch embedding, a convolution whose kernel is its stride: the convolution forward (the numbers of
    `nn.Conv2d`), and its backward as the two matrix products of the same linear map. oneDNN's convolution backward
    for this shape took 4x as long as those products on a 2-core CPU (measured), and Opti-CAM and training take
    this gradient at every step."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride=weight.shape[-1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        (B, C, H, W), D, p = x.shape, weight.shape[0], weight.shape[-1]
        h, w = H // p, W // p
        g = g.to(weight.dtype).permute(0, 2, 3, 1).reshape(B * h * w, D)  # bf16 under autocast: back to the weights'
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = (g @ weight.reshape(D, -1)).reshape(B, h, w, C, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)
            gx = gx.to(x.dtype)
        if ctx.needs_input_grad[1]:
            patches = x.to(weight.dtype).reshape(B, C, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(B * h * w, -1)
            gw = (g.t() @ patches).reshape(weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0)
        return gx, gw, gb


def patch_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A convolution whose kernel is its stride (no output reads outside its own cell), with the fast backward."""
    return _PatchEmbedding.apply(x, conv.weight, conv.bias)


class HMLPStem(nn.Module):
    """The hierarchical per-patch MLP stem (Touvron et al. 2022, "Three things everyone should know about Vision
    Transformers"): 4x4/s4 -> BN -> GELU -> 2x2/s2 -> BN -> GELU -> 2x2/s2 for patch 16. Every kernel equals its
    stride, so each token reads its own 16x16 patch and nothing else (in evaluation the batch norms are per-channel
    affine maps): the pixel and attention walls stay exact, and a dihedral transform of the image transforms the
    token grid the same way (hidden walls)."""

    def __init__(self, dim: int, patch_size: int):
        super().__init__()
        if patch_size != 16:
            raise ValueError(f"the hmlp stem is built for patch 16 (4 x 2 x 2), not {patch_size}")
        mid = max(dim // 4, 1)
        self.proj = nn.Sequential(nn.Conv2d(3, mid, 4, 4), nn.BatchNorm2d(mid), nn.GELU(),
                                  nn.Conv2d(mid, mid, 2, 2), nn.BatchNorm2d(mid), nn.GELU(),
                                  nn.Conv2d(mid, dim, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.proj:
            x = patch_conv(x, m) if isinstance(m, nn.Conv2d) else m(x)
        return x


def sincos_positions(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2D sin-cos position embeddings (MAE's, without a class-token row): (grid * grid, dim), a quarter of the
    channels each for sin(y w), cos(y w), sin(x w), cos(x w), frequencies w = 10000^(-k / (dim/4)). Computed in
    float64 and rounded to 7 decimals before float32, so a last-bit difference between CPUs' sin and cos never
    reaches the weights (the pixels and fingerprints must be the same on every machine)."""
    if dim % 4:
        raise ValueError(f"sin-cos positions need a width divisible by 4, not {dim}")
    import numpy as np

    q = dim // 4
    omega = 1.0 / 10000 ** (np.arange(q, dtype=np.float64) / q)
    ys, xs = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")
    y, x = ys.reshape(-1, 1) * omega, xs.reshape(-1, 1) * omega
    table = np.concatenate([np.sin(y), np.cos(y), np.sin(x), np.cos(x)], axis=1).round(7)
    return torch.from_numpy(table.astype(np.float32))


class ConvPool(nn.Module):
    """The convolutional head over the live tokens' grid (B, D, h, w): conv3x3 -> BN -> GELU -> conv3x3 -> BN ->
    GELU -> mean over the grid. Stride 1 with symmetric padding: it commutes with the dihedral transforms on any
    grid (a strided 3x3 does not), so a re-oriented copy is exact."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.GELU(),
                                  nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.GELU())

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.body(grid).mean(dim=(2, 3))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block. `forward(x, keys, a)`: `a` replaces norm1(x), the target layer's output (what
    the token CAMs read and what AblationCAM changes), so the rest of the block is a function of (x, a)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, keys=None, a=None, keep=None):
        a = self.norm1(x) if a is None else a
        x = x + self.attn(a, keys, keep)
        return x + self.mlp(self.norm2(x))

    def first_token(self, x, keys=None, a=None):
        """The block's output for the first token (the class token) only, (B, 1, D): all the last block owes the
        head, which reads nothing else. The other tokens' queries, projections and MLP are skipped."""
        a = self.norm1(x) if a is None else a
        x = x[:, :1] + self.attn.first_query(a, keys)
        return x + self.mlp(self.norm2(x))


class WalledViT(nn.Module, PyTorchModelHubMixin, library_name="stackbench",
                tags=["stackbench", "saliency", "image-classification", "vision-transformer"],
                repo_url="https://github.com/stackbench/stackbench"):
    """A ViT classifier with a wall over the bottom `masked_rows` patch rows: a class-token head
    (`global_pool="token"`), or a convolutional head over the live tokens (`global_pool="conv"`, no class token)."""

    arch = "vit"
    # What a zoo name fixes about the network (loading checks a config against it).
    ARCHITECTURE = ("image_size", "patch_size", "dim", "depth", "heads", "mlp_ratio", "masked_rows", "wall", "stem",
                    "position", "global_pool")

    def __init__(self, *, name: str = "vit-b16-masked", image_size: int = 224, patch_size: int = 16, dim: int = 768,
                 depth: int = 12, heads: int = 12, mlp_ratio: float = 4.0, num_classes: int = 1000,
                 masked_rows: int = 4, wall: str = "attention", eps: float = 1e-6, stem: str = "linear",
                 position: str = "learned", global_pool: str = "token", id2label: dict | None = None,
                 label2id: dict | None = None):
        super().__init__()
        for option, value, known in (("wall", wall, WALLS), ("stem", stem, STEMS), ("position", position, POSITIONS),
                                     ("global_pool", global_pool, POOLS)):
            if value not in known:
                raise ValueError(f"unknown {option} {value!r}; use one of {', '.join(known)}")
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        g = image_size // patch_size
        rows = masked_rows if wall != "none" else 0
        self.name, self.kind, self.num_classes = name, wall, num_classes
        self.input_size = (image_size, image_size)
        self.patch_size, self.dim = patch_size, dim
        self.grid = (g, g)  # not read from `wall`: a hidden-wall copy carries no wall attribute
        self.wall = Wall(grid=(g, g), masked_rows=rows, input_size=self.input_size, dead_from=(g - rows) * patch_size)
        self.patch_embed = HMLPStem(dim, patch_size) if stem == "hmlp" else nn.Module()
        if stem == "linear":
            self.patch_embed.proj = nn.Conv2d(3, dim, patch_size, patch_size)
        self.stem = stem
        # timm's num_prefix_tokens: the class token, or none (the conv head reads the patch tokens)
        self.num_prefix_tokens = 1 if global_pool == "token" else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if self.num_prefix_tokens else None
        if position == "sincos":  # fixed: a buffer from the config, never from a checkpoint
            self.register_buffer("pos_embed", sincos_positions(g, dim)[None], persistent=False)
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + g * g, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, eps) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.pool = ConvPool(dim) if global_pool == "conv" else None
        self.head = nn.Linear(dim, num_classes)
        self._set_dead()
        self.class_names = class_names_of(id2label, num_classes)
        self._init_weights()

    def _set_dead(self) -> None:
        """The dead-token buffer, from the wall (in its orientation). Not persistent: never from a checkpoint. Also
        the live tokens' box (the rows in front of the wall, in its orientation), which the conv head reads, and the
        tokens the head reads (`readout`: the class token, or the live box), which the attention readers follow."""
        with torch.device("cpu"):  # the bookkeeping on the CPU, even when the model is built on the meta device
            dead = (self.wall.feature_mask() == 0).reshape(-1) if self.wall.masked_rows else \
                torch.zeros(self.wall.grid[0] * self.wall.grid[1], dtype=torch.bool)
            live = (~dead).view(self.grid)
            rows, cols = live.any(1).nonzero().flatten(), live.any(0).nonzero().flatten()
            live_index = (~dead).nonzero().flatten()
            # Keys that may be attended: the class token and the live patches (attention wall only).
            keys = torch.cat([torch.ones(self.num_prefix_tokens, dtype=torch.bool), ~dead])
            readout = live_index + self.num_prefix_tokens if self.pool is not None else torch.zeros(1, dtype=torch.long)
        device = self.head.weight.device
        self.register_buffer("dead_tokens", dead.to(device), persistent=False)
        # Read at every forward, so not from `wall`: a hidden-wall copy carries no wall attribute.
        self.pixel_wall = bool(self.wall.masked_rows)
        self.live_grid = (int(rows.numel()), int(cols.numel()))  # the dead zone is whole lines: live is a rectangle
        self.register_buffer("live_index", live_index.to(device), persistent=False)
        self.register_buffer("readout", readout.to(device), persistent=False)
        keys = keys.to(device)
        self.register_buffer("keys", keys if self.kind == "attention" and self.wall.masked_rows else None,
                             persistent=False)

    def _init_weights(self) -> None:
        # timm's ViT initialisation: the class token and the head are NOT zero (torchvision zeroes both, which makes
        # every logit constant at initialisation and every invariance test pass trivially).
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-2)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def walled(self) -> bool:
        return self.wall.dead_height > 0

    @property
    def wall_kind(self) -> str:
        """attention, pixel or none (`WALLS`)."""
        return self.kind

    @property
    def global_pool(self) -> str:
        return "token" if self.pool is None else "conv"

    @property
    def target_layer(self) -> nn.Module:
        """The last block's first LayerNorm: pytorch-grad-cam's ViT target (`blocks[-1].norm1`)."""
        return self.blocks[-1].norm1

    def reshape_transform(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, prefix + h*w, D) tokens -> (B, D, h, w) grid, the class token dropped (pytorch-grad-cam's ViT usage)."""
        h, w = self.grid
        return tokens[:, self.num_prefix_tokens:].reshape(tokens.shape[0], h, w, -1).permute(0, 3, 1, 2)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> tokens (class token first, if any; position embeddings added); the pixel wall acts here."""
        t = self.patch_embed(x) if self.stem == "hmlp" else patch_conv(x, self.patch_embed.proj)
        t = t.flatten(2).transpose(1, 2)
        if self.kind == "pixel" and self.pixel_wall:
            t = t.masked_fill(self.dead_tokens[:, None], 0.0)  # masked_fill: exact even for inf/NaN pixels
        if self.cls_token is not None:
            t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1).to(t.dtype), t], dim=1)
        return t + self.pos_embed.to(t.dtype)

    def trunk(self, x: torch.Tensor, keep: list | None = None) -> torch.Tensor:
        """Images -> the tokens entering the last block."""
        t = self.embed(x)
        for blk in self.blocks[:-1]:
            t = blk(t, self.keys, keep=keep)
        return t

    def read(self, t: torch.Tensor, live_only: bool = False) -> torch.Tensor:
        """Logits from the final norm's output tokens: the class token's, or the conv head over the live box (`t`
        holds only the live tokens, in grid order, when `live_only`)."""
        if self.pool is None:
            return self.head(t[:, 0])
        if not live_only:
            t = t[:, self.num_prefix_tokens:].index_select(1, self.live_index)
        return self.head(self.pool(t.transpose(1, 2).reshape(t.shape[0], -1, *self.live_grid)))

    def top(self, t: torch.Tensor, a: torch.Tensor | None = None, keep: list | None = None) -> torch.Tensor:
        """The last block (its norm1 output replaced by `a` when given), the final norm and the head. With the
        class-token head only the class token's path through the last block is computed, unless the attention is
        kept (`keep`: the attention methods read the whole matrix)."""
        last = self.blocks[-1]
        if keep is None and self.pool is None:
            return self.read(self.norm(last.first_token(t, self.keys, a=a)))
        return self.read(self.norm(last(t, self.keys, a=a, keep=keep)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.live_logits(x)
        return self.top(self.trunk(x))

    def live_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, the final norm's output for the live patch tokens (B, n_live, D) in grid order), with the dead
        tokens left out of every block under the attention wall: what training with the object-mask loss reads
        (the logits and a prediction per live token from one forward)."""
        k = self.num_prefix_tokens
        if self.keys is None:
            t = self.norm(self.blocks[-1](self.trunk(x)))
            return self.read(t), t[:, k:].index_select(1, self.live_index)
        t = self.embed(x)[:, self.keys]
        for blk in self.blocks:
            t = blk(t)
        t = self.norm(t)
        return (self.read(t) if self.pool is None else self.read(t, live_only=True)), t[:, k:]

    def live_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The logits with the dead tokens left out under the attention wall: no query ever attends them and the
        head reads only live tokens, so these are the masked model's logits (and gradients) up to float rounding,
        at 10/14 of the tokens. Training and the methods' scoring forwards (Opti-CAM, deletion) run this;
        `forward` in evaluation always runs the masked model, dead tokens included. Without the attention wall it
        is `forward`."""
        if self.keys is None:
            return self.top(self.trunk(x))
        if self.pool is not None:
            return self.live_forward(x)[0]
        t = self.embed(x)[:, self.keys]
        for blk in self.blocks[:-1]:
            t = blk(t)
        return self.read(self.norm(self.blocks[-1].first_token(t)))

    def save_pretrained(self, *args, **kwargs):
        """huggingface_hub's save_pretrained, refused for a re-oriented copy (see WalledVGG.save_pretrained)."""
        if self.wall.orientation != "identity":
            from ..errors import StackbenchError

            raise StackbenchError("this model was re-oriented (stackbench.models.variants.orient) and cannot be saved: "
                                  "its config would load without the orientation; save the original model instead")
        return super().save_pretrained(*args, **kwargs)

    def count_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
