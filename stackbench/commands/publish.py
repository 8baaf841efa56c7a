"""`stackbench publish dataset|model DIR --repo-id ID`: validate, then one commit to the Hub."""
from __future__ import annotations

import click

from .common import option


def repo_id_option(help: str):
    return option("--repo-id", required=True, metavar="ID", help=help)


private_option = click.option("--private", is_flag=True, help="create the repo private")
revision_option = option("--revision", default=None, metavar="REV", help="branch to commit to (created if missing)")
dry_run_option = click.option("--dry-run", is_flag=True, help="print what would be sent and exit; no network")


def _options(fn):
    fn = dry_run_option(fn)
    fn = revision_option(fn)
    fn = private_option(fn)
    fn = repo_id_option("user/name on the Hub")(fn)
    return click.argument("folder", type=click.Path(file_okay=False), metavar="DIR")(fn)


def _run(plan, dry_run: bool):
    """Print a `stackbench.hub.Plan`, then send it unless --dry-run."""
    from .. import hub

    click.echo(str(plan))
    if dry_run:
        click.echo("dry run: nothing sent")
        return
    url = hub.publish(plan)
    click.echo(f"published: {url}")


@click.group()
def publish():
    """Publish dataset and model folders to the Hugging Face Hub (token from HF_TOKEN or `hf auth login`)."""


@publish.command("dataset")
@_options
def publish_dataset(folder, repo_id, private, revision, dry_run):
    """A dataset folder written by `stackbench generate`."""
    from .. import hub

    _run(hub.plan_dataset(folder, repo_id, private, revision), dry_run)


@publish.command("model")
@_options
def publish_model(folder, repo_id, private, revision, dry_run):
    """A model folder written by `stackbench train` or save_pretrained (must pass the wall check)."""
    from .. import hub

    _run(hub.plan_model(folder, repo_id, private, revision), dry_run)


@publish.command("leaderboard")
@repo_id_option("user/name of the dataset repo on the Hub")
@private_option
@revision_option
@dry_run_option
@option("--store", type=click.Path(file_okay=False), default=None, metavar="DIR",
        help="the leaderboard store  [default: ./leaderboard]")
def publish_leaderboard(repo_id, private, revision, dry_run, store):
    """The leaderboard store as a Parquet dataset (every row verified first)."""
    from .. import leaderboard as lb
    from ..leaderboard.hub import plan_leaderboard

    _run(plan_leaderboard(lb.resolve_store(store), repo_id, private, revision), dry_run)
