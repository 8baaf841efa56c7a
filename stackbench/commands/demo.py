"""`stackbench demo` and `stackbench reproduce`."""
from __future__ import annotations

import click

from ..constants import DEMO_AXES, DEMO_IMAGES, QUICK_AXES, QUICK_IMAGES
from .common import (
    EVAL_PROCS_HELP,
    axes_of,
    axes_option,
    count_option,
    device_option,
    dry_run_option,
    no_progress_option,
    num_proc_option,
    option,
    out_option,
)


def _print(result) -> None:
    """Print a `stackbench.demo.Outcome` (None after --dry-run)."""
    if result is None:
        return
    click.echo("")
    click.echo(result.table)
    click.echo("")
    for f in result.findings:
        click.echo(f"- {f}")
    click.echo("")
    for key, path in result.paths.items():
        click.echo(f"{key:>20}: {path}")
    click.echo(f"done in {result.seconds:.0f} s")


@click.command()
@out_option("folder for the datasets, results and report", default="stackbench-demo")
@click.option("--quick", is_flag=True, help=f"{QUICK_IMAGES} images per set instead of {DEMO_IMAGES}")
@count_option("--num-images", min=1, help="images per set (overrides --quick)")
@count_option("--axes-images", min=1,
              help=f"images per set that also get the board's axes (a seeded sample; mu is on every image)  "
                   f"[default: {DEMO_AXES}, {QUICK_AXES} with --quick]")
@option("--model", default="minivgg-masked", metavar="REF", help="the walled model to explain")
@device_option()
@num_proc_option(EVAL_PROCS_HELP)
@dry_run_option
@no_progress_option
def demo(out, quick, num_images, axes_images, model, device, num_proc, dry_run, no_progress):
    """The mini track from nothing: both datasets, the paper's eight methods and four controls, the report."""
    from .. import demo as D

    _print(D.demo(out, quick=quick, model=model, num_images=num_images, device=device, progress=not no_progress,
                  dry_run=dry_run, echo=click.echo, axes_images=axes_images, num_proc=num_proc))


@click.command()
@option("--preset", type=click.Choice(["paper"]), default="paper", metavar="NAME",
        help="recipe for every step (paper: the paper's)")
@option("--imagenet", required=True, metavar="SRC", help="ImageNet as a source: imagefolder:PATH or hf:REPO")
@option("--split", default=None, metavar="NAME", help="the source's validation split (e.g. val for an imagefolder)")
@option("--sd-model", required=True, metavar="REF", help="Stable Diffusion checkpoint (Hub id or folder)")
@option("--model", default=None, metavar="REF", help="the walled model (e.g. paper:params_vgg16_masked.pt)")
@click.option("--train", "do_train", is_flag=True, help="train vgg16-masked with the paper preset instead")
@option("--train-source", default=None, metavar="SRC", help="training source for --train  [default: --imagenet]")
@count_option("--num-images", default=100, min=1, help="images per set")
@axes_option("none (the paper's Table 1 is mu)")
@count_option("--axes-images", min=1,
              help="images per set that also get the board's axes (a seeded sample; implies --axes all)")
@option("--verify-model", default="preset", metavar="REF",
        help="CLIP model for STACK-GEN verification; 'none' to skip it")
@count_option("--steps", help="diffusion steps  [default: the preset's 30]")
@count_option("--gen-size", help="generation size in px  [default: the checkpoint's own]")
@out_option("folder for the datasets, model, results and report", default="stackbench-paper")
@device_option()
@num_proc_option(EVAL_PROCS_HELP)
@dry_run_option
@no_progress_option
def reproduce(preset, imagenet, split, sd_model, model, do_train, train_source, num_images, axes, axes_images,
              verify_model, steps, gen_size, out, device, num_proc, dry_run, no_progress):
    """The paper's pipeline: STACK-MIX from ImageNet, STACK-GEN with SD, the walled VGG16, Table 1."""
    from .. import demo as D

    _print(D.reproduce(imagenet, sd_model, out=out, split=split, model=model, train=do_train,
                       train_source=train_source, num_images=num_images,
                       verify_model=None if verify_model == "none" else verify_model, steps=steps, gen_size=gen_size,
                       device=device, progress=not no_progress, dry_run=dry_run, echo=click.echo,
                       axes=axes_of(axes, axes_images, "none"), num_proc=num_proc))
