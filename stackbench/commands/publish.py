"""`stackbench publish dataset|model DIR --repo-id ID`: validate, then one commit to the Hub."""
from __future__ import annotations

import click

from .. import hub


def _options(fn):
    fn = click.option("--dry-run", is_flag=True, help="print what would be sent and exit; no network")(fn)
    fn = click.option("--revision", default=None, metavar="BRANCH", help="branch to commit to (created if missing)")(fn)
    fn = click.option("--private", is_flag=True, help="create the repo private")(fn)
    fn = click.option("--repo-id", required=True, metavar="ID", help="user/name on the Hub")(fn)
    return click.argument("folder", type=click.Path(file_okay=False))(fn)


def _run(plan: hub.Plan, dry_run: bool):
    click.echo(plan.describe())
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
    _run(hub.plan_dataset(folder, repo_id, private, revision), dry_run)


@publish.command("model")
@_options
def publish_model(folder, repo_id, private, revision, dry_run):
    """A model folder written by `stackbench train` or save_pretrained (must pass the wall check)."""
    _run(hub.plan_model(folder, repo_id, private, revision), dry_run)


@publish.command("leaderboard")
@click.option("--repo-id", required=True, metavar="ID", help="user/name of the dataset repo on the Hub")
@click.option("--private", is_flag=True)
@click.option("--revision", default=None, metavar="BRANCH")
@click.option("--dry-run", is_flag=True, help="print what would be sent and exit; no network")
@click.option("--store", type=click.Path(file_okay=False), default=None, help="the leaderboard store [default: ./leaderboard]")
def publish_leaderboard(repo_id, private, revision, dry_run, store):
    """The leaderboard store as a Parquet dataset (every row verified first)."""
    from .. import leaderboard as lb

    _run(hub.plan_leaderboard(lb.resolve_store(store), repo_id, private, revision), dry_run)
