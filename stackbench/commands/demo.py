"""`stackbench demo` and `stackbench reproduce`."""
from __future__ import annotations

import click

from .. import demo as D


def _print(result: D.Outcome | None) -> None:
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
@click.option("--out", default="stackbench-demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--quick", is_flag=True, help=f"{D.QUICK_IMAGES} images per set instead of {D.DEMO_IMAGES}")
@click.option("--num-images", type=int, default=None, help="images per set (overrides --quick)")
@click.option("--axes-images", type=click.IntRange(min=1), default=None, metavar="N",
              help=f"images per set that also get the board's axes (a seeded sample; mu is on every image)  "
                   f"[default: {D.DEMO_AXES}, {D.QUICK_AXES} with --quick]")
@click.option("--model", default="minivgg-masked", show_default=True, help="the walled model to explain")
@click.option("--device", default="auto", show_default=True)
@click.option("--dry-run", is_flag=True, help="print the steps with estimated costs and stop")
@click.option("--no-progress", is_flag=True)
def demo(out, quick, num_images, axes_images, model, device, dry_run, no_progress):
    """The mini track from nothing: both datasets, the paper's eight methods and four controls, the report."""
    _print(D.demo(out, quick=quick, model=model, num_images=num_images, device=device, progress=not no_progress,
                  dry_run=dry_run, echo=click.echo, axes_images=axes_images))


@click.command()
@click.option("--preset", type=click.Choice(["paper"]), default="paper", show_default=True)
@click.option("--imagenet", required=True, metavar="SRC", help="ImageNet as a source: imagefolder:PATH or hf:REPO")
@click.option("--split", default=None, help="the source's validation split (e.g. val for an imagefolder)")
@click.option("--sd-model", required=True, metavar="REF", help="Stable Diffusion checkpoint (Hub id or folder)")
@click.option("--model", default=None, metavar="REF", help="the walled model (e.g. paper:params_vgg16_masked.pt)")
@click.option("--train", "do_train", is_flag=True, help="train vgg16-masked with the paper preset instead")
@click.option("--train-source", default=None, metavar="SRC", help="training source for --train (default: --imagenet)")
@click.option("--num-images", type=int, default=100, show_default=True)
@click.option("--axes-images", type=click.IntRange(min=1), default=None, metavar="N",
              help="images per set that also get the board's axes (a seeded sample)  [default: every image]")
@click.option("--verify-model", default="preset", show_default=True,
              help="CLIP model for STACK-GEN verification; 'none' to skip it")
@click.option("--steps", type=int, default=None, help="diffusion steps (default: the preset's 30)")
@click.option("--gen-size", type=int, default=None, help="generation size (default: the checkpoint's own)")
@click.option("--out", default="stackbench-paper", show_default=True, type=click.Path(file_okay=False))
@click.option("--device", default="auto", show_default=True)
@click.option("--dry-run", is_flag=True, help="print every step with its estimated cost and stop")
@click.option("--no-progress", is_flag=True)
def reproduce(preset, imagenet, split, sd_model, model, do_train, train_source, num_images, axes_images, verify_model,
              steps, gen_size, out, device, dry_run, no_progress):
    """The paper's pipeline: STACK-MIX from ImageNet, STACK-GEN with SD, the walled VGG16, Table 1."""
    _print(D.reproduce(imagenet, sd_model, out=out, split=split, model=model, train=do_train,
                       train_source=train_source, num_images=num_images,
                       verify_model=None if verify_model == "none" else verify_model, steps=steps, gen_size=gen_size,
                       device=device, progress=not no_progress, dry_run=dry_run, echo=click.echo,
                       axes_images=axes_images))
