"""Regional prompting for a plain Stable Diffusion checkpoint: object A above the wall, object B in the band.

Regional cross-attention inside one UNet call: each prompt (scene, top object, bottom object) is encoded
separately and the three are concatenated along the token axis; in every cross-attention layer each
pixel attends only to its own region's tokens (one attention per region, blended by the region masks at
that layer's resolution). The self-attention, the convolutions and the classifier-free-guidance batch are
untouched, so the cost stays close to the plain pipeline (MultiDiffusion would run the UNet once per
region per step). The UNet's processors are restored after every call.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (pixels, x1/y1 exclusive)


@dataclass(frozen=True)
class Layout:
    """Where the two objects go, in pixels of the generated image."""

    height: int
    width: int
    top_box: Box
    bottom_box: Box

    @classmethod
    def for_wall(cls, height: int, width: int, band_start: int) -> "Layout":
        """Object A centred in the seen part, object B filling most of the band behind the wall."""
        margin = round(0.04 * height)
        top = (round(0.15 * width), margin, round(0.85 * width), max(band_start - margin, margin + 1))
        bottom = (round(0.12 * width), band_start, round(0.88 * width), height)
        return cls(height, width, top, bottom)

    def masks(self, h: int, w: int) -> torch.Tensor:
        """(3, h, w) region weights [scene, top, bottom] at a feature resolution; they sum to 1 everywhere."""
        top = _box_mask(self.top_box, self.height, self.width, h, w)
        bottom = _box_mask(self.bottom_box, self.height, self.width, h, w)
        bottom = bottom * (1 - top)  # boxes may touch at coarse resolutions: the top object wins
        scene = (1 - top - bottom).clamp_min(0)
        return torch.stack([scene, top, bottom])


def _box_mask(box: Box, H: int, W: int, h: int, w: int) -> torch.Tensor:
    """Fraction of each (h, w) cell covered by the box (area-exact, so small bands survive downsampling)."""
    x0, y0, x1, y1 = box
    ys = torch.arange(h + 1, dtype=torch.float64) * H / h
    xs = torch.arange(w + 1, dtype=torch.float64) * W / w

    def overlap(edges, lo, hi):  # length of each cell [edges[k], edges[k+1]] inside [lo, hi]
        inside = torch.minimum(edges[1:], torch.tensor(float(hi))) - torch.maximum(edges[:-1], torch.tensor(float(lo)))
        return inside.clamp_min(0)

    cover_y = overlap(ys, y0, y1) / (H / h)
    cover_x = overlap(xs, x0, x1) / (W / w)
    return (cover_y[:, None] * cover_x[None, :]).float()


class RegionalAttnProcessor:
    """Cross-attention where pixels of region r attend only to the r-th block of prompt tokens."""

    def __init__(self, layout: Layout, latent_hw: tuple[int, int], n_regions: int = 3):
        self.layout, self.latent_hw, self.n = layout, latent_hw, n_regions
        self._cache: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}

    def _weights(self, seq_len: int, device, dtype) -> torch.Tensor:
        key = (seq_len, device, dtype)
        if key not in self._cache:
            H, W = self.latent_hw
            f = math.sqrt(H * W / seq_len)  # this layer's downscale factor
            h, w = round(H / f), round(W / f)
            if h * w != seq_len:
                raise ValueError(f"cannot map {seq_len} attention tokens onto a {H}x{W} latent")
            self._cache[key] = self.layout.masks(h, w).reshape(self.n, 1, 1, h * w, 1).to(device, dtype)
        return self._cache[key]

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        if encoder_hidden_states is None:
            raise RuntimeError("RegionalAttnProcessor is for cross-attention (attn2) layers only")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, hh, ww = hidden_states.shape
            hidden_states = hidden_states.view(b, c, hh * ww).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        batch, seq_len, _ = hidden_states.shape
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        query = attn.to_q(hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        split = lambda t: t.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # noqa: E731
        query, key, value = split(query), split(key), split(value)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        weights = self._weights(seq_len, query.device, query.dtype)
        out = 0
        for r, (k, v) in enumerate(zip(key.chunk(self.n, dim=2), value.chunk(self.n, dim=2), strict=True)):
            out = out + weights[r] * F.scaled_dot_product_attention(query, k, v, dropout_p=0.0, is_causal=False)

        hidden_states = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, hh, ww)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextlib.contextmanager
def regional_attention(unet, processor: RegionalAttnProcessor):
    """Swap the cross-attention processors for `processor` and always put the originals back."""
    original = dict(unet.attn_processors)
    unet.set_attn_processor({name: processor if name.endswith("attn2.processor") else proc
                             for name, proc in original.items()})
    try:
        yield
    finally:
        unet.set_attn_processor(original)


def encode(pipe, prompts: list[str], device) -> torch.Tensor:
    """(len(prompts), 77, C) text embeddings through the pipeline's own encoder."""
    embeds, _ = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)
    return embeds


@torch.no_grad()
def generate_regional(pipe, layout: Layout, scene: list[str], top: list[str], bottom: list[str], negative: list[str],
                      seeds: list[int], steps: int = 30, guidance: float = 7.5, output_type: str = "pil"):
    """One image per item, each from its own seeded generator (item i is the same whatever the batch)."""
    device = pipe._execution_device
    n = len(seeds)
    cond = torch.cat([encode(pipe, scene, device), encode(pipe, top, device), encode(pipe, bottom, device)], dim=1)
    neg = encode(pipe, negative, device).repeat(1, 3, 1)  # same tokens in every region: plain unconditional branch
    scale = pipe.vae_scale_factor
    processor = RegionalAttnProcessor(layout, (layout.height // scale, layout.width // scale))
    gen_device = "cpu" if device.type == "mps" else device
    generators = [torch.Generator(gen_device).manual_seed(s) for s in seeds]
    with regional_attention(pipe.unet, processor):
        out = pipe(prompt_embeds=cond.to(pipe.unet.dtype), negative_prompt_embeds=neg.to(pipe.unet.dtype),
                   height=layout.height, width=layout.width, num_inference_steps=steps, guidance_scale=guidance,
                   generator=generators if n > 1 else generators[0], output_type=output_type)
    return out.images
