"""`stackbench submit` and `stackbench leaderboard verify|build|show`."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from .. import leaderboard as lb
from .common import format_table

store_option = click.option("--store", type=click.Path(file_okay=False, path_type=Path), default=lb.STORE,
                            show_default=True, help="the leaderboard store (a folder)")


@click.command()
@click.option("--method", required=True, metavar="REF", help="a registered name, module:attr, path/file.py:attr or entry point")
@click.option("--track", default="mini", show_default=True, help="leaderboard track (see leaderboard/tracks.json)")
@click.option("--name", default=None, help="row name on the board (default: the method's name)")
@click.option("--author", default=None)
@click.option("--url", default=None, help="http(s) link to the method's paper or code")
@click.option("--description", default=None)
@click.option("--replace", is_flag=True, help="overwrite a row of the same name")
@click.option("--device", default="auto", show_default=True)
@click.option("--no-progress", is_flag=True)
@store_option
def submit(method, track, name, author, url, description, replace, device, no_progress, store):
    """Run the track's official evaluation of a method on both datasets and add it to the store."""
    paths = lb.submit(method, track, name=name, author=author, url=url, description=description, replace=replace,
                      store=store, device=device, progress=not no_progress)
    for p in paths:
        click.echo(f"wrote {p} (+ {p.with_suffix('.parquet').name})")
    files = " ".join(str(x) for p in paths for x in (p, p.with_suffix(".parquet")))
    click.echo("next: stackbench leaderboard build, then commit the rows and the rendered board:")
    click.echo(f"  git add {files} {store / 'README.md'} {store / 'index.html'} {store / 'mu.png'}")


@click.group()
def leaderboard():
    """Verify, render and show the leaderboard store."""


@leaderboard.command()
@click.option("--track", default=None)
@click.option("--method", default=None, help="only rows of this submission name")
@click.option("--no-rerun", is_flag=True, help="check records, rows and pins only; do not re-run methods")
@click.option("--skip", multiple=True, help="do not re-run these rows (repeatable; e.g. costly methods)")
@click.option("--device", default="auto", show_default=True)
@store_option
def verify(track, method, no_rerun, skip, device, store):
    """Re-check every stored row; exit 1 naming each row that does not hold."""
    verdicts = lb.verify(track, method, store=store, rerun=not no_rerun, device=device, skip=tuple(skip))
    for v in verdicts:
        click.echo(f"{'ok  ' if v.ok else 'FAIL'} {v.row}: {v.message}")
    bad = [v for v in verdicts if not v.ok]
    click.echo(f"{len(verdicts) - len(bad)} passed, {len(bad)} failed" if verdicts else "no stored rows")
    sys.exit(1 if bad else 0)


@leaderboard.command()
@store_option
def build(store):
    """Render README.md, index.html and mu.png from the store."""
    for p in lb.build(store):
        click.echo(f"wrote {p}")


@leaderboard.command()
@click.option("--track", default=None)
@store_option
def show(track, store):
    """Print the board in the terminal."""
    tracks, boards = lb.load_tracks(store), lb.board(store)
    for t in tracks.values():
        if track and t.name != track:
            continue
        click.echo(f"track {t.name} (model {t.model})")
        header = ["#", "method", *[f"{d} mu x100" for d in t.datasets], "leak x100", "n", "submitted", "source"]
        click.echo(format_table(lb.table_rows(t, boards[t.name]), header) if boards[t.name] else "  no submissions yet")
