"""`stackbench models` and `stackbench wall`."""
from __future__ import annotations

import sys

import click
import torch

from ..models import get_entry, list_models, load_model
from ..wall import ORIENTATIONS, check, dead_zone
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


def wall_report(model, traces: int = 4, seed: int = 0, orientations=None) -> list[dict]:
    """For each orientation (default: all 8), the model re-oriented by its weights: the declared zone, the traced
    one and the bitwise check. A notebook can call this with a loaded model."""
    from ..models.variants import orient

    out = []
    for g in orientations or list(ORIENTATIONS):
        m = model if g == "identity" else orient(model, g)
        zone = dead_zone(m, m.input_size, traces=traces, seed=seed)
        result = check(m, m.input_size, seed=seed, zone=zone)
        out.append({"orientation": g, "declared": m.wall.describe(), "traced": zone.describe(),
                    "check": result.describe(), "matches": zone.matches(m.wall), "holds": result.holds(m.wall)})
    return out


@click.command()
@model_option()
@seed_option
@click.option("--traces", type=click.IntRange(min=1), default=4, show_default=True, help="random inputs traced")
@click.option("--orientation", type=click.Choice(["all", *ORIENTATIONS]), default="identity", show_default=True,
              help="re-orient the model by its weights first (the wall moves to the top, left or right); all: the 8")
@click.option("--device", default="cpu", show_default=True)
def wall(model_ref, seed, traces, orientation, device):
    """Trace a model's dead zone and prove it bitwise: noise behind the wall must leave every logit unchanged."""
    model = load_model(model_ref, seed=seed, device=device)
    click.echo(f"model:     {model.ref} ({model.name})")
    ok = True
    for r in wall_report(model, traces, seed, list(ORIENTATIONS) if orientation == "all" else [orientation]):
        click.echo(f"orientation {r['orientation']}")
        click.echo(f"  declared:  {r['declared']}")
        click.echo(f"  traced:    {r['traced']} [{traces} traces, seed {seed}]")
        click.echo(f"  check:     {r['check']}")
        if not r["matches"]:
            click.echo("  verdict:   FAIL: the traced dead rows and columns differ from the declared wall")
        else:
            click.echo(f"  verdict:   {'PASS' if r['holds'] else 'FAIL'}")
        ok = ok and r["matches"] and r["holds"]
    sys.exit(0 if ok else 1)
