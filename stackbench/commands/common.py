"""What the commands share: table printing and the option builders, so one kind of value reads the same in every
command: REF (a model, method or dataset reference), SRC (an image source), DIR (a folder), PATH (a file), N (a
count or a size), SEED, DEVICE.

This module and every command module import only click and light modules at their top: `stackbench --help` must
not pay for torch. Library imports go inside the command functions."""
from __future__ import annotations

import json
from typing import Sequence

import click

from ..present.tables import text_table

MODEL_HELP = "NAME, NAME@random, PATH (save_pretrained folder), hf:REPO[@REV] or paper:PATH"
METHOD_HELP = "registered name, module:attr, path/file.py:attr or entry point (see `stackbench methods`)"
DEVICE_HELP = "auto (cuda if present, else cpu), cpu, cuda or cuda:N"

# Seeds feed numpy's SeedSequence and torch.manual_seed: whole numbers from 0 to 2**63 - 1.
class _SeedRange(click.IntRange):
    """A seed: any whole number numpy and torch take; the help says so briefly, not with 19 digits."""

    def _describe_range(self) -> str:
        return "0 to 2**63-1"


SEED = _SeedRange(0, 2**63 - 1)


def format_table(rows: Sequence[Sequence], headers: Sequence[str]) -> str:
    """A plain, aligned text table (also valid GitHub Markdown): the board's and the report's Markdown table
    writer, padded."""
    return text_table(headers, rows)


def echo_json(value) -> None:
    """`--json`: one JSON document on stdout and nothing else (values JSON lacks, e.g. paths, as strings)."""
    click.echo(json.dumps(value, indent=2, default=str))


def option(*decls, **attrs):
    """click.option with the house defaults: a shown default (one default style everywhere)."""
    attrs.setdefault("show_default", True)
    return click.option(*decls, **attrs)


def count_option(*decls, help: str, default: int | None = None, min: int | None = None, **attrs):
    """An integer count or size: metavar N; `min` bounds it (a usage error below it)."""
    kind = int if min is None else click.IntRange(min=min)
    return option(*decls, type=kind, default=default, metavar="N", help=help, **attrs)


def model_option(required: bool = True, default: str | None = None, help: str = MODEL_HELP):
    return option("--model", "model_ref", required=required and default is None, default=default, metavar="REF",
                  help=help)


def seed_option(help: str = "seed for NAME@random initialisation and for tracing",
                default: int | None = 0):
    return option("--seed", type=SEED, default=default, metavar="SEED", help=help)


def device_option(help: str = DEVICE_HELP):
    return option("--device", default="auto", metavar="DEVICE", help=help)


def out_option(help: str, default: str | None = None, required: bool = False, path: bool = True):
    """An output folder. `path=False` keeps a plain string (a command that checks the folder itself)."""
    kind = click.Path(file_okay=False) if path else str
    return option("--out", type=kind, default=default, required=required, metavar="DIR", help=help)


def axes_option(default: str):
    """`--axes all|none`: the board's axes on every image, or the paper's protocol (mu alone)."""
    return option("--axes", type=click.Choice(["all", "none"]), default=None, show_default=False,
                  help="all: the board's axes (hidden wall, deletion, randomisation) too; none: the paper's "
                       f"protocol, mu and its companions alone (not a board row)  [default: {default}]")


def axes_of(choice: str | None, images: int | None, default: str):
    """`--axes` and `--axes-images` -> a stackbench.axes.Axes; the two are refused together with none."""
    from ..axes import Axes
    from ..errors import StackbenchError

    if images is not None and choice == "none":
        raise StackbenchError(f"--axes none measures no axes; drop --axes-images {images} (or give --axes all)")
    return Axes(sample=images) if images is not None else Axes.of(choice or default)


EVAL_PROCS_HELP = ("processes that share the images, the CPU threads split among them (several GPUs: one each); the "
                   "rows are one process' with that many threads. Many machines or GPUs: accelerate launch -m "
                   "stackbench evaluate")


def is_main_process() -> bool:
    """Not one of accelerate's other processes (they do their share and say nothing)."""
    import os

    return os.environ.get("RANK", "0") == "0"


def num_proc_option(help: str, default: int | None = 1):
    """Parallelism has one name, `--num-proc` (as in `datasets`)."""
    return count_option("--num-proc", default=default, help=help)


class _NameRef(click.ParamType):
    """NAME=REF (a repeatable option's one value) -> (name, ref)."""

    name = "NAME=REF"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        name, eq, ref = str(value).partition("=")
        if not eq or not name or not ref:
            self.fail(f"{value!r}: write NAME=REF, e.g. stack-mix=path/to/folder or stack-mix=hf:REPO@REV", param, ctx)
        return name, ref


def dataset_override_option(help: str = "use this copy of the track's dataset NAME (a folder or hf:REPO@REV) instead "
                            "of regenerating it; used only when its fingerprint is the track's pin (repeatable)"):
    return click.option("--dataset", "datasets", multiple=True, type=_NameRef(), metavar="NAME=REF", help=help)


no_progress_option = click.option("--no-progress", is_flag=True, help="no progress bars")
dry_run_option = click.option("--dry-run", is_flag=True, help="print the steps with estimated costs and stop")
json_option = click.option("--json", "as_json", is_flag=True,
                           help="print JSON on stdout instead of the table (nothing else goes to stdout)")
