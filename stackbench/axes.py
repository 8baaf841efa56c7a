"""The board's axes beyond mu (docs/evaluation.md), as the harness computes them per batch.

- **Hidden walls**: each image is also explained through the model re-oriented by one of the 6 dihedral
  transforms that move the wall (`wall.MOVING`, seeded per image) and re-parametrised (`models.variants.
  reparametrise`: the same function from weights no checkpoint has), image and model transformed together; the
  map is turned back and scored on the moved band: `mu_hidden`. Honest methods give mu_hidden = mu.
- **Deletion in the seen part** (RISE): the seen pixels removed from most to least salient in `deletion_steps`
  steps (filled with 0 after normalisation, the ImageNet mean colour), the target probability after each,
  trapezoid AUC: `deletion_auc`, lower is better.
- **MoRF and LeRF with ROAD's fill** (Rong et al. 2022): the same removal most and least relevant first, each
  removed pixel filled by ROAD's noisy linear imputation (`imputation.road_fill`): `morf_auc`, `lerf_auc`, and
  their difference `srg` (Bluecher et al. 2024), the board's qualification.
- **Randomisation** (Adebayo et al. 2018): the map on the trained model against the map on the same architecture
  re-initialised (seeded), same target, over the input pixels under the feature cells the head reads, by rank
  (`rand_corr`, Spearman) and by magnitude (`rand_ssim`).

`Axes` holds the parameters (recorded in every result) and turns aggregates into the row's flags; `Views`
holds the harness's own backbones of every view and, per view, the model a method's worker is handed.
"""
from __future__ import annotations

import copy
import secrets
from dataclasses import dataclass, replace

import numpy as np
import torch

from . import metrics as M
from .errors import StackbenchError
from .imputation import NOISE, SWEEPS, road_fill, road_noise
from .methods import Backbone, backbone_for
from .wall import MOVING


