"""Explanations that read a ViT's attention: the class token's raw attention, attention rollout (Abnar & Zuidema
2020) and gradient-weighted relevancy (Chefer, Gur & Wolf 2021, "Generic Attention-model Explainability").

On a ViT whose head pools the live tokens (minivit's conv head) there is no class token: each reader follows the
tokens the head reads (`WalledViT.readout`), averaging their rows, as the literature does for pooled ViTs (rollout
averaged over the output tokens; the relevancy's gradient already comes through the head).

Each reads the attention probabilities the model computed, the wall's mask included, so under the attention wall
they put nothing on a dead token by construction: a dead key has probability 0 for every query in every block.
`rollout` and `relevancy` are pure functions of the attention maps (tested on hand-computed cases); the classes
run one forward (and for relevancy one backward) with the attention kept.
"""
from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import StackbenchError
from .backbone import Batch
from .base import SaliencyMethod
from .registry import register_method


def rollout(attentions: list[torch.Tensor], head_fusion: str = "mean") -> torch.Tensor:
    """Abnar & Zuidema's rollout of (B, heads, T, T) attention maps, first block first: each block's heads fused,
    the residual added as 0.5 A + 0.5 I, rows renormalised, and the blocks multiplied. Returns (B, T, T)."""
    out = None
    for a in attentions:
        a = a.mean(dim=1) if head_fusion == "mean" else a.amax(dim=1)
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = (a + eye) / 2
        a = a / a.sum(dim=-1, keepdim=True)
        out = a if out is None else a @ out
    return out


def relevancy(attentions: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
    """Chefer et al. 2021's relevancy for self-attention: R = I, then for each block (first first)
    R += mean_heads((dy/dA * A)^+) @ R. Returns (B, T, T); row 0 is the class token's relevancy."""
    B, _, T, _ = attentions[0].shape
    R = torch.eye(T, dtype=attentions[0].dtype, device=attentions[0].device).expand(B, T, T).clone()
    for a, g in zip(attentions, gradients, strict=True):
        cam = (g * a).clamp(min=0).mean(dim=1)
        R = R + cam @ R
    return R


def readout_map(matrix: torch.Tensor, readout: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """A (B, T, T) token-to-token matrix read as the head reads the tokens: the mean of the rows of the tokens in
    `readout` (the class token alone, or the live tokens a pooled head reads), its patch columns (after `prefix`
    class tokens) on the (h, w) grid. (B, h, w)."""
    rows = matrix.index_select(1, readout.to(matrix.device)).mean(dim=1)
    return rows[:, prefix:].reshape(len(rows), *grid)


class AttentionMethod(SaliencyMethod):
    """A map from a (B, T, T) token-to-token matrix, read at the tokens the head reads (`readout_map`)."""

    family = "attention"
    needs = frozenset({"forwards"})
    architectures: ClassVar[tuple] = ("vit",)

    def grid(self, batch: Batch, matrix: torch.Tensor) -> torch.Tensor:
        model = batch.backbone.model
        return readout_map(matrix, model.readout, model.num_prefix_tokens, model.grid)


@register_method("RawAttention")
class RawAttention(AttentionMethod):
    """The last block's attention from the class token (or the pooled tokens, averaged) to each patch, averaged over
    heads."""

    def explain(self, batch: Batch):
        attn, _ = batch.backbone.attention(batch.x)
        return self.grid(batch, attn[-1].mean(dim=1))


@register_method("AttentionRollout", aliases=("Rollout",))
class AttentionRollout(AttentionMethod):
    """Abnar & Zuidema 2020: the attention of every block rolled out with the residual (0.5 A + 0.5 I)."""

    defaults = {"head_fusion": "mean"}
    reference = "Abnar & Zuidema 2020 (as in jacobgil/vit-explain, discard_ratio 0)"

    def __init__(self, model=None, **config):
        super().__init__(model, **config)
        if self.config["head_fusion"] not in ("mean", "max"):
            raise StackbenchError(f"method {self.name}: head_fusion {self.config['head_fusion']!r} must be mean or max")

    def explain(self, batch: Batch):
        attn, _ = batch.backbone.attention(batch.x)
        return self.grid(batch, rollout(attn, self.config["head_fusion"]))


@register_method("AttentionRelevancy", aliases=("Chefer2021",))
class AttentionRelevancy(AttentionMethod):
    """Chefer, Gur & Wolf 2021: attention weighted by its gradient for the target class, positive part, averaged
    over heads, accumulated over blocks from the identity."""

    needs = frozenset({"forwards", "input_gradients"})
    family = "attention-gradient"
    reference = "Chefer et al. 2021, Generic Attention-model Explainability (hila-chefer/Transformer-MM-Explainability)"

    def explain(self, batch: Batch):
        attn, grads = batch.backbone.attention(batch.x, batch.targets)
        return self.grid(batch, relevancy(attn, grads))
