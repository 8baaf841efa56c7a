"""The `stackbench` command: a click group. Each subcommand lives in stackbench/commands/ and stays thin."""
from __future__ import annotations

import os
import sys

import click

from . import __version__
from .commands import COMMANDS
from .errors import Refused, StackbenchError, first_line


class Group(click.Group):
    """No traceback reaches a user: bad input ends as one line naming the input and the fix (exit 2), refused
    checks as one line per problem (exit 1). Anything else is a bug, said in one line as well (exit 1;
    STACKBENCH_DEBUG=1 shows the traceback)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Refused as e:
            for problem in e.problems:
                click.echo(f"error: {problem}", err=True)
            sys.exit(1)
        except StackbenchError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt, SystemExit):
            raise
        except OSError as e:  # the file system or the network said no: name it, no traceback
            click.echo(f"error: {first_line(e)}", err=True)
            sys.exit(2)
        except Exception as e:
            if os.environ.get("STACKBENCH_DEBUG"):
                raise
            click.echo(f"error: unexpected {first_line(e)}; this is a bug in stackbench: please report it "
                       "(STACKBENCH_DEBUG=1 shows the traceback)", err=True)
            sys.exit(1)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110,
                                         "show_default": True})  # one default style, also for commands added later
@click.version_option(__version__, "--version", prog_name="stackbench")
def main():
    """stackbench: does a saliency method highlight what the model cannot see?"""
    from .progress import setup_logging

    setup_logging()  # the library logs through the `stackbench` logger: one handler, plain lines on stderr


for command in COMMANDS:
    main.add_command(command)

if __name__ == "__main__":
    main()
