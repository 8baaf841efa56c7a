"""`stackbench models` and `stackbench wall`."""
from __future__ import annotations

import sys

import click
import torch

from ..models import get_entry, list_models, load_model
from ..wall import check, dead_zone
from .common import format_table, model_option, seed_option


def models_rows() -> list[list]:
    rows = []
    for name in list_models():
        entry = get_entry(name)
        with torch.device("meta"):  # shapes only: no memory, no init cost
            m = get_entry(name).fn()
        rows.append([name, f"{m.count_parameters() / 1e6:.1f}M", f"3x{m.input_size[0]}x{m.input_size[1]}",
                     m.wall.describe().split(";")[0], entry.weights.describe() if entry.weights else "no",
                     entry.description])
    return rows


@click.command()
def models():
    """List the model zoo: parameters, input, wall, published weights."""
    click.echo(format_table(models_rows(), ["name", "params", "input", "wall", "weights", "description"]))


@click.command()
@model_option()
@seed_option
@click.option("--traces", type=int, default=4, show_default=True, help="random inputs traced")
@click.option("--device", default="cpu", show_default=True)
def wall(model_ref, seed, traces, device):
    """Trace a model's dead zone and prove it bitwise: noise behind the wall must leave every logit unchanged."""
    model = load_model(model_ref, seed=seed, device=device)
    zone = dead_zone(model, model.input_size, traces=traces, seed=seed)
    result = check(model, model.input_size, seed=seed, zone=zone)
    declared = list(model.wall.dead_rows)
    click.echo(f"model:     {model.ref} ({model.name})")
    click.echo(f"declared:  {model.wall.describe()}")
    click.echo(f"traced:    {zone.describe()} [{traces} traces, seed {seed}]")
    click.echo(f"check:     {result.describe()}")
    ok = result.holds(model.wall)
    if zone.rows != declared:
        click.echo("verdict:   FAIL: traced dead rows differ from the declared wall")
    else:
        click.echo(f"verdict:   {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)
