"""CAMs computed from the activations (and gradients) at the target layer: they share one forward and one
head-only backward per batch (see stackbench.evaluate). Each class is a few lines, like pytorch-grad-cam's
`get_cam_weights`; each reproduces the pytorch-grad-cam class named in `reference` (checked in the tests)."""
from __future__ import annotations

import numpy as np
import torch

from .backbone import Batch
from .base import SaliencyMethod
from .registry import register_method

ACTS = frozenset({"activations"})
ACTS_GRADS = frozenset({"activations", "gradients"})


def library_sum(t: torch.Tensor, axis, keepdims: bool = False) -> torch.Tensor:
    """`t` summed in numpy, as pytorch-grad-cam sums it: numpy adds the channels one by one when they are the outer
    axis (a VGG's maps) and pairwise when they are the inner one (a ViT's token grid, a permuted view). torch's
    order differs by a few ulps, and a map of small range (ScoreCAM's near-uniform softmax weights on a ViT; a
    nearly cancelling sum of signed activations in XGradCAM) turns that into 1e-5 after min-max scaling."""
    return torch.from_numpy(t.detach().cpu().numpy().sum(axis=axis, keepdims=keepdims)).to(t.device)


def channel_sum(t: torch.Tensor) -> torch.Tensor:
    """(N, K, h, w) -> (N, h, w), summed over channels as the library sums them."""
    return library_sum(t, 1)


def weighted_sum(w: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """sum_k w[n, k] A[n, k]: the map of every CAM here, from its (N, K) channel weights."""
    return channel_sum(w[:, :, None, None] * A)


class TargetLayerCAM(SaliencyMethod):
    """A map from (A, G) at the target layer. Subclasses implement `cam(A, G)` or `weights(A, G)`."""

    needs = ACTS_GRADS
    family = "gradient"

    def weights(self, A: torch.Tensor, G: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def cam(self, A: torch.Tensor, G: torch.Tensor | None, batch: Batch) -> torch.Tensor:
        return weighted_sum(self.weights(A, G), A)

    def explain(self, batch: Batch):
        return self.cam(batch.activations, batch.gradients, batch)


@register_method("GradCAM")
class GradCAM(TargetLayerCAM):
    """Selvaraju et al. 2017: channel weights = spatial mean of the gradients."""

    reference = "pytorch_grad_cam.GradCAM"

    def weights(self, A, G):
        return G.mean(dim=(2, 3))


@register_method("GradCAM++", aliases=("GradCAMPlusPlus",))
class GradCAMPlusPlus(TargetLayerCAM):
    """Chattopadhay et al. 2018 (eq. 19, as pytorch-grad-cam computes it)."""

    reference = "pytorch_grad_cam.GradCAMPlusPlus"

    def weights(self, A, G):
        g2 = G ** 2
        g3 = g2 * G
        s = A.sum(dim=(2, 3), keepdim=True)
        aij = g2 / (2 * g2 + s * g3 + 1e-6)
        aij = torch.where(G != 0, aij, torch.zeros_like(aij))
        return (G.clamp(min=0) * aij).sum(dim=(2, 3))


@register_method("XGradCAM")
class XGradCAM(TargetLayerCAM):
    """Fu et al. 2020: gradients weighted by normalised activations."""

    reference = "pytorch_grad_cam.XGradCAM"

    def weights(self, A, G):
        # The sum over positions as the library takes it: on signed activations (a ViT's LayerNorm output) it can
        # nearly cancel, and another summation order alone moves the map by 1e-5.
        s = library_sum(A, (2, 3), keepdims=True)
        return (G * A / (s + 1e-7)).sum(dim=(2, 3))


@register_method("HiResCAM")
class HiResCAM(TargetLayerCAM):
    """Draelos & Carin 2020: element-wise gradient x activation, summed over channels (blind to the dead zone:
    the gradient there is exactly zero)."""

    reference = "pytorch_grad_cam.HiResCAM"

    def cam(self, A, G, batch):
        return channel_sum(G * A)


@register_method("GradCAMElementWise")
class GradCAMElementWise(TargetLayerCAM):
    """ReLU of the element-wise gradient x activation, summed over channels."""

    reference = "pytorch_grad_cam.GradCAMElementWise"

    def cam(self, A, G, batch):
        return channel_sum((G * A).clamp(min=0))


@register_method("LayerCAM")
class LayerCAM(TargetLayerCAM):
    """Jiang et al. 2021: positive gradients x activations, summed over channels."""

    reference = "pytorch_grad_cam.LayerCAM"

    def cam(self, A, G, batch):
        return channel_sum(G.clamp(min=0) * A)


def _projection(t: torch.Tensor) -> np.ndarray:
    """Each map's activations projected on their first principal component: pytorch-grad-cam 1.5's
    `get_2d_projection`, operation for operation (NaN to 0, centred per channel, numpy's full SVD, the first right
    singular vector), so the sign, which an SVD leaves arbitrary, is the library's and the maps are bitwise its maps
    (tested). Not imported from there: the library's package pulls in sklearn, matplotlib and scipy on import,
    about 5.5 s of every process that runs EigenCAM."""
    batch = t.detach().cpu().float().numpy().copy()
    batch[np.isnan(batch)] = 0
    out = []
    for a in batch:
        flat = a.reshape(a.shape[0], -1).transpose()
        flat = flat - flat.mean(axis=0)
        _, _, vt = np.linalg.svd(flat, full_matrices=True)
        out.append((flat @ vt[0, :]).reshape(a.shape[1:]))
    return np.float32(out)


@register_method("EigenCAM")
class EigenCAM(TargetLayerCAM):
    """Muhammad & Yeasin 2020: projection of the activations on their first principal component."""

    needs = ACTS
    reference = "pytorch_grad_cam.EigenCAM"

    def cam(self, A, G, batch):
        return _projection(A)


@register_method("EigenGradCAM")
class EigenGradCAM(TargetLayerCAM):
    """EigenCAM of gradient x activation."""

    reference = "pytorch_grad_cam.EigenGradCAM"
    # On the re-initialised model of the randomisation check, gradient x activation can have two near-equal
    # singular values: which one leads, and so the map's correlation, moves with the CPU's kernels on a few images
    # (per-image RMS 0.022 between AVX-512 and AVX2 kernels, scripts/kernel_spread.py).
    rerun_spread = {"rand_corr": 0.03}

    def cam(self, A, G, batch):
        return _projection(G * A)


@register_method("RandomCAM")
class RandomCAM(TargetLayerCAM):
    """Control: channel weights uniform in [-1, 1], seeded per item from (seed, item index), so a map does
    not depend on batching (pytorch-grad-cam's RandomCAM is unseeded)."""

    needs = ACTS
    family = "control"
    defaults = {"seed": 0}

    def cam(self, A, G, batch):
        rows = []
        for i in batch.index:
            gen = torch.Generator().manual_seed(int(self.config["seed"]) * 1_000_003 + int(i))
            rows.append(torch.rand(A.shape[1], generator=gen, dtype=torch.float64) * 2 - 1)
        return weighted_sum(torch.stack(rows).to(A.device, A.dtype), A)
