"""ROAD's noisy linear imputation (Rong et al. 2022), approximated in a few passes over a batch: the fill of the
MoRF and LeRF curves, which does not make an image out of distribution as a constant fill does.

ROAD fills a removed pixel with the weighted mean of its 8 neighbours (1/6 beside, 1/12 diagonal; neighbours
outside the image drop out), known neighbours fixed and unknown ones solved together: one sparse linear system per
image, which pytorch-grad-cam's `NoisyLinearImputer` (the authors' code) solves with scipy's `spsolve` in 50-370 ms
per 176x224 image here, 7-50 forwards of the mini model, for each of the curves' points: far past the axes' budget.
This solves the same system approximately for a whole batch at once: masked 2x2 averages down to a few pixels
(push), then at each finer level the coarser solution, bilinearly upsampled, as the start of `SWEEPS` Jacobi sweeps
over the unknown pixels (pull), the finest level taking the upsampled solution as it is. About 1 ms per 176x224
image here (0.2 forwards); the mean difference from the exact solve is about 0.5% of the image's range, at most
5% (`tests/test_ranking.py` checks it against `NoisyLinearImputer` without noise). Then Gaussian noise of std
`NOISE` is added to the filled pixels (`road_noise`: one seeded field per image, which every step of its curves
uses on the pixels filled there).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SWEEPS = 4        # Jacobi sweeps per level but the finest (which takes the upsampled half-size solution as it is)
NOISE = 0.01      # ROAD's default noise std, in the units of the tensor filled (normalised inputs here)


def _neighbour_sum(u: torch.Tensor) -> torch.Tensor:
    """ROAD's weighted sum of each pixel's 8 neighbours, zero outside the image (shifted slices: a 3x3 depthwise
    convolution is several times slower on the CPU)."""
    h, w = u.shape[-2:]
    p = F.pad(u, (1, 1, 1, 1))
    side = p[..., 0:h, 1:w + 1] + p[..., 2:h + 2, 1:w + 1] + p[..., 1:h + 1, 0:w] + p[..., 1:h + 1, 2:w + 2]
    corner = p[..., 0:h, 0:w] + p[..., 0:h, 2:w + 2] + p[..., 2:h + 2, 0:w] + p[..., 2:h + 2, 2:w + 2]
    return side * (1 / 6) + corner * (1 / 12)


def _solve(x: torch.Tensor, known: torch.Tensor, sweeps: int, finest: bool = True) -> torch.Tensor:
    """x ((N, C, H, W)) with its unknown pixels (`known`: (N, 1, H, W), 1.0 where known) filled: the half-size
    problem's solution, upsampled, then (but at the finest level) `sweeps` Jacobi sweeps of ROAD's equations."""
    n, c, h, w = x.shape
    if min(h, w) >= 4:
        m2 = F.avg_pool2d(known, 2, ceil_mode=True)
        x2 = F.avg_pool2d(x * known, 2, ceil_mode=True) / m2.clamp_min(1e-12)
        coarse = _solve(x2, (m2 > 0).to(x.dtype), sweeps, finest=False)
        start = F.interpolate(coarse, size=(2 * coarse.shape[2], 2 * coarse.shape[3]), mode="bilinear",
                              align_corners=False)[:, :, :h, :w]
    else:  # a few pixels: the mean of the known ones
        start = ((x * known).sum(dim=(2, 3), keepdim=True) / known.sum(dim=(2, 3), keepdim=True).clamp_min(1)
                 ).expand_as(x)
    k = known > 0
    u = torch.where(k, x, start)
    if finest:  # measured: sweeps here cost 2-3x the rest and gain little (tests/test_ranking.py, the module's doc)
        return u
    den = _neighbour_sum(torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device))
    for _ in range(sweeps):
        u = torch.where(k, x, _neighbour_sum(u) / den)
    return u


def road_fill(x: torch.Tensor, keep: torch.Tensor, noise: torch.Tensor | None = None,
              sweeps: int = SWEEPS) -> torch.Tensor:
    """x ((N, C, H, W)) with the pixels where `keep` ((N, 1, H, W) bool) is False replaced by ROAD's linear
    imputation, plus `noise` (a tensor like x, already scaled: `road_noise`) on the filled pixels. An image with
    nothing kept is filled with 0 (the mean colour after normalisation)."""
    k = keep.to(x.dtype)
    filled = _solve(x, k, sweeps)
    if noise is not None:
        filled = filled + noise
    filled = torch.where(k.sum(dim=(2, 3), keepdim=True) > 0, filled, torch.zeros_like(filled))
    return torch.where(keep, x, filled)


def road_noise(shape, seeds, std: float = NOISE) -> torch.Tensor:
    """(len(seeds), *shape) Gaussian noise of `std`, image j's from numpy default_rng(seeds[j]) (float32)."""
    draws = [np.random.default_rng(s).standard_normal(shape, dtype=np.float32) for s in seeds]
    return torch.from_numpy(np.stack(draws) * np.float32(std))
