"""What the commands share: table printing and common options."""
from __future__ import annotations

from typing import Sequence

import click


def format_table(rows: Sequence[Sequence], headers: Sequence[str]) -> str:
    """A plain, aligned text table (also valid GitHub Markdown)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]])


def model_option(required: bool = True, default: str | None = None):
    return click.option("--model", "model_ref", required=required and default is None, default=default,
                        metavar="REF", help="NAME, NAME@random, PATH (save_pretrained folder), hf:REPO[@REV] or paper:PATH")


# Seeds feed numpy's SeedSequence and torch.manual_seed: whole numbers from 0 to 2**63 - 1.
SEED = click.IntRange(0, 2**63 - 1)
seed_option = click.option("--seed", type=SEED, default=0, show_default=True,
                           help="seed for NAME@random initialisation and for tracing")
