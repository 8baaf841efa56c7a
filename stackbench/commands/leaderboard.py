"""`stackbench submit` and `stackbench leaderboard verify|build|show`."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from .. import leaderboard as lb
from .common import format_table

store_option = click.option("--store", type=click.Path(file_okay=False, path_type=Path), default=None,
                            help="the leaderboard store (a folder with tracks.json)  [default: ./leaderboard]")


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
    """Run the track's official evaluation of a method on both datasets and add it to the store (a plugin file is
    copied into the store's methods/ folder, so anyone can re-run it)."""
    store = lb.resolve_store(store)
    paths = lb.submit(method, track, name=name, author=author, url=url, description=description, replace=replace,
                      store=store, device=device, progress=not no_progress)
    for p in paths:
        click.echo(f"wrote {p} (+ {p.with_suffix('.parquet').name})")
    code = sorted((store / lb.METHODS_DIR / lb.stem_for(name or paths[0].stem)).glob("*"))
    files = " ".join(str(x) for p in paths for x in (p, p.with_suffix(".parquet"))) + "".join(f" {c}" for c in code)
    click.echo("next: stackbench leaderboard build, then commit the rows and the rendered board:")
    click.echo(f"  git add {files} {store / 'README.md'} {store / 'index.html'} {store / 'mu.png'}")


@click.group()
def leaderboard():
    """Verify, render and show the leaderboard store."""


LABEL = {lb.REPRODUCED: "reproduced", lb.FAILED: "FAILED", lb.NOT_RERUN: "not re-run"}


@leaderboard.command()
@click.option("--track", default=None)
@click.option("--method", default=None, help="only rows of this submission name")
@click.option("--no-rerun", is_flag=True, help="check records, rows and pins only; re-run nothing (every row is "
              "reported 'not re-run')")
@click.option("--skip", multiple=True, help="do not re-run these rows (repeatable; e.g. costly methods)")
@click.option("--allow-not-rerun", is_flag=True, help="exit 0 even when rows could not be re-run (they are still "
              "listed)")
@click.option("--device", default="auto", show_default=True)
@store_option
def verify(track, method, no_rerun, skip, allow_not_rerun, device, store):
    """Re-run every stored row. Each row is reproduced (every metric within the tolerance), FAILED (the field and
    both values) or not re-run (the reason). Exit 1 when a row failed or was not re-run (see --allow-not-rerun)."""
    verdicts = lb.verify(track, method, store=store, rerun=not no_rerun, device=device, skip=tuple(skip))
    width = max(len(v) for v in LABEL.values())
    for v in verdicts:
        click.echo(f"{LABEL[v.status]:<{width}}  {v.row}: {v.message}")
    if not verdicts:
        click.echo("no stored rows" + (" match" if track or method else ""))
        sys.exit(1)
    count = {s: sum(v.status == s for v in verdicts) for s in LABEL}
    if no_rerun:
        click.echo(f"{len(verdicts) - count[lb.FAILED]} rows: records, rows and pins check, not re-run (--no-rerun); "
                   f"{count[lb.FAILED]} failed")
        sys.exit(1 if count[lb.FAILED] else 0)
    click.echo(f"{count[lb.REPRODUCED]} reproduced, {count[lb.FAILED]} failed, {count[lb.NOT_RERUN]} not re-run "
               f"(reproduced: every metric within {lb.RERUN_ATOL:g}, the same images)")
    sys.exit(1 if count[lb.FAILED] or (count[lb.NOT_RERUN] and not allow_not_rerun) else 0)


@leaderboard.command()
@store_option
def build(store):
    """Render README.md, index.html and mu.png from the store (refused when a record does not check)."""
    for p in lb.build(store):
        click.echo(f"wrote {p}")


@leaderboard.command()
@click.option("--track", default=None)
@store_option
def show(track, store):
    """Print the board in the terminal (refused when a record does not check)."""
    tracks, boards = lb.load_tracks(store), lb.board(store)
    for t in tracks.values():
        if track and t.name != track:
            continue
        click.echo(f"track {t.name} (model {t.model})")
        for title, part in lb.sections(boards[t.name]):
            click.echo(f"  {title}")
            click.echo(format_table(lb.table_rows(t, part), lb.table_header(t)))
        if not boards[t.name]:
            click.echo("  no submissions yet")