@dataclass(frozen=True)
class Axes:
    # 4 steps each (0, 25, 50, 75, 100% removed): the three curves within the axes' budget of 10 forwards per image
    # and method (benchmarks/bench_axes.py); the constant-fill deletion had 10 before the ROAD curves came
    deletion_steps: int = 4
    road_steps: int = 4               # MoRF and LeRF with ROAD's fill (the ends shared with deletion)
    deletion_chunk: int = 64          # deleted images per forward
    hidden_tolerance: float = 0.01    # |mean mu_hidden - mean mu| above this: orientation-dependent
    rand_threshold: float = 0.8       # mean rand_corr at or above this: model-insensitive
    ssim_threshold: float = 0.8       # mean rand_ssim at or above this: model-insensitive
    # images per evaluation that get the three axes (seeded); None: every image; 0: none (`Axes.none()`)
    sample: int | None = None

    def __post_init__(self):
        if self.sample is not None and (isinstance(self.sample, bool) or not isinstance(self.sample, int)
                                        or self.sample < 0):
            raise StackbenchError(f"axes sample (--axes-images) {self.sample!r}: must be a whole number of at "
                                  "least 1 (0: no axes, the paper's protocol)")

    @classmethod
    def none(cls) -> "Axes":
        """The paper's protocol: mu and its companions on every image, no hidden-wall, deletion or randomisation
        pass (`--axes none`). Its records are not board rows."""
        return cls(sample=0)

    @classmethod
    def of(cls, spec) -> "Axes":
        """`evaluate`'s `axes`: "all" or None (every image), "none" (the paper's protocol), or an Axes."""
        if spec is None or spec == "all":
            return cls()
        if spec == "none":
            return cls.none()
        if isinstance(spec, cls):
            return spec
        raise StackbenchError(f"axes {spec!r:.40}: give 'all', 'none' or a stackbench.axes.Axes (e.g. "
                              "Axes(sample=20))")

    @property
    def measured(self) -> bool:
        """Whether any image gets the axes."""
        return self.sample != 0

    def fitted(self, n: int) -> "Axes":
        """These axes for a set of `n` images: a "sample" of every image is the full measurement."""
        return replace(self, sample=None) if self.sample and self.sample >= n else self

    def chosen(self, n: int, seed: int) -> frozenset | None:
        """The dataset indices (of `n`) that get the axes: None for every image, else a seeded sample (empty for
        none)."""
        if self.sample is None or self.sample >= n:
            return None
        return frozenset(int(i) for i in np.random.default_rng([int(seed), 2]).permutation(n)[:self.sample])

    def describe(self, seed: int, rand_seed: int | None = None) -> dict:
        """The record's `axes`: every parameter that reproduces the new metrics. `sample` appears only when the
        axes were measured on part of the images (a board row never is); with none measured, only
        `measured: "none"` and the empty-map rule of mu."""
        if not self.measured:
            return {"measured": "none", "empty_rule": M.EMPTY_RULE}
        sample = {"sample": {"images": self.sample, "seed": seed,
                             "choice": "the dataset indices numpy default_rng([seed, 2]).permutation(n)[:images]; "
                                       "the other rows have no orientation and no axis values"}} \
            if self.sample is not None else {}
        return {**sample,
            "empty_rule": M.EMPTY_RULE,
            "hidden": {"orientations": list(MOVING), "seed": seed, "tolerance": self.hidden_tolerance,
                       "choice": "per image: orientations[numpy default_rng([seed, 1, index]).integers(6)]; the "
                                 "image and the model transformed together, the map turned back, mu on the moved band",
                       "reparametrised": "each orientation's model re-parametrised (models.variants.reparametrise, "
                                         "seed [seed, 4, index of the orientation]): its conv channels permuted and "
                                         "scaled by powers of two, the same function from weights no checkpoint has"},
            "deletion": {"steps": self.deletion_steps, "seed": seed, "score": "softmax probability of the target",
                         "fill": "0 after ImageNet normalisation (the mean colour)",
                         "order": "seen pixels by the scored map, most salient first; ties in a random order from "
                                  "numpy default_rng([seed, 0, index]); step k deletes round(k S / K) of the S seen "
                                  "pixels; trapezoid AUC over the K + 1 points"},
            "road": {"steps": self.road_steps, "seed": seed,
                     "fill": f"ROAD noisy linear imputation (Rong et al. 2022): neighbour weights 1/6 beside, 1/12 "
                             f"diagonal, within the lines the head sees; a masked 2x2 pyramid, {SWEEPS} Jacobi sweeps "
                             f"per level but the finest (stackbench.imputation); noise std {NOISE} after "
                             "normalisation, one field per image from numpy default_rng([seed, 3, index]) on the "
                             "pixels filled",
                     "order": "MoRF: the deletion order; LeRF: the same order reversed; step k removes round(k S / K) "
                              "of the S seen pixels; the ends (nothing and everything removed) are deletion's; "
                              "srg = LeRF AUC - MoRF AUC"},
            "randomisation": {"init": "the model's architecture re-initialised as at creation, torch seed below: the "
                                      "first of run seed, run seed + 1, ... whose weights differ from the model's",
                              "seed": seed if rand_seed is None else rand_seed, "threshold": self.rand_threshold,
                              "ssim_threshold": self.ssim_threshold,
                              "cells": "input pixels under the feature cells the head reads (Wall.read_cells)",
                              "ssim": "scikit-image's SSIM (7x7 uniform window, K1 0.01, K2 0.03, data range 1) on "
                                      "the rectangle of those cells, each map divided by its maximum there"},
        }

    def flags(self, metrics: dict, mu: float | None = None) -> dict:
        """The row's flags from its aggregates; `mu` is the mean mu over the images that got the axes, when they
        were a sample (mu_hidden is compared with mu on the same images)."""
        if not self.measured:  # not measured is not "not flagged"
            return {"orientation_dependent": None, "model_insensitive": None}

        def mean(name):
            return (metrics.get(name) or {}).get("mean")

        mu, hidden, rand, ssim = mean("mu") if mu is None else mu, mean("mu_hidden"), mean("rand_corr"), \
            mean("rand_ssim")
        return {"orientation_dependent": bool(mu is not None and hidden is not None
                                              and abs(hidden - mu) > self.hidden_tolerance),
                "model_insensitive": bool((rand is not None and rand >= self.rand_threshold)
                                          or (ssim is not None and ssim >= self.ssim_threshold))}


def orientation_for(seed: int, index: int) -> str:
    return MOVING[int(np.random.default_rng([int(seed), 1, int(index)]).integers(len(MOVING)))]


def orientations_for(seed: int, indices) -> list[str]:
    """The hidden orientations the images at `indices` are explained under (in MOVING's order)."""
    wanted = {orientation_for(seed, i) for i in indices}
    return [g for g in MOVING if g in wanted]


