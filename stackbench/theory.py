"""Section 2 of the paper, checked by computation.

`WalledCNN` is the paper's [CNN] (its Figure 2): one convolution with V filters of size k (no bias), ReLU,
max-pool k', flatten, L dense layers (no bias) with ReLU between them, a raw score y_c; the first dense
layer never reads the bottom h'/2 rows of the pooled map (Theorem 1's W[:, -h'/2:, :] = 0).

Names follow the paper: the image xi is H x W; B^(v) = ReLU(conv_v(xi)) is the activation map GradCAM
weights, at the conv's resolution h x w = (H-k+1) x (W-k+1); the dense net reads the pooled map C' of
size h' x w' = (h/k', w/k'). GradCAM is GC = ReLU(sum_v alpha_v B^(v)) with alpha_v = GAP(d y_c / d B^(v)).

- `alpha_closed_form`: Proposition 2.1 (a sum over paths of products of weights times ReLU indicators,
  divided by hw) against `alpha_autograd` (GAP of the gradient): `alpha_check`.
- `expected_gradcam`: Monte Carlo of E[GC_ij] over T initialisations, batched, with standard errors, beside
  Theorem 1's lower bound (`theorem1_bound`) and the exact L = 1 expectation (`exact_expected_gradcam`,
  derived below, so one can see how loose the bound is): `bound_report`.

Everything is seeded (torch.Generator) and the reports are JSON-able with the same bytes for the same seed.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .errors import StackbenchError
from .versions import versions
from .wall import Wall, wall_for

SCHEMA_ALPHA = "stackbench.theory.alpha/1"
SCHEMA_BOUND = "stackbench.theory.bound/1"
MNIST_SIZE = (29, 29)  # the paper's MNIST setting: k = 2 -> 28 x 28 conv map, k' = 2 -> 14 x 14 pooled map
MIN_FILTERS = 21  # Theorem 1 is stated for V > 20
_CHUNK_ELEMENTS = 1 << 22  # float64 elements of B held at once in the Monte Carlo (32 MiB)


# --------------------------------------------------------------------------------------------- the model

@dataclass(frozen=True)
class Geometry:
    """Sizes of [CNN]: image (H, W), conv kernel k, pool k', conv map (h, w), pooled map (h', w')."""

    image_size: tuple[int, int] = MNIST_SIZE
    kernel: int = 2
    pool: int = 2

    def __post_init__(self):
        h, w = self.conv_size
        if self.kernel < 1 or self.pool < 1 or h < 1 or w < 1:
            raise StackbenchError(f"kernel={self.kernel}, pool={self.pool} do not fit an image of {self.image_size}")
        if h % self.pool or w % self.pool:
            raise StackbenchError(f"conv map {h}x{w} is not divisible by pool k'={self.pool} (Figure 2 needs "
                                  f"(h', w') = (h, w) / k'); pick an image size with H-k+1 divisible by k'")
        if self.pooled_size[0] % 2:
            raise StackbenchError(f"pooled map has h'={self.pooled_size[0]} rows; Theorem 1 masks h'/2 of them "
                                  "and needs h' even")

    @property
    def conv_size(self) -> tuple[int, int]:
        return self.image_size[0] - self.kernel + 1, self.image_size[1] - self.kernel + 1

    @property
    def pooled_size(self) -> tuple[int, int]:
        h, w = self.conv_size
        return h // self.pool, w // self.pool

    @property
    def masked_rows(self) -> int:
        return self.pooled_size[0] // 2

    @property
    def wall(self) -> Wall:
        """Pooled rows h'/2.. are masked; `dead_from` is the first image row no score depends on."""
        return wall_for([(self.kernel, 1, 0), (self.pool, self.pool, 0)], self.image_size, self.masked_rows)

    @property
    def behind_rows(self) -> range:
        """Rows of the conv map (GradCAM's resolution) that feed only masked pooled rows."""
        return range((self.pooled_size[0] - self.masked_rows) * self.pool, self.conv_size[0])

    def to_dict(self) -> dict:
        return {"image_size": list(self.image_size), "kernel": self.kernel, "pool": self.pool,
                "conv_size": list(self.conv_size), "pooled_size": list(self.pooled_size),
                "masked_pooled_rows": [self.pooled_size[0] - self.masked_rows, self.pooled_size[0] - 1],
                "behind_wall_conv_rows": [self.behind_rows.start, self.behind_rows.stop - 1],
                "wall": self.wall.to_dict()}


