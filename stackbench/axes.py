"""The board's axes beyond mu (README, "Saliency methods and evaluation"), as the harness computes them per batch.

- **Hidden walls**: each image is also explained through the model re-oriented by one of the 6 dihedral
  transforms that move the wall (`wall.MOVING`, seeded per image), image and model transformed together; the map
  is turned back and scored on the moved band: `mu_hidden`. Honest methods give mu_hidden = mu.
- **Deletion in the seen part** (RISE): the seen pixels removed from most to least salient in `steps` steps
  (filled with 0 after normalisation, the ImageNet mean colour), the target probability after each, trapezoid
  AUC: `deletion_auc`, lower is better.
- **Randomisation** (Adebayo et al. 2018): Spearman correlation of the map on the trained model and on the same
  architecture re-initialised (seeded), same target, over the input pixels under the feature cells the head
  reads: `rand_corr`.

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
from .methods import Backbone, backbone_for
from .wall import MOVING


@dataclass(frozen=True)
class Axes:
    deletion_steps: int = 10
    deletion_chunk: int = 64          # deleted images per forward
    hidden_tolerance: float = 0.01    # |mean mu_hidden - mean mu| above this: orientation-dependent
    rand_threshold: float = 0.8       # mean rand_corr at or above this: model-insensitive
    sample: int | None = None         # images per evaluation that get the three axes (seeded); None: every image

    def __post_init__(self):
        if self.sample is not None and (isinstance(self.sample, bool) or not isinstance(self.sample, int)
                                        or self.sample < 1):
            raise StackbenchError(f"axes sample (--axes-images) {self.sample!r}: must be a whole number of at "
                                  "least 1")

    def fitted(self, n: int) -> "Axes":
        """These axes for a set of `n` images: a "sample" of every image is the full measurement."""
        return replace(self, sample=None) if self.sample is not None and self.sample >= n else self

    def chosen(self, n: int, seed: int) -> frozenset | None:
        """The dataset indices (of `n`) that get the axes: None for every image, else a seeded sample."""
        if self.sample is None or self.sample >= n:
            return None
        return frozenset(int(i) for i in np.random.default_rng([int(seed), 2]).permutation(n)[:self.sample])

    def describe(self, seed: int, rand_seed: int | None = None) -> dict:
        """The record's `axes`: every parameter that reproduces the new metrics. `sample` appears only when the
        axes were measured on part of the images (a board row never is)."""
        sample = {"sample": {"images": self.sample, "seed": seed,
                             "choice": "the dataset indices numpy default_rng([seed, 2]).permutation(n)[:images]; "
                                       "the other rows have no orientation and no axis values"}} \
            if self.sample is not None else {}
        return {**sample,
            "empty_rule": M.EMPTY_RULE,
            "hidden": {"orientations": list(MOVING), "seed": seed, "tolerance": self.hidden_tolerance,
                       "choice": "per image: orientations[numpy default_rng([seed, 1, index]).integers(6)]; the "
                                 "image and the model transformed together, the map turned back, mu on the moved band"},
            "deletion": {"steps": self.deletion_steps, "seed": seed, "score": "softmax probability of the target",
                         "fill": "0 after ImageNet normalisation (the mean colour)",
                         "order": "seen pixels by the scored map, most salient first; ties in a random order from "
                                  "numpy default_rng([seed, 0, index]); step k deletes round(k S / K) of the S seen "
                                  "pixels; trapezoid AUC over the K + 1 points"},
            "randomisation": {"init": "the model's architecture re-initialised as at creation, torch seed below: the "
                                      "first of run seed, run seed + 1, ... whose weights differ from the model's",
                              "seed": seed if rand_seed is None else rand_seed, "threshold": self.rand_threshold,
                              "cells": "input pixels under the feature cells the head reads (Wall.read_cells)"},
        }

    def flags(self, metrics: dict, mu: float | None = None) -> dict:
        """The row's flags from its aggregates; `mu` is the mean mu over the images that got the axes, when they
        were a sample (mu_hidden is compared with mu on the same images)."""
        def mean(name):
            return (metrics.get(name) or {}).get("mean")

        mu, hidden, rand = mean("mu") if mu is None else mu, mean("mu_hidden"), mean("rand_corr")
        return {"orientation_dependent": bool(mu is not None and hidden is not None
                                              and abs(hidden - mu) > self.hidden_tolerance),
                "model_insensitive": bool(rand is not None and rand >= self.rand_threshold)}


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

    def __init__(self, net: torch.nn.Module, seed: int, orientations=MOVING):
        from .models.variants import orient

        self.net, self.seed = net, seed
        self.rand_seed, rnd = seed, reinitialised(net, seed)
        while _same_weights(rnd, net):  # the model is itself that initialisation (NAME@random with the run's seed)
            self.rand_seed += 1
            rnd = reinitialised(net, self.rand_seed)
        self._bb: dict[str, Backbone] = {"canonical": backbone_for(net), "random": backbone_for(rnd)}
        for g in orientations:  # only those some image needs (a VGG16 copy is 0.8 GB)
            model = orient(net, g)
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


@torch.inference_mode()
def deletion_probs(backbone: Backbone, x: torch.Tensor, maps: np.ndarray, targets: torch.Tensor, seen: torch.Tensor,
                   steps: int, seed: int, index, chunk: int, ends: np.ndarray) -> np.ndarray:
    """(N, steps + 1) softmax probability of the target after deleting 0, 1/K, ..., K/K of the seen pixels in the
    maps' order (`metrics.deletion_order`), through the lines the head can see: K - 1 forwards per image and
    method, the two ends from `deletion_ends`."""
    N, _, H, W = x.shape
    order = M.deletion_order(maps, seen.cpu().numpy(), seed, index)
    S = order.shape[1]
    rank = np.full((N, H * W), S, dtype=np.int64)
    np.put_along_axis(rank, order, np.arange(S)[None].repeat(N, 0), axis=1)
    rank = backbone.crop(torch.from_numpy(rank).view(N, 1, H, W)).to(x.device)
    xs = backbone.crop(x)
    counts = torch.tensor([round(k * S / steps) for k in range(steps + 1)], device=x.device)
    pairs = [(j, k) for j in range(N) for k in range(1, steps)]
    probs = torch.empty(N, steps + 1, dtype=torch.float64)
    probs[:, 0], probs[:, steps] = torch.from_numpy(ends[:, 0]), torch.from_numpy(ends[:, 1])
    t = targets.to(x.device)
    for i in range(0, len(pairs), chunk):
        js = torch.tensor([p[0] for p in pairs[i:i + chunk]], device=x.device)
        ks = torch.tensor([p[1] for p in pairs[i:i + chunk]], device=x.device)
        keep = rank[js] >= counts[ks].view(-1, 1, 1, 1)
        probs[js.cpu(), ks.cpu()] = _target_probs(backbone, xs[js] * keep, t[js])
    return probs.numpy()