def reinitialised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy of `model` with every parameter re-drawn as at creation, from torch seed `seed`."""
    out = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if hasattr(out, "_init_weights"):
            out._init_weights()
        else:
            for m in out.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
    return out


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pa, pb = list(a.state_dict().values()), list(b.state_dict().values())
    return len(pa) == len(pb) and all(torch.equal(p, q) for p, q in zip(pa, pb, strict=True))


class Views:
    """The views of one evaluation: "canonical" (the model as it is), each hidden orientation, "random". The
    harness's backbones (its shared passes, deletion) are never handed to a method: a method's worker gets a copy
    of `handed(view)` (no wall attribute, `stackbench.isolation.handed`) under an opaque `token(view)`, so neither
    the model nor the call names the orientation."""

    def __init__(self, net: torch.nn.Module, seed: int, orientations=MOVING, random: bool = True):
        from .models.variants import orient, reparametrise

        self.net, self.seed, self.rand_seed = net, seed, seed
        self._bb: dict[str, Backbone] = {"canonical": backbone_for(net)}
        if random:  # not without the axes: a VGG16 copy is 0.5 GB
            rnd = reinitialised(net, seed)
            while _same_weights(rnd, net):  # the model is itself that initialisation (NAME@random, the run's seed)
                self.rand_seed += 1
                rnd = reinitialised(net, self.rand_seed)
            self._bb["random"] = backbone_for(rnd)
        for g in orientations:  # only those some image needs (a VGG16 copy is 0.8 GB)
            model = reparametrise(orient(net, g), [int(seed), 4, MOVING.index(g)], inplace=True)
            wall = model.wall
            del model.wall
            self._bb[g] = backbone_for(model, wall=wall)

        self._tokens = {v: secrets.token_hex(4) for v in self._bb}
        self._handed: dict = {}

    def backbone(self, view: str) -> Backbone:
        return self._bb[view]

    def token(self, view: str) -> str:
        return self._tokens[view]

    @property
    def tokens(self) -> list[str]:
        return list(self._tokens.values())

    def handed(self, view: str):
        """The model a method is handed on `view`, packed (`isolation.handed.Handed`): the reference its worker's
        copy must still equal."""
        if view not in self._handed:
            from .isolation.handed import Handed, handed

            bb = self._bb[view]
            self._handed[view] = Handed(handed(bb.model), crop=bb.live_lines != bb._wall.input_size[0])
        return self._handed[view]


def _target_probs(backbone: Backbone, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.softmax(backbone.logits(x).double(), dim=1).gather(1, targets[:, None])[:, 0].cpu()


@torch.inference_mode()
def deletion_ends(backbone: Backbone, x: torch.Tensor, targets: torch.Tensor, seen: torch.Tensor) -> np.ndarray:
    """(N, 2) target probabilities with nothing and with every seen pixel deleted: the first and last points of
    every method's deletion curve (they do not depend on the map), computed once per batch."""
    t = targets.to(x.device)
    gone = x * ~seen.to(x.device)
    return torch.stack([_target_probs(backbone, x, t), _target_probs(backbone, gone, t)], dim=1).numpy()


CURVES = ("deletion", "morf", "lerf")  # constant fill, most relevant first; ROAD fill, most / least relevant first


@torch.inference_mode()
def deletion_curves(backbone: Backbone, x: torch.Tensor, maps: np.ndarray, targets: torch.Tensor, seen: torch.Tensor,
                    axes: "Axes", seed: int, index, ends: np.ndarray) -> dict[str, np.ndarray]:
    """{curve: (N, K + 1) softmax probabilities of the target} after removing 0, 1/K, ..., K/K of the seen pixels in
    the maps' order (`metrics.deletion_order`; LeRF: that order reversed), through the lines the head can see:
    "deletion" fills with 0 (K = axes.deletion_steps), "morf" and "lerf" with ROAD's noisy linear imputation
    (K = axes.road_steps; the noise of image i from numpy default_rng([seed, 3, i]), one field for all its fills). The
    curves' two ends do not depend on the map or the fill order: `deletion_ends`, shared (they cancel in SRG)."""
    N, _, H, W = x.shape
    order = M.deletion_order(maps, seen.cpu().numpy(), seed, index)
    S = order.shape[1]
    rank = np.full((N, H * W), S, dtype=np.int64)
    np.put_along_axis(rank, order, np.arange(S)[None].repeat(N, 0), axis=1)
    rank = backbone.crop(torch.from_numpy(rank).view(N, 1, H, W)).to(x.device)
    ranks = {"deletion": rank, "morf": rank, "lerf": torch.where(rank < S, S - 1 - rank, rank)}
    steps = {"deletion": axes.deletion_steps, "morf": axes.road_steps, "lerf": axes.road_steps}
    xs, t = backbone.crop(x), targets.to(x.device)
    noise = road_noise(xs.shape[1:], [[int(seed), 3, int(i)] for i in index]).to(xs.device, xs.dtype)
    probs = {c: torch.empty(N, steps[c] + 1, dtype=torch.float64) for c in CURVES}
    for c in CURVES:
        probs[c][:, 0], probs[c][:, -1] = torch.from_numpy(ends[:, 0]), torch.from_numpy(ends[:, 1])
    jobs = [(c, j, k) for c in CURVES for j in range(N) for k in range(1, steps[c])]
    for i in range(0, len(jobs), axes.deletion_chunk):
        part = jobs[i:i + axes.deletion_chunk]
        js = torch.tensor([j for _, j, _ in part], device=x.device)
        keep = torch.stack([ranks[c][j] >= round(k * S / steps[c]) for c, j, k in part])
        xin = xs[js] * keep
        road = [n for n, (c, _, _) in enumerate(part) if c != "deletion"]
        if road:
            xin[road] = road_fill(xs[js[road]], keep[road], noise[js[road]])
        p = _target_probs(backbone, xin, t[js])
        for n, (c, j, k) in enumerate(part):
            probs[c][j, k] = p[n]
    return {c: v.numpy() for c, v in probs.items()}