class WalledCNN(nn.Module):
    """[CNN] of Figure 2 with Theorem 1's mask. Input (N, 1, H, W) -> raw scores (N, classes)."""

    def __init__(self, filters: int = 64, layers: int = 1, hidden: int = 32, classes: int = 1,
                 geometry: Geometry = Geometry()):
        super().__init__()
        if filters < 1 or layers < 1 or hidden < 1 or classes < 1:
            raise StackbenchError(f"filters={filters}, layers={layers}, hidden={hidden}, classes={classes}: "
                                  "all must be >= 1")
        self.geometry, self.filters, self.layers = geometry, filters, layers
        hp, wp = geometry.pooled_size
        self.conv = nn.Conv2d(1, filters, geometry.kernel, bias=False)
        dims = [filters * hp * wp] + [hidden] * (layers - 1) + [classes]
        self.dense = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(dims[:-1], dims[1:], strict=True))
        keep = geometry.wall.feature_mask().bool().expand(filters, hp, wp).reshape(-1)
        self.register_buffer("dead", ~keep, persistent=False)  # columns of W^(1) behind the wall

    @property
    def wall(self) -> Wall:
        return self.geometry.wall

    @torch.no_grad()
    def init_(self, tau: float = 1.0, generator: torch.Generator | None = None) -> "WalledCNN":
        """Theorem 1's initialisation: filters and non-masked weights i.i.d. N(0, tau^2), masked weights 0."""
        for p in [self.conv.weight] + [lin.weight for lin in self.dense]:
            p.copy_(tau * torch.randn(p.shape, generator=generator, dtype=p.dtype))
        self.dense[0].weight.masked_fill_(self.dead, 0)
        return self

    def weight(self, layer: int) -> torch.Tensor:
        """W^(layer+1) as the forward pass uses it (the first one with its masked columns at exactly 0)."""
        w = self.dense[layer].weight
        return w.masked_fill(self.dead, 0) if layer == 0 else w

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """B: ReLU of the conv output, (N, V, h, w); the map GradCAM weights."""
        return F.relu(self.conv(x))

    def head(self, b: torch.Tensor, preactivations: list | None = None) -> torch.Tensor:
        """f(B): max-pool to C', flatten, the dense layers. Appends a^(1..L-1) to `preactivations` if given."""
        z = F.max_pool2d(b, self.geometry.pool).flatten(1)
        for layer in range(self.layers):
            z = F.linear(z, self.weight(layer))
            if layer < self.layers - 1:
                if preactivations is not None:
                    preactivations.append(z)
                z = F.relu(z)
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ----------------------------------------------------------------------------------------- alpha, GradCAM

