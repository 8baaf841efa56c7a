"""`stackbench evaluate` and `stackbench methods`."""
from __future__ import annotations

import sys

import click

from ..evaluate import SUMMARY_HEADERS, evaluate as run_evaluate, sample_note, summary_rows
from .common import format_table, model_option, seed_option


@click.command()
@click.option("--method", "methods", multiple=True, required=True, metavar="M",
              help="registered name, module:attr, path/file.py:attr, entry point, or 'all' (repeatable)")
@click.option("--dataset", required=True, metavar="REF", help="dataset folder or hf:REPO[@REV]")
@model_option()
@click.option("--target", type=click.Choice(["predicted", "label"]), default="predicted", show_default=True,
              help="class each map explains (the paper: the model's top-1)")
@click.option("--postprocess", type=click.Choice(["gradcam-lib", "raw"]), default="gradcam-lib", show_default=True,
              help="map post-processing, part of the metric")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--limit", type=int, default=None, help="evaluate the first N images only")
@click.option("--axes-images", type=click.IntRange(min=1), default=None, metavar="N",
              help="measure the board's axes (hidden wall, deletion, randomisation) on a seeded sample of N images "
                   "only, mu on every image; faster, but a board row needs every image  [default: every image]")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N")
@click.option("--save-maps", is_flag=True, help="also write the post-processed maps (<method>.maps.npz)")
@click.option("--out", default="results", show_default=True, metavar="DIR", help="output folder")
@seed_option
@click.option("--no-progress", is_flag=True, help="no progress bars")
@click.option("--allow-incomplete", is_flag=True, help="evaluate a dataset folder whose generation did not finish")
def evaluate(methods, dataset, model_ref, target, postprocess, batch_size, limit, axes_images, device, save_maps, out,
             seed, no_progress, allow_incomplete):
    """Score saliency methods by how much of their maps falls behind the wall (mu, paper eq. 1) and on the board's
    axes."""
    from ..axes import Axes

    runs = run_evaluate(list(methods), dataset, model_ref, target=target, postprocess=postprocess,
                        batch_size=batch_size, limit=limit, device=device, save_maps=save_maps, out=out, seed=seed,
                        progress=not no_progress, allow_incomplete=allow_incomplete, axes=Axes(sample=axes_images))
    click.echo(format_table(summary_rows(runs), SUMMARY_HEADERS))
    note = sample_note(runs)
    if note:
        click.echo(note)
    click.echo(f"records: {out}/<method>.json, per-image rows: {out}/<method>.parquet")
    failed = [r for r in runs if r.status == "failed"]
    for r in failed:
        click.echo(f"error: {r.error}", err=True)
    sys.exit(1 if failed else 0)


@click.command()
def methods():
    """List the registered saliency methods and installed plugins."""
    from ..methods import get_method_class, list_methods
    from ..methods.plugins import entry_point_names

    rows = []
    for name in list_methods():
        cls = get_method_class(name)
        rows.append([name, cls.family, ", ".join(sorted(cls.needs)), cls.reference or "-"])
    for name, ep in entry_point_names().items():
        rows.append([name, "entry point", "-", ep.value])
    click.echo(format_table(rows, ["method", "family", "needs", "reference"]))
