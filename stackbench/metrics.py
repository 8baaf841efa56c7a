"""The metric: how much of a saliency map falls behind the wall.

Pure functions of maps (numpy, (N, h, w) or (h, w)) and the first dead row; this module imports nothing
of the package. The post-processing is part of the metric's definition (the min shift of pytorch-grad-cam
is not scale-invariant, so mu depends on it) and is recorded in every result:

    gradcam-lib   ReLU, min-max at map resolution, cv2 INTER_LINEAR resize, min-max again: exactly
                  pytorch-grad-cam's BaseCAM output for one target layer, so numbers compare with the paper
    raw           ReLU and cv2 INTER_LINEAR resize, no shift and no scaling

mu (paper eq. 1) = ||map[dead rows]||_2 / ||map||_2 on the 224x224 map, dead rows 170..223. An all-zero map
has no mu: it is NaN here. The harness scores it by `EMPTY_RULE` (as the uniform map: mu = sqrt(54/224) = 0.491,
what a map with no information gets) and counts it in `n_empty`, so abstaining never beats explaining.

The board's other axes are pure functions here too: `deletion_order` / `deletion_auc` (RISE deletion in the
seen part; with ROAD's fill, most and least relevant first, and their difference `srg`), `rank_correlation` and
`structural_similarity` (the randomisation check, by rank and by magnitude).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

POSTPROCESS = {
    "gradcam-lib": "ReLU; x - min; x / (max + 1e-7) at map resolution; cv2.resize INTER_LINEAR to the input "
                   "size; x - min; x / (max + 1e-7) (pytorch-grad-cam BaseCAM, one target layer)",
    "raw": "ReLU; cv2.resize INTER_LINEAR to the input size; no shift, no scaling",
}
EPS = 1e-7  # pytorch-grad-cam's scale_cam_image


def _minmax(maps: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's scale_cam_image without the resize, vectorised (same float32 operations), in place: the
    caller owns `maps` (a fresh 224x224 array per map costs more in page faults than the arithmetic)."""
    maps -= maps.min(axis=(1, 2), keepdims=True)
    maps /= np.float32(EPS) + maps.max(axis=(1, 2), keepdims=True)
    return maps


def _resize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if maps.shape[1:] == (h, w):
        return maps
    import cv2  # here: reading a record's metric table does not load OpenCV

    out = np.empty((len(maps), h, w), np.float32)  # each map resized straight into its slot (no stack, no copy)
    for i, m in enumerate(maps):
        cv2.resize(m, (w, h), dst=out[i], interpolation=cv2.INTER_LINEAR)
    return out