def _batch(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(1, 1, *x.shape) if x.dim() == 2 else x


def alpha_autograd(model: WalledCNN, x: torch.Tensor, target: int = 0) -> torch.Tensor:
    """alpha_v = GAP over the h x w map of d y_c / d B^(v), by autograd. Returns (N, V)."""
    x = _batch(x)
    with torch.enable_grad():
        b = model.features(x).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(model.head(b)[:, target].sum(), b)
    return grad.mean(dim=(-2, -1))


@torch.no_grad()
def alpha_closed_form(model: WalledCNN, x: torch.Tensor, target: int = 0) -> torch.Tensor:
    """Proposition 2.1: alpha = 1/(hw) sum_{(i,j) in h' x w'} sum_{i_1..i_{L-1}}
    1[a^(1)_{i_1}, ..., a^(L-1)_{i_{L-1}} > 0] prod_p W^(p)_{i_p, i_{p-1}}, with i_0 = (v, i, j) and i_L = c.
    Written as one einsum over the path indices, so the formula reads off the code. Returns (N, V)."""
    x = _batch(x)
    pre: list[torch.Tensor] = []
    b = model.features(x)
    model.head(b, pre)
    # Path index letters i_0 .. i_{L-1}; 'n' is the batch.
    idx = "opqrstuvwxyz"[: model.layers]
    if model.layers > len(idx):
        raise StackbenchError(f"layers={model.layers}: the closed form is written for at most {len(idx)} layers")
    operands, terms = [model.weight(model.layers - 1)[target]], [idx[-1]]
    for layer in range(model.layers - 1, 0, -1):  # hidden layer `layer` has index i_layer
        operands += [(pre[layer - 1] > 0).to(b.dtype), model.weight(layer - 1)]
        terms += ["n" + idx[layer], idx[layer] + idx[layer - 1]]
    if model.layers == 1:  # no hidden layer: every path is a single weight, the same for every input
        per_input = operands[0].expand(x.shape[0], -1)
    else:
        per_input = torch.einsum(",".join(terms) + "->n" + idx[0], *operands)
    h, w = model.geometry.conv_size
    hp, wp = model.geometry.pooled_size
    return per_input.reshape(x.shape[0], model.filters, hp, wp).sum(dim=(-2, -1)) / (h * w)


def gradcam(model: WalledCNN, x: torch.Tensor, target: int = 0, alpha: torch.Tensor | None = None) -> torch.Tensor:
    """Definition 2.1: GC = ReLU(sum_v alpha_v B^(v)), (N, h, w); alpha by autograd unless given."""
    x = _batch(x)
    alpha = alpha_autograd(model, x, target) if alpha is None else alpha
    with torch.no_grad():
        return F.relu(torch.einsum("nv,nvhw->nhw", alpha, model.features(x)))


def _rel_err(a: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per input: max_v |a_v - ref_v| / max_v |ref_v| (inf-norm relative; 0 when both are exactly 0)."""
    num = (a - ref).abs().amax(dim=-1)
    den = ref.abs().amax(dim=-1)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(ref.dtype).tiny), num)


def alpha_check(image: torch.Tensor, layers: Sequence[int] = (1, 2, 3), filters: int = 8, hidden: int = 32,
                trials: int = 100, tau: float = 1.0, seed: int = 0, noise_inputs: int = 3,
                dtype: torch.dtype = torch.float64, tol: float = 1e-5, progress: Callable | None = None) -> dict:
    """Proposition 2.1 vs autograd over `trials` seeded initialisations per L. Inputs per draw: `image` and
    `noise_inputs` uniform [0, 1] images, so the ReLU indicators change with the input. Target c is drawn
    per trial among 2 classes. `progress`, if given, wraps an iterable like tqdm."""
    if filters < 2:
        raise StackbenchError(f"--filters {filters}: the check is about V > 1 filters")
    if trials < 1:
        raise StackbenchError(f"--trials {trials}: need at least 1")
    geom = Geometry(tuple(image.shape[-2:]))
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for L in layers:
        if not 1 <= L <= 12:
            raise StackbenchError(f"--layers {L}: pick 1..12")
        model = WalledCNN(filters, L, hidden, classes=2, geometry=geom).to(dtype)
        errs, scale = [], []
        for _ in (progress or (lambda it, **_: it))(range(trials), desc=f"alpha L={L}", unit="trial"):
            model.init_(tau, gen)
            x = torch.cat([image.reshape(1, 1, *geom.image_size).to(dtype),
                           torch.rand(noise_inputs, 1, *geom.image_size, generator=gen, dtype=dtype)])
            target = int(torch.randint(2, (1,), generator=gen))
            ag, cf = alpha_autograd(model, x, target), alpha_closed_form(model, x, target)
            errs.append(_rel_err(cf, ag))
            scale.append(ag.abs().amax(dim=-1))
        errs, scale = torch.cat(errs), torch.cat(scale)
        rows.append({"layers": L, "evaluations": int(errs.numel()), "max_rel_err": float(errs.max()),
                     "median_rel_err": float(errs.median()), "median_max_abs_alpha": float(scale.median()),
                     "zero_alpha_evaluations": int((scale == 0).sum())})
    worst = max(r["max_rel_err"] for r in rows)
    return {"schema": SCHEMA_ALPHA,
            "config": {"geometry": geom.to_dict(), "filters": filters, "hidden": hidden, "classes": 2,
                       "layers": list(layers), "trials": trials, "noise_inputs": noise_inputs, "tau": tau,
                       "seed": seed, "dtype": str(dtype).replace("torch.", ""), "tol": tol,
                       "rel_err": "max_v |closed - autograd| / max_v |autograd| per input",
                       "rng": "torch.Generator().manual_seed(seed); per trial: init_ (conv, dense 1..L), "
                              "noise inputs, target"},
            "results": rows, "max_rel_err": worst, "passed": bool(worst <= tol),
            "env": versions("torch", "numpy", "scikit-learn")}


# ----------------------------------------------------------------------------------- Theorem 1, L = 1

def patch_norms(image: torch.Tensor, kernel: int) -> torch.Tensor:
    """||m||_2 of the k x k patch xi[i:i+k, j:j+k] for every (i, j) of the conv map, (h, w)."""
    x = _batch(image).to(torch.float64)
    return F.conv2d(x * x, torch.ones(1, 1, kernel, kernel, dtype=torch.float64)).clamp_min(0).sqrt()[0, 0]


def theorem1_rhs(filters: int, geometry: Geometry, tau: float = 1.0) -> float:
    """The factor of ||m||_2 in Theorem 1: (V-20)/sqrt(V) sqrt(h'w'/(16 pi)) tau^2/(hw). Not a bound for V <= 20."""
    (h, w), (hp, wp) = geometry.conv_size, geometry.pooled_size
    return (filters - 20) / math.sqrt(filters) * math.sqrt(hp * wp / (16 * math.pi)) * tau ** 2 / (h * w)


def theorem1_bound(image: torch.Tensor, filters: int, geometry: Geometry, tau: float = 1.0) -> torch.Tensor | None:
    """Theorem 1's lower bound on E[GC_ij] for every (i, j), (h, w); None when V <= 20 (not claimed)."""
    if filters < MIN_FILTERS:
        return None
    return theorem1_rhs(filters, geometry, tau) * patch_norms(image, geometry.kernel)


def kappa(filters: int) -> float:
    """E sqrt(sum_v ReLU(Z_v)^2) for Z i.i.d. N(0, 1): N ~ Bin(V, 1/2) filters fire, and given N the sum is
    chi^2_N, whose square root has mean sqrt(2) Gamma((N+1)/2) / Gamma(N/2)."""
    total = 0.0
    for n in range(1, filters + 1):
        log_p = math.lgamma(filters + 1) - math.lgamma(n + 1) - math.lgamma(filters - n + 1) - filters * math.log(2)
        total += math.exp(log_p + 0.5 * math.log(2) + math.lgamma((n + 1) / 2) - math.lgamma(n / 2))
    return total


def exact_expected_gradcam(image: torch.Tensor, filters: int, geometry: Geometry, tau: float = 1.0) -> torch.Tensor:
    """E[GC_ij] exactly, for L = 1 and any V (h, w).

    With L = 1, alpha_v = (1/hw) sum of the n = h'w'/2 unmasked weights of filter v ~ N(0, tau^2 n/(hw)^2),
    independent of B^(v)_ij = tau ||m|| ReLU(Z_v). Given B, X = sum_v alpha_v B^(v)_ij ~ N(0, s^2 ||B||^2) with
    s = tau sqrt(n)/(hw), so E ReLU(X) = s E||B|| / sqrt(2 pi) = tau^2 ||m|| sqrt(n) kappa(V) / (hw sqrt(2 pi)).
    """
    (h, w), (hp, wp) = geometry.conv_size, geometry.pooled_size
    live = (hp - geometry.masked_rows) * wp
    factor = tau ** 2 * math.sqrt(live) * kappa(filters) / (h * w * math.sqrt(2 * math.pi))
    return factor * patch_norms(image, geometry.kernel)


def draw_initialisations(trials: int, filters: int, geometry: Geometry, tau: float, generator: torch.Generator,
                         dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """`trials` draws of Theorem 1's initialisation for L = 1: filters (T, V, k, k), W (T, V, h', w') with
    the bottom h'/2 rows at 0 (what `WalledCNN.init_` draws, batched)."""
    k, (hp, wp) = geometry.kernel, geometry.pooled_size
    filt = tau * torch.randn(trials, filters, k, k, generator=generator, dtype=dtype)
    weights = tau * torch.randn(trials, filters, hp, wp, generator=generator, dtype=dtype)
    weights[:, :, hp - geometry.masked_rows:] = 0
    return filt, weights


def gradcam_l1(image: torch.Tensor, filt: torch.Tensor, weights: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """GradCAM of `trials` [CNN]s with L = 1 at once, (T, h, w). For L = 1 Proposition 2.1 has no indicator:
    alpha_v = (1/hw) sum_ij W_{v,ij}, linear in W and the same for every input."""
    t, v, k, _ = filt.shape
    h, w = geometry.conv_size
    b = F.relu(F.conv2d(_batch(image).to(filt.dtype), filt.reshape(t * v, 1, k, k))).reshape(t, v, h, w)
    alpha = weights.sum(dim=(-2, -1)) / (h * w)
    return F.relu(torch.einsum("tv,tvhw->thw", alpha, b))


def expected_gradcam(image: torch.Tensor, filters: int, trials: int, geometry: Geometry = Geometry(),
                     tau: float = 1.0, seed: int = 0, progress: Callable | None = None) -> dict:
    """Monte Carlo of E[GC_ij] over `trials` initialisations: {'mean', 'se', 'chunk'}, maps (h, w) in float64.
    Trials run in chunks of a size fixed by (V, h, w), so the numbers depend on the seed only. `progress`, if
    given, is called like tqdm(total=, desc=, unit=) and gets .update(n) / .close()."""
    if trials < 2:
        raise StackbenchError(f"--trials {trials}: need at least 2 for a standard error")
    h, w = geometry.conv_size
    chunk = max(1, min(trials, _CHUNK_ELEMENTS // (filters * h * w)))
    gen = torch.Generator().manual_seed(seed)
    s1 = torch.zeros(h, w, dtype=torch.float64)
    s2 = torch.zeros(h, w, dtype=torch.float64)
    bar = progress(total=trials, desc=f"V={filters}", unit="trial") if progress else None
    for start in range(0, trials, chunk):
        gc = gradcam_l1(image, *draw_initialisations(min(chunk, trials - start), filters, geometry, tau, gen), geometry)
        s1 += gc.sum(0)
        s2 += (gc * gc).sum(0)
        if bar is not None:
            bar.update(gc.shape[0])
    if bar is not None:
        bar.close()
    mean = s1 / trials
    var = ((s2 - trials * mean * mean) / (trials - 1)).clamp_min(0)
    return {"mean": mean, "se": (var / trials).sqrt(), "chunk": chunk}


# ---------------------------------------------------------------------------------------------- images

def digit_image(index: int = 0, size: tuple[int, int] = MNIST_SIZE) -> tuple[torch.Tensor, dict]:
    """A real handwritten digit from scikit-learn's bundled digits (8x8, 0..16), MNIST-like: bilinear x3 to
    24 x 24, zero-padded to `size` (digit centred, as MNIST's 20 x 20 digit in 28 x 28), values in [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    n = len(digits.images)
    if not 0 <= index < n:
        raise StackbenchError(f"--digit {index}: scikit-learn's digits data set has items 0..{n - 1}")
    x = torch.tensor(digits.images[index], dtype=torch.float64)[None, None] / 16.0
    x = F.interpolate(x, scale_factor=3, mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)
    top, left = (size[0] - x.shape[0]) // 2, (size[1] - x.shape[1]) // 2
    if top < 0 or left < 0:
        raise StackbenchError(f"image size {size} is smaller than the 24x24 digit")
    out = torch.zeros(size, dtype=torch.float64)
    out[top:top + x.shape[0], left:left + x.shape[1]] = x
    return out, {"source": "sklearn.datasets.load_digits", "index": index, "label": int(digits.target[index]),
                 "preprocess": f"/16, bilinear x3 (align_corners=False) to 24x24, zero-pad to {size[0]}x{size[1]}"}


def load_image(path: str | Path, size: tuple[int, int] = MNIST_SIZE) -> tuple[torch.Tensor, dict]:
    """A grayscale image in [0, 1] resized (bilinear) to `size`. 8-bit modes / 255, 16-bit / 65535,
    float images must already lie in [0, 1]. Digits are expected bright on dark, as in MNIST."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise StackbenchError(f"--image {path}: no such file; give a PNG/JPEG path or use --digit N")
    try:
        with Image.open(path) as img:
            img.load()
            mode, orig = img.mode, img.size
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float64) / 65535.0
            elif mode == "F":
                arr = np.asarray(img, dtype=np.float64)
            else:
                arr = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise StackbenchError(f"--image {path}: not a readable image ({e}); give a PNG/JPEG file") from None
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise StackbenchError(f"--image {path}: values must lie in [0, 1] (mode {mode}); rescale the image")
    x = torch.tensor(arr)[None, None]
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
    return x[0, 0], {"source": str(path), "mode": mode, "original_size": [orig[1], orig[0]],
                     "preprocess": f"grayscale in [0, 1], bilinear resize to {size[0]}x{size[1]}"}


def image_sha256(image: torch.Tensor) -> str:
    return hashlib.sha256(image.to(torch.float64).contiguous().numpy().tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------------- reports

def _r(x: float | None) -> float | None:
    """Ten significant digits: JSON stays readable and identical for identical computations."""
    return None if x is None else float(f"{x:.10g}")


def _map(t: torch.Tensor | None) -> list | None:
    return None if t is None else [[_r(float(v)) for v in row] for row in t.tolist()]


def bound_summary(image: torch.Tensor, filters: int, mc: dict, geometry: Geometry, tau: float) -> dict:
    """Compare the Monte Carlo mean with Theorem 1 and with the exact expectation at every pixel with a
    non-zero patch; summarise behind the wall (conv rows feeding only masked pooled rows)."""
    mean, se = mc["mean"], mc["se"]
    norms = patch_norms(image, geometry.kernel)
    live = norms > 0
    bound = theorem1_bound(image, filters, geometry, tau)
    exact = exact_expected_gradcam(image, filters, geometry, tau)
    behind = torch.zeros_like(live)
    behind[geometry.behind_rows.start:] = True
    n = int(live.sum())
    safe_se = se.clamp_min(1e-300)
    z = ((mean - exact) / safe_se)[live]

    def zone(sel: torch.Tensor) -> dict:
        nz = sel & live
        return {"pixels": int(sel.sum()), "pixels_nonzero_patch": int(nz.sum()),
                "mean_gradcam": _r(float(mean[sel].mean())),
                "share_positive_mean": _r(float((mean[nz] > 0).double().mean())) if nz.any() else None,
                "share_mean_above_3se": _r(float((mean[nz] > 3 * se[nz]).double().mean())) if nz.any() else None}

    out = {"filters": filters, "bound_claimed": bound is not None,
           "bound_note": None if bound is not None else
           f"Theorem 1 claims no bound for V = {filters} <= 20 "
           f"(its right-hand side is {theorem1_rhs(filters, geometry, tau):.3g} ||m||)",
           "pixels_nonzero_patch": n,
           "rhs_factor": _r(theorem1_rhs(filters, geometry, tau)),
           "exact_factor": _r(float(exact[live][0] / norms[live][0])) if n else None,
           "exact_over_bound": _r(float(exact[live][0] / bound[live][0])) if n and bound is not None else None,
           "max_abs_z_vs_exact": _r(float(z.abs().max())) if n else None,
           "mean_z_vs_exact": _r(float(z.mean())) if n else None,
           "behind_wall": zone(behind), "in_front": zone(~behind)}
    if bound is not None and n:
        margin = ((mean - bound) / safe_se)[live]
        out.update(share_mean_ge_bound=_r(float((mean[live] >= bound[live]).double().mean())),
                   share_mean_ge_bound_3se=_r(float((margin >= -3).double().mean())),
                   min_margin_se=_r(float(margin.min())),
                   min_mean_over_bound=_r(float((mean[live] / bound[live]).min())))
    else:
        out.update(share_mean_ge_bound=None, share_mean_ge_bound_3se=None, min_margin_se=None,
                   min_mean_over_bound=None)
    out["maps"] = {"mean": _map(mean), "se": _map(se), "bound": _map(bound), "exact": _map(exact)}
    return out


def bound_report(image: torch.Tensor, image_info: dict, filters: Iterable[int] = (21, 64, 256), trials: int = 2000,
                 tau: float = 1.0, seed: int = 0, geometry: Geometry | None = None,
                 progress: Callable | None = None) -> dict:
    """Theorem 1 checked by Monte Carlo for each V in `filters`; a self-describing JSON-able record."""
    geometry = geometry or Geometry(tuple(image.shape[-2:]))
    if tuple(image.shape[-2:]) != geometry.image_size:
        raise StackbenchError(f"image is {tuple(image.shape[-2:])}, the geometry expects {geometry.image_size}")
    if not tau > 0:
        raise StackbenchError(f"--tau {tau}: the initialisation scale must be > 0")
    filters = list(filters)
    if not filters or min(filters) < 1:
        raise StackbenchError(f"--filters {filters}: need V >= 1")
    results, chunks = [], {}
    for v in filters:
        mc = expected_gradcam(image, v, trials, geometry, tau, seed, progress)
        chunks[str(v)] = mc["chunk"]
        results.append(bound_summary(image, v, mc, geometry, tau))
    claimed = [r for r in results if r["bound_claimed"] and r["pixels_nonzero_patch"]]
    return {"schema": SCHEMA_BOUND,
            "config": {"geometry": geometry.to_dict(), "layers": 1, "tau": tau, "trials": trials, "seed": seed,
                       "filters": filters, "dtype": "float64", "chunk": chunks, "sigma": 3,
                       "rng": "per V: torch.Generator().manual_seed(seed); per chunk: filters (T,V,k,k) then "
                              "W (T,V,h',w') ~ N(0, tau^2), masked rows set to 0",
                       "behind_wall": "conv-map rows that feed only masked pooled rows"},
            "image": {**image_info, "sha256": image_sha256(image), "size": list(image.shape[-2:])},
            "results": results,
            # None when no V > 20 was asked: there is no claim to check.
            "passed": all(r["share_mean_ge_bound_3se"] == 1.0 for r in claimed) if claimed else None,
            "env": versions("torch", "numpy", "scikit-learn")}
