"""`stackbench submit` and `stackbench leaderboard verify|build|show`."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import (
    EVAL_PROCS_HELP,
    METHOD_HELP,
    dataset_override_option,
    device_option,
    echo_json,
    format_table,
    json_option,
    no_progress_option,
    num_proc_option,
    option,
)

store_option = option("--store", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
                      help="the leaderboard store (a folder with tracks.json)  [default: ./leaderboard]")


def track_option(help: str, default: str | None = None):
    return option("--track", default=default, metavar="NAME", help=help)


@click.command()
@option("--method", required=True, metavar="REF", help=METHOD_HELP)
@track_option("leaderboard track (see leaderboard/tracks.json)", default="mini")
@option("--name", default=None, metavar="NAME", help="row name on the board  [default: the method's name]")
@option("--author", default=None, help="who made the method (shown on the board)")
@option("--url", default=None, metavar="URL", help="http(s) link to the method's paper or code")
@option("--description", default=None, help="one line about the method (shown on the board)")
@click.option("--replace", is_flag=True, help="overwrite a row of the same name")
@dataset_override_option()
@device_option()
@num_proc_option(EVAL_PROCS_HELP)
@no_progress_option
@store_option
def submit(method, track, name, author, url, description, replace, datasets, device, num_proc, no_progress, store):
    """Run the track's official evaluation of a method on both datasets and add it to the store (a plugin file is
    copied into the store's methods/ folder, so anyone can re-run it). Prints the files to commit and the board's
    rules for a method (forward and backward only; no wall objects, published weights, dataset layout or seeds; no
    change outside its worker, no network; maps a function of inputs and seed) as a checklist for the pull request."""
    from .. import leaderboard as lb

    given, store = store, lb.resolve_store(store)
    new_board = not (store / "tracks.json").is_file()
    paths = lb.submit(method, track, name=name, author=author, url=url, description=description, replace=replace,
                      store=store, device=device, progress=not no_progress, datasets=list(datasets),
                      num_proc=num_proc)
    for p in paths:
        click.echo(f"wrote {p} (+ {p.with_suffix('.parquet').name})")
    code = sorted((store / lb.METHODS_DIR / lb.stem_for(name or paths[0].stem)).glob("*"))
    files = [x for p in paths for x in (p, p.with_suffix(".parquet"))] + code + [store / f for f in lb.RENDERED]
    if new_board:  # the board this submit started: its tracks and the paper's numbers go in too
        files += [store / "tracks.json", store / "reported"]
    build = "stackbench leaderboard build" + (f" --store {_shown(given)}" if given is not None else "")
    click.echo(f"next: {build}, then commit the rows and the rendered board:")
    click.echo("  git add " + " ".join(_shown(f) for f in files))
    click.echo("and put the board's rules in the pull request's description, each one ticked if your method keeps it:")
    click.echo(lb.rules_text())


def _shown(path: Path) -> str:
    """A path as the user would type it here: relative to the working directory when it is under it."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@click.group()
def leaderboard():
    """Verify, render and show the leaderboard store."""


@leaderboard.command()
@track_option("only rows of this track  [default: every track]")
@option("--method", default=None, metavar="NAME", help="only rows of this submission name")
@click.option("--no-rerun", is_flag=True, help="check records, rows and pins only; re-run nothing (every row is "
              "reported 'not re-run')")
@option("--skip", multiple=True, metavar="NAME", help="do not re-run these rows (repeatable; e.g. costly methods)")
@click.option("--allow-not-rerun", is_flag=True, help="exit 0 even when rows could not be re-run (they are still "
              "listed)")
@dataset_override_option()
@device_option()
@no_progress_option
@store_option
def verify(track, method, no_rerun, skip, allow_not_rerun, datasets, device, no_progress, store):
    """Re-run every stored row. Each row is reproduced (every metric within the tolerance), FAILED (the field and
    both values) or not re-run (the reason). Exit 1 when a row failed or was not re-run (see --allow-not-rerun)."""
    from .. import leaderboard as lb

    label = {lb.REPRODUCED: "reproduced", lb.FAILED: "FAILED", lb.NOT_RERUN: "not re-run"}
    verdicts = lb.verify(track, method, store=store, rerun=not no_rerun, device=device, skip=tuple(skip),
                         progress=not no_progress, datasets=list(datasets))
    width = max(len(v) for v in label.values())
    for v in verdicts:
        click.echo(f"{label[v.status]:<{width}}  {v.row}: {v.message}")
    if not verdicts:
        click.echo("no stored rows" + (" match" if track or method else ""))
        sys.exit(1)
    count = {s: sum(v.status == s for v in verdicts) for s in label}
    if no_rerun:
        click.echo(f"{len(verdicts) - count[lb.FAILED]} rows: records, rows and pins check, not re-run (--no-rerun); "
                   f"{count[lb.FAILED]} failed")
        sys.exit(1 if count[lb.FAILED] else 0)
    click.echo(f"{count[lb.REPRODUCED]} reproduced, {count[lb.FAILED]} failed, {count[lb.NOT_RERUN]} not re-run "
               "(reproduced: every metric within its tolerance, the same flags, the same images)")
    badges = verdicts.badges
    click.echo(badges.message)
    for row in badges.forged:
        click.echo(f"refused: verified.json named {row} as reproduced, and this verify re-ran it and did not: a badge "
                   "is written by the board's full verify alone (the entry is gone from the new file)")
    sys.exit(1 if badges.forged or count[lb.FAILED] or (count[lb.NOT_RERUN] and not allow_not_rerun) else 0)


@leaderboard.command()
@store_option
def build(store):
    """Render README.md, index.html and mu.png from the store (refused when a record does not check)."""
    from .. import leaderboard as lb

    for p in lb.build(store):
        click.echo(f"wrote {p}")


@leaderboard.command()
@track_option("only this track  [default: every track]")
@json_option
@store_option
def show(track, as_json, store):
    """Print the board in the terminal (refused when a record does not check)."""
    from .. import leaderboard as lb

    tracks = lb.load_tracks(store)
    shown = [lb.get_track(track, store)] if track else list(tracks.values())  # an unknown track: one line
    boards = lb.board(store)
    if as_json:
        echo_json({t.name: {"model": t.model, "datasets": list(t.datasets), "entries": boards[t.name]}
                   for t in shown})
        return
    for t in shown:
        click.echo(f"track {t.name} (model {t.model})")
        for title, part in lb.sections(boards[t.name]):
            click.echo(f"  {title}")
            click.echo(format_table(lb.table_rows(t, part), lb.table_header(t)))
        if not boards[t.name]:
            click.echo("  no submissions yet")