def postprocess(maps, kind: str = "gradcam-lib", size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """Raw maps (N, h, w) -> (N, *size) float32 maps scored by the metric."""
    if kind not in POSTPROCESS:
        raise ValueError(f"unknown post-processing {kind!r}; expected one of {sorted(POSTPROCESS)}")
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim == 2:
        maps = maps[None]
    maps = np.maximum(maps, 0)  # a new array, which _minmax then changes in place
    if kind == "raw":
        return np.maximum(_resize(maps, size), 0)
    return _minmax(_resize(_minmax(maps), size))


EMPTY_RULE = ("uniform: an all-zero map is scored as the uniform map (mu = sqrt(dead rows / rows), 0.491 for the "
              "paper's wall; deletion in random order; counted in n_empty)")


def uniform_mu(dead_from: int = 170, height: int = 224) -> float:
    """mu of a uniform map: what a map with no information scores (0.491 for the paper's wall)."""
    return ((height - dead_from) / height) ** 0.5


def fill_empty(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(maps with every all-zero map replaced by the uniform map of ones, the (N,) empty mask): `EMPTY_RULE`."""
    empty = is_empty(maps)
    if empty.any():
        maps = maps.copy()
        maps[empty] = 1.0
    return maps, empty


def _as_batch(maps) -> np.ndarray:
    maps = np.asarray(maps, dtype=np.float64)
    return maps[None] if maps.ndim == 2 else maps


def is_empty(maps) -> np.ndarray:
    """(N,) bool: maps with no positive value (no mu, no dead mass)."""
    return ~(_as_batch(maps) > 0).any(axis=(1, 2))


def mu(maps, dead_from: int = 170) -> np.ndarray:
    """Paper eq. (1) per map: L2 norm of rows dead_from.. over the L2 norm of the map; NaN for an empty map."""
    m = _as_batch(maps)
    total = np.sqrt((m * m).sum(axis=(1, 2)))
    dead = np.sqrt((m[:, dead_from:] ** 2).sum(axis=(1, 2)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, dead / np.where(total > 0, total, 1), np.nan)


def dead_mass(maps, dead_from: int = 170) -> np.ndarray:
    """Share of the positive L1 mass behind the wall, per map; NaN for an empty map."""
    m = np.maximum(_as_batch(maps), 0)
    total = m.sum(axis=(1, 2))
    dead = m[:, dead_from:].sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, dead / np.where(total > 0, total, 1), np.nan)


def leaks(maps, dead_from: int = 170) -> np.ndarray:
    """Per map: 1.0 when any saliency behind the wall is positive, else 0.0; NaN for an empty map.
    Its mean over maps is the leak rate."""
    m = _as_batch(maps)
    out = (m[:, dead_from:] > 0).any(axis=(1, 2)).astype(np.float64)
    out[is_empty(m)] = np.nan
    return out


@dataclass(frozen=True)
class Metric:
    """What a record's metric is and how every table, chart and sentence shows it: the one place that says a
    metric's name, label, scale, format and which way is better (records, board, report and CLI read it)."""

    name: str                    # the key in records, rows and aggregates
    label: str                   # a table's column header, scale included ("mu x100")
    title: str                   # in prose and on a chart's axis ("mu behind a hidden wall")
    direction: str | None        # "lower" or "higher" is better; None: a check read against a threshold
    scale: float = 1.0           # shown as scale * value
    fmt: str = ".3f"             # format spec of the shown value
    axis: bool = False           # a board axis beyond mu (schema 2): measured on the images that got the axes
    description: str = ""
    per_image: Callable | None = field(default=None, repr=False, compare=False)  # (maps, dead_from) -> (N,)
    # A re-run (another CPU's kernels, thread count) reproduces the mean and std when within this, absolutely; a
    # method whose maps move with round-off declares how far (`SaliencyMethod.rerun_spread`), which loosens it up
    # to rerun_atol_max. Measured with scripts/kernel_spread.py (docs/leaderboard.md's table).
    rerun_atol: float = 1e-4
    rerun_atol_max: float = 0.05

    @property
    def better(self) -> str:
        """'lower is better' (the only place the phrase is written), or '' for a check."""
        return f"{self.direction} is better" if self.direction else ""

    @property
    def scaled(self) -> str:
        """'x100' when the metric is shown scaled, else ''."""
        return f"x{self.scale:g}" if self.scale != 1 else ""

    def show(self, value, fmt: str | None = None) -> str:
        """A value as shown in tables ("-" when there is none); `fmt` overrides the precision."""
        return "-" if value is None else format(self.scale * value, fmt or self.fmt)

    def cell(self, agg: dict | None) -> str:
        """An aggregate as "mean ± std" at the shown scale; "-" when it has no mean."""
        if not agg or agg.get("mean") is None:
            return "-"
        return f"{self.show(agg['mean'])} ± {self.show(agg.get('std') or 0)}"

    def shown_cell(self, mean: float, std: float) -> str:
        """"mean ± std" of numbers already at the shown scale (a paper's table)."""
        return f"{mean:{self.fmt}} ± {std:{self.fmt}}"


_X100 = {"scale": 100.0, "fmt": ".1f"}
METRICS = {m.name: m for m in (
    Metric("mu", "mu x100", "mu", "lower", **_X100, per_image=mu,
           description="paper eq. 1: the L2 norm of the map behind the wall over the L2 norm of the map"),
    Metric("dead_mass", "dead mass x100", "dead mass", "lower", **_X100, per_image=dead_mass,
           description="the share of the map's positive L1 mass behind the wall"),
    Metric("leak_rate", "leak rate x100", "leak rate", "lower", **_X100, per_image=leaks,
           description="the share of maps with any positive saliency behind the wall"),
    Metric("mu_hidden", "mu hidden x100", "mu behind a hidden wall", "lower", **_X100, axis=True,
           description="mu with the model and image re-oriented so that the wall sits on another side, unknown to "
                       "the method"),
    Metric("deletion_auc", "deletion AUC", "deletion AUC", "lower", axis=True, rerun_atol=1e-3,
           description="AUC of the target probability as the seen pixels are deleted from most to least salient"),
    Metric("morf_auc", "MoRF AUC", "MoRF AUC (ROAD fill)", "lower", axis=True, rerun_atol=1e-3,
           description="AUC of the target probability as the seen pixels are removed from most to least salient, "
                       "each filled by ROAD's noisy linear imputation"),
    Metric("lerf_auc", "LeRF AUC", "LeRF AUC (ROAD fill)", "higher", axis=True, rerun_atol=1e-3,
           description="AUC of the target probability as the seen pixels are removed from least to most salient, "
                       "each filled by ROAD's noisy linear imputation"),
    Metric("srg", "SRG", "symmetric relevance gain", "higher", axis=True, rerun_atol=1e-3,
           description="LeRF AUC minus MoRF AUC (ROAD fill): what the map's order is worth on both ends; about 0 for "
                       "a map with no information; the board's qualification"),
    Metric("rand_corr", "rand. corr", "randomisation correlation", None, axis=True, rerun_atol=1e-3,
           rerun_atol_max=0.1,
           description="Spearman correlation of the map with the map on a re-initialised model over the cells the "
                       "head reads; at or above a threshold the method is model-insensitive"),
    # SSIM's window means move with round-off more than ranks do where a map is nearly flat: 0.007 on the mean of 6
    # GradCAM maps of the mini model between AVX-512 and AVX2 kernels (tests/test_cpu.py)
    Metric("rand_ssim", "rand. SSIM", "randomisation SSIM", None, axis=True, rerun_atol=0.02, rerun_atol_max=0.1,
           description="SSIM of the map with the map on a re-initialised model over the cells the head reads, each "
                       "divided by its maximum (not shifted: a map dominated by a constant stays similar); at or "
                       "above a threshold the method is model-insensitive"),
)}
"""Every metric a record carries, in record order: `tuple(METRICS)` is the names."""

PER_IMAGE = {m.name: m.per_image for m in METRICS.values() if m.per_image}


def per_image(maps, dead_from: int = 170) -> dict[str, np.ndarray]:
    """Every per-image metric of post-processed maps."""
    m = _as_batch(maps)  # once: float64 input passes through the metrics' own _as_batch without a copy
    return {name: fn(m, dead_from) for name, fn in PER_IMAGE.items()}


def deletion_order(maps, seen, seed: int, index) -> np.ndarray:
    """(N, S) flat pixel indices of the seen pixels (`seen`: (H, W) bool) from most to least salient; ties broken
    in a random order seeded by (seed, item index), so a constant map deletes in a random order."""
    m = _as_batch(maps).reshape(len(maps), -1)
    cells = np.flatnonzero(np.asarray(seen).reshape(-1))
    out = np.empty((len(m), cells.size), dtype=np.int64)
    for j, i in enumerate(index):
        perm = np.random.default_rng([int(seed), int(i)]).permutation(cells.size)
        vals = m[j, cells[perm]]
        out[j] = cells[perm[np.argsort(-vals, kind="stable")]]
    return out


def srg(morf_auc, lerf_auc) -> np.ndarray:
    """Symmetric relevance gain (Bluecher et al. 2024) per image: LeRF AUC - MoRF AUC."""
    return np.asarray(lerf_auc, dtype=np.float64) - np.asarray(morf_auc, dtype=np.float64)


def deletion_auc(probs) -> np.ndarray:
    """(N, K + 1) target probabilities after deleting 0, 1/K, ..., K/K of the seen pixels -> trapezoid AUC over
    [0, 1] per image (lower: the map found what the model uses)."""
    p = np.asarray(probs, dtype=np.float64)
    k = p.shape[1] - 1
    return ((p[:, :-1] + p[:, 1:]) / 2).sum(axis=1) / k


def rank_correlation(a, b, cells) -> np.ndarray:
    """Spearman rank correlation per map pair over `cells` ((H, W) bool), ties at their average rank. 1.0 where
    the two maps are identical there (also when constant); 0.0 where only one is constant (no shared ranking)."""
    from scipy.stats import rankdata

    cells = np.asarray(cells).reshape(-1)
    x = _as_batch(a).reshape(len(a), -1)[:, cells]
    y = _as_batch(b).reshape(len(b), -1)[:, cells]
    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx, ry = rx - rx.mean(axis=1, keepdims=True), ry - ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, (rx * ry).sum(axis=1) / np.where(den > 0, den, 1), 0.0)
    return np.where((x == y).all(axis=1), 1.0, np.clip(r, -1.0, 1.0))


SSIM_WINDOW = 7  # scikit-image's defaults (Wang et al. 2004): a 7x7 uniform window, K1 0.01, K2 0.03, sample covariance


def structural_similarity(a, b, cells) -> np.ndarray:
    """SSIM per map pair over the rectangle of `cells` ((H, W) bool, a band of whole rows or columns), each map
    divided by its own maximum there (not shifted: a map dominated by a constant stays that constant, so two of them
    are similar whatever small detail rides on them); an all-zero map is the uniform map (`EMPTY_RULE`). The same
    numbers as `skimage.metrics.structural_similarity(x, y, data_range=1)` on each pair (the tests check it)."""
    cells = np.asarray(cells, dtype=bool)
    rows, cols = np.flatnonzero(cells.any(axis=1)), np.flatnonzero(cells.any(axis=0))
    box = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))

    def scaled(m):
        m = np.maximum(_as_batch(m)[box], 0)
        top = m.max(axis=(1, 2), keepdims=True)
        return np.where(top > 0, m / np.where(top > 0, top, 1), 1.0)

    x, y = scaled(a), scaled(b)
    w = SSIM_WINDOW
    ux, uy, uxx, uyy, uxy = _window_means(np.stack([x, y, x * x, y * y, x * y]), w)
    norm = w * w / (w * w - 1)
    vx, vy, vxy = norm * (uxx - ux * ux), norm * (uyy - uy * uy), norm * (uxy - ux * uy)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(axis=(1, 2))


