"""`stackbench evaluate` and `stackbench methods`."""
from __future__ import annotations

import sys

import click

from .common import (
    EVAL_PROCS_HELP,
    METHOD_HELP,
    axes_of,
    axes_option,
    count_option,
    device_option,
    echo_json,
    format_table,
    is_main_process,
    json_option,
    model_option,
    no_progress_option,
    num_proc_option,
    option,
    out_option,
    seed_option,
)


@click.command()
@option("--method", "methods", multiple=True, required=True, metavar="REF",
        help=f"{METHOD_HELP}, or 'all' (repeatable)")
@option("--dataset", required=True, metavar="REF", help="dataset folder or hf:REPO[@REV]")
@model_option()
@option("--target", type=click.Choice(["predicted", "label"]), default="predicted",
        help="class each map explains (the paper: the model's top-1)")
@option("--postprocess", type=click.Choice(["gradcam-lib", "raw"]), default="gradcam-lib",
        help="map post-processing, part of the metric")
@count_option("--batch-size", default=8, help="images per batch")
@count_option("--limit", help="evaluate the first N images only")
@axes_option("all")
@count_option("--axes-images", min=1,
              help="measure the board's axes (hidden wall, deletion, randomisation) on a seeded sample of N images "
                   "only, mu on every image; faster, but a board row needs every image  [default: every image]")
@option("--seconds-per-image", type=click.FloatRange(min=0, min_open=True), default=600.0, metavar="S",
        help="a method's time limit: its row fails if it takes longer for a batch than S per image")
@count_option("--memory-mb", min=1, help="a method's memory limit beyond what its worker starts with  [default: none]")
@device_option("auto: this process' accelerator (under accelerate launch / torchrun), else cuda if present, else cpu")
@num_proc_option(EVAL_PROCS_HELP)
@click.option("--save-maps", is_flag=True, help="also write the post-processed maps (<method>.maps.npz)")
@out_option("output folder", default="results", path=False)
@seed_option()
@no_progress_option
@click.option("--allow-incomplete", is_flag=True, help="evaluate a dataset folder whose generation did not finish")
def evaluate(methods, dataset, model_ref, target, postprocess, batch_size, limit, axes, axes_images,
             seconds_per_image, memory_mb, device, num_proc, save_maps, out, seed, no_progress, allow_incomplete):
    """Score saliency methods by how much of their maps falls behind the wall (mu, paper eq. 1) and on the board's
    axes. Methods run in worker processes (a plugin in one of its own); the scores are computed apart from them.
    A killed run resumes from its last finished chunk of images when given the same command again."""
    from ..evaluate import SUMMARY_HEADERS, summary_notes, summary_rows
    from ..evaluate import evaluate as run_evaluate
    from ..isolation import Limits

    runs = run_evaluate(list(methods), dataset, model_ref, target=target, postprocess=postprocess,
                        batch_size=batch_size, limit=limit, device=device, save_maps=save_maps, out=out, seed=seed,
                        progress=not no_progress, allow_incomplete=allow_incomplete,
                        axes=axes_of(axes, axes_images, "all"),
                        limits=Limits(seconds_per_image=seconds_per_image, memory_mb=memory_mb), num_proc=num_proc)
    if not is_main_process():  # under accelerate launch the main process says it all
        return
    click.echo(format_table(summary_rows(runs), SUMMARY_HEADERS))
    for note in summary_notes(runs):  # the axes' sample; a model near chance
        click.echo(note)
    click.echo(f"records: {out}/<method>.json, per-image rows: {out}/<method>.parquet")
    failed = [r for r in runs if r.status == "failed"]
    for r in failed:
        click.echo(f"error: {r.error}", err=True)
    sys.exit(1 if failed else 0)


def method_rows() -> list[dict]:
    """Every registered method and installed plugin: name, family, needs, the architectures it runs on (vgg, vit),
    reference. Registering the built-ins
    imports torch, not the libraries they wrap (pytorch-grad-cam and captum load on first use)."""
    from ..methods import get_method_class, list_methods
    from ..methods.plugins import entry_point_names

    rows = []
    for name in list_methods():
        cls = get_method_class(name)
        rows.append({"name": name, "family": cls.family, "needs": sorted(cls.needs),
                     "architectures": list(cls.architectures), "reference": cls.reference})
    for name, ep in entry_point_names().items():
        rows.append({"name": name, "family": "entry point", "needs": [], "architectures": [], "reference": ep.value})
    return rows


@click.command()
@json_option
def methods(as_json):
    """List the registered saliency methods and installed plugins."""
    rows = method_rows()
    if as_json:
        echo_json(rows)
        return
    needs = lambda r: "-" if r["family"] == "entry point" else ", ".join(r["needs"])  # noqa: E731
    archs = lambda r: ", ".join(r["architectures"]) or "-"  # noqa: E731
    click.echo(format_table([[r["name"], r["family"], needs(r), archs(r), r["reference"] or "-"] for r in rows],
                            ["method", "family", "needs", "runs on", "reference"]))
