"""`stackbench theory alpha` and `stackbench theory bound`: Section 2 of the paper checked by computation."""
from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import click

from ..errors import StackbenchError
from .common import count_option, format_table, option, out_option, seed_option


def _progress():
    from tqdm.auto import tqdm

    return partial(tqdm, leave=False, dynamic_ncols=True)


def _image(image_path, digit):
    from .. import theory

    if image_path is not None and digit is not None:
        raise StackbenchError("--image and --digit both given; pick one")
    if image_path is not None:
        return theory.load_image(image_path)
    return theory.digit_image(0 if digit is None else digit)


def image_options(f):
    f = count_option("--digit", help="item N of scikit-learn's bundled handwritten digits, as a 29x29 MNIST-like "
                     "image  [default: 0]")(f)
    return option("--image", "image_path", type=click.Path(dir_okay=False), default=None, metavar="PATH",
                  help="a grayscale image (bright digit on dark), resized to 29x29")(f)


def _fmt(x, spec=".3g"):
    return "-" if x is None else format(x, spec)


@click.group()
def theory():
    """Section 2 of the paper, checked: Proposition 2.1 (closed-form alpha) and Theorem 1 (GradCAM behind the wall)."""


@theory.command()
@image_options
@count_option("--layers", "-L", multiple=True, default=(1, 2, 3), help="dense layers L (repeat the option for several)")
@count_option("--filters", default=8, help="conv filters V (> 1)")
@count_option("--hidden", default=32, help="width of the hidden dense layers")
@count_option("--trials", default=100, help="random initialisations per L")
@option("--tau", type=float, default=1.0, help="initialisation scale: weights ~ N(0, tau^2)")
@seed_option("seed of the random initialisations")
@option("--tol", type=float, default=1e-5, help="largest relative error that passes")
@out_option("folder for alpha.json", default="stackbench-theory")
def alpha(image_path, digit, layers, filters, hidden, trials, tau, seed, tol, out):
    """Proposition 2.1's closed-form alpha against autograd's GAP of the gradient, for each L."""
    from .. import theory
    from ..datafolder import atomic_write_json

    image, info = _image(image_path, digit)
    report = theory.alpha_check(image, layers, filters, hidden, trials, tau, seed, tol=tol, progress=_progress())
    report["image"] = {**info, "sha256": theory.image_sha256(image)}
    path = Path(out) / "alpha.json"
    atomic_write_json(path, report)
    click.echo(f"[CNN]: V={filters} filters 2x2, 29x29 input, hidden width {hidden}, float64; "
               f"{trials} initialisations x 4 inputs per L (seed {seed})")
    click.echo(format_table([[r["layers"], r["evaluations"], f"{r['max_rel_err']:.2e}", f"{r['median_rel_err']:.2e}",
                              f"{r['median_max_abs_alpha']:.3g}"] for r in report["results"]],
                            ["L", "alphas compared", "max rel. error", "median rel. error", "median max |alpha|"]))
    click.echo(f"wrote:   {path}")
    verdict = "PASS" if report["passed"] else "FAIL"
    click.echo(f"verdict: {verdict} (max relative error {report['max_rel_err']:.2e}, tol {tol:g})")
    sys.exit(0 if report["passed"] else 1)


@theory.command()
@image_options
@count_option("--filters", multiple=True, default=(21, 64, 256),
              help="conv filters V (repeat the option for several); Theorem 1 needs V > 20")
@option("--tau", type=float, default=1.0, help="initialisation scale: weights ~ N(0, tau^2)")
@count_option("--trials", default=2000, help="Monte Carlo initialisations T per V")
@seed_option("seed of the Monte Carlo initialisations")
@out_option("folder for bound.json and bound.png", default="stackbench-theory")
def bound(image_path, digit, filters, tau, trials, seed, out):
    """Theorem 1: Monte Carlo of E[GradCAM] over T initialisations (L = 1) beside the paper's lower bound."""
    from .. import theory
    from ..datafolder import atomic_write_bytes, atomic_write_json
    from ..theory_figures import bound_figure_png

    image, info = _image(image_path, digit)
    report = theory.bound_report(image, info, filters, trials, tau, seed, progress=_progress())
    geom = report["config"]["geometry"]
    out = Path(out)
    atomic_write_json(out / "bound.json", report)
    atomic_write_bytes(out / "bound.png", bound_figure_png(report, image.numpy()))

    src = f"digit #{info['index']} (label {info['label']})" if "label" in info else info["source"]
    h, w = geom["conv_size"]
    hp, wp = geom["pooled_size"]
    r0, r1 = geom["masked_pooled_rows"]
    click.echo(f"image:   {src}, 29x29; conv map {h}x{w}, pooled {hp}x{wp}, pooled rows {r0}..{r1} masked "
               f"(image rows {geom['wall']['dead_from']}..28 unseen; GradCAM rows {geom['behind_wall_conv_rows'][0]}.."
               f"{h - 1} behind the wall)")
    click.echo(f"setting: L=1, tau={tau:g}, T={trials}, seed {seed}; pixels with a non-zero patch: "
               f"{report['results'][0]['pixels_nonzero_patch']} of {h * w}")
    rows = []
    for r in report["results"]:
        bw, fr = r["behind_wall"], r["in_front"]
        rows.append([r["filters"], "yes" if r["bound_claimed"] else "no (V <= 20)",
                     _fmt(r["share_mean_ge_bound_3se"] and 100 * r["share_mean_ge_bound_3se"], ".1f"),
                     _fmt(r["min_mean_over_bound"]), _fmt(r["exact_over_bound"]), _fmt(r["max_abs_z_vs_exact"], ".2f"),
                     _fmt(bw["share_positive_mean"] and 100 * bw["share_positive_mean"], ".1f"),
                     _fmt(bw["mean_gradcam"], ".4g"), _fmt(fr["mean_gradcam"], ".4g")])
    click.echo(format_table(rows, ["V", "bound claimed", "% mean >= bound (3 SE)", "min mean/bound",
                                   "exact/bound", "max |z| vs exact", "% behind wall > 0", "mean GC behind",
                                   "mean GC in front"]))
    for r in report["results"]:
        if not r["bound_claimed"]:
            click.echo(f"note:    V={r['filters']}: {r['bound_note']}; the Monte Carlo and exact columns still apply")
    click.echo(f"wrote:   {out / 'bound.json'}, {out / 'bound.png'}")
    passed = report["passed"]
    if passed is None:
        click.echo("verdict: no bound claimed (Theorem 1 needs V > 20); nothing to check")
    elif passed:
        click.echo("verdict: PASS: Monte Carlo mean >= Theorem 1's bound at every pixel with a non-zero patch, "
                   "within 3 standard errors")
    else:
        click.echo("verdict: FAIL: the Monte Carlo mean is below Theorem 1's bound by more than 3 standard errors "
                   "somewhere")
    sys.exit(1 if passed is False else 0)
