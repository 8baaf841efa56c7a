"""`stackbench models` and `stackbench wall`."""
from __future__ import annotations

import sys

import click

from ..constants import ORIENTATION_NAMES
from .common import count_option, device_option, echo_json, format_table, json_option, model_option, option, seed_option


def list_models() -> list[str]:
    """The zoo's names (imported here, not at the top: `stackbench --help` must not import torch)."""
    from ..models import list_models as names

    return names()


def _shapes_only():
    """A torch function mode under which a model is built for its shapes only: every in-place write to a
    parameter (initialisation, zeroing the wall's weights) is skipped, so the weights stay unallocated pages.
    Not torch.device("meta"): meta kernels of ops like `~mask` import torch._dynamo, which costs as much as torch."""
    from torch import nn
    from torch.overrides import TorchFunctionMode

    class ShapesOnly(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            target = args[0] if args else kwargs.get("tensor")  # nn.init's functions take `tensor`
            name = getattr(func, "__name__", "")
            writes = name == "__setitem__" or (name.endswith("_") and not name.startswith("__"))
            if writes and isinstance(target, nn.Parameter):
                return target
            return func(*args, **kwargs)

    return ShapesOnly()


def model_infos() -> list[dict]:
    """Each zoo entry: name, parameters, input shape, wall, published weights, description."""
    from ..models import get_entry

    out = []
    for name in list_models():
        entry = get_entry(name)
        with _shapes_only():
            m = entry.fn()
        out.append({"name": name, "params": m.count_parameters(), "input": [3, *m.input_size],
                    "wall": str(m.wall).split(";")[0],
                    "weights": str(entry.weights) if entry.weights else None, "description": entry.description})
    return out


def models_rows(infos: list[dict] | None = None) -> list[list]:
    return [[i["name"], f"{i['params'] / 1e6:.1f}M", "x".join(map(str, i["input"])), i["wall"], i["weights"] or "no",
             i["description"]] for i in (model_infos() if infos is None else infos)]


@click.command()
@json_option
def models(as_json):
    """List the model zoo: parameters, input, wall, published weights."""
    infos = model_infos()
    if as_json:
        echo_json(infos)
        return
    click.echo(format_table(models_rows(infos), ["name", "params", "input", "wall", "weights", "description"]))


def wall_report(model, traces: int = 4, seed: int = 0, orientations=None) -> list[dict]:
    """For each orientation (default: all 8), the model re-oriented by its weights: the declared zone, the traced
    one and the bitwise check. A notebook can call this with a loaded model."""
    from ..models.variants import orient
    from ..wall import check, dead_zone

    out = []
    for g in orientations or list(ORIENTATION_NAMES):
        m = model if g == "identity" else orient(model, g)
        zone = dead_zone(m, m.input_size, traces=traces, seed=seed)
        result = check(m, m.input_size, seed=seed, zone=zone)
        out.append({"orientation": g, "declared": str(m.wall), "traced": str(zone),
                    "check": str(result), "matches": zone.matches(m.wall), "holds": result.holds(m.wall)})
    return out


@click.command()
@model_option()
@seed_option()
@count_option("--traces", default=4, min=1, help="random inputs traced")
@option("--orientation", type=click.Choice(["all", *ORIENTATION_NAMES]), default="identity",
        help="re-orient the model by its weights first (the wall moves to the top, left or right); all: the 8")
@device_option()
def wall(model_ref, seed, traces, orientation, device):
    """Trace a model's dead zone and prove it bitwise: noise behind the wall must leave every logit unchanged."""
    from ..models import load_model
    from ..refs import pick_device

    model = load_model(model_ref, seed=seed, device=pick_device(device))
    click.echo(f"model:     {model.ref} ({model.name})")
    ok = True
    for r in wall_report(model, traces, seed, list(ORIENTATION_NAMES) if orientation == "all" else [orientation]):
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