def _window_means(z: np.ndarray, w: int) -> np.ndarray:
    """The mean of every whole w x w window of z's last two axes (an integral image): the interior of
    scikit-image's uniform filter, which is all that SSIM averages (it crops (w - 1) // 2 on every side)."""
    c = np.zeros((*z.shape[:-2], z.shape[-2] + 1, z.shape[-1] + 1))
    c[..., 1:, 1:] = z.cumsum(axis=-2).cumsum(axis=-1)
    return (c[..., w:, w:] - c[..., :-w, w:] - c[..., w:, :-w] + c[..., :-w, :-w]) / (w * w)


def bootstrap_ci(values, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> list[float] | None:
    """Percentile bootstrap interval of the mean (seeded: the same values give the same interval)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return None
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return [float(lo), float(hi)]


def aggregate(values, resamples: int = 1000, seed: int = 0, empty=None) -> dict:
    """{mean, std, ci95, n, n_empty} of per-image values. NaN entries (schema 1: empty maps) are counted in
    n_empty, not averaged; `empty` (a bool mask) counts maps that were scored by `EMPTY_RULE` (in n and n_empty).
    std is the population std (ddof=0, as numpy's default the paper's `mean +- std` used)."""
    v = np.asarray(values, dtype=np.float64)
    nan = np.isnan(v)
    good = v[~nan]
    n_empty = int(nan.sum()) + (int(np.asarray(empty, dtype=bool)[~nan].sum()) if empty is not None else 0)
    if good.size == 0:
        return {"mean": None, "std": None, "ci95": None, "n": 0, "n_empty": n_empty}
    return {"mean": float(good.mean()), "std": float(good.std()), "ci95": bootstrap_ci(good, resamples, seed),
            "n": int(good.size), "n_empty": n_empty}


def mu_cell(agg: dict | None) -> str:
    """A mu aggregate as "mean ± std" x100 (report and leaderboard tables); "-" when it has no mean."""
    return METRICS["mu"].cell(agg)


RERUN_SIGMAS = 4.0  # a mean of n images moves by about spread / sqrt(n) between CPUs: allow this many times that


def rerun_tolerances(spread: dict | None = None, n: int = 100) -> dict[str, float]:
    """{metric: absolute tolerance} a re-run of a row of n images meets: each metric's own `rerun_atol`, or, for a
    method whose maps move with round-off, RERUN_SIGMAS times its per-image spread between CPU kernel sets
    (`SaliencyMethod.rerun_spread`) over sqrt(n); never above the metric's `rerun_atol_max`."""
    spread = spread if isinstance(spread, dict) else {}  # a plugin's class variable: anything at all

    def declared(name: str) -> float:
        v = spread.get(name)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < float("inf")
        return RERUN_SIGMAS * float(v) / max(int(n), 1) ** 0.5 if ok else 0.0
    return {name: min(max(m.rerun_atol, declared(name)), m.rerun_atol_max) for name, m in METRICS.items()}


def images_phrase(k: int) -> str:
    """'1 image', '20 images'."""
    return f"{k} image" + ("" if k == 1 else "s")
