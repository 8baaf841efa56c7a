"""The `stackbench` command: a click group. Each subcommand lives in stackbench/commands/ and stays thin."""
from __future__ import annotations

import sys

import click

from . import __version__
from .commands import COMMANDS
from .errors import StackbenchError


class Group(click.Group):
    """Bad input ends as one line naming the input and the fix, not a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except StackbenchError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, "--version", prog_name="stackbench")
def main():
    """stackbench: does a saliency method highlight what the model cannot see?"""


for command in COMMANDS:
    main.add_command(command)

if __name__ == "__main__":
    main()
