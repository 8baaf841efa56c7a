"""The command-line reference page of the manual (`docs/cli.md`): every command's help as `--help` prints it, so
the page cannot drift from the CLI (tests/test_docs.py writes it anew and compares)."""
from __future__ import annotations

import click

INTRO = ("# Command-line reference\n\nEvery command and option, as `stackbench COMMAND --help` prints it. This page "
         "is generated: `python -m stackbench.commands.reference > docs/cli.md`.\n")


def _contexts(ctx: click.Context):
    """The context of every command below `ctx`'s group, depth first, in the CLI's order."""
    for name, cmd in ctx.command.commands.items():
        sub = click.Context(cmd, info_name=name, parent=ctx)
        yield sub
        if isinstance(cmd, click.Group):
            yield from _contexts(sub)


def _root() -> click.Context:
    from ..cli import main

    # the CLI's own settings (-h, defaults shown), at a fixed width: the page is the same on every terminal
    return click.Context(main, info_name="stackbench", **{**main.context_settings, "terminal_width": 110})


def page() -> str:
    parts = [INTRO]
    for ctx in _contexts(_root()):
        level = "#" * (ctx.command_path.count(" ") + 1)
        parts.append(f"{level} `{ctx.command_path}`\n\n```text\n{ctx.command.get_help(ctx)}\n```\n")
    return "\n".join(parts)


def commands() -> list[str]:
    """Every command's full name (`stackbench evaluate`, `stackbench leaderboard verify`, ...)."""
    return [ctx.command_path for ctx in _contexts(_root())]


def help_of(command: str) -> str:
    """The help of one command, by its full name."""
    return next(ctx.command.get_help(ctx) for ctx in _contexts(_root()) if ctx.command_path == command)


if __name__ == "__main__":
    print(page(), end="")
