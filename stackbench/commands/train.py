"""`stackbench train`: thin wrapper over stackbench.train (run it under `accelerate launch` or `torchrun` for
data-parallel training)."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click

from ..train import PRESETS, preset as make_preset, stored_config
from ..train import train as run_training
from .common import SEED


@click.command()
@click.option("--model", "model", metavar="ARCH", help="zoo architecture, randomly initialised (see `stackbench models`)")
@click.option("--source", metavar="SRC", help="training images: shapes[:N][@SEED], imagefolder:PATH or hf:REPO[:CONFIG]")
@click.option("--val-source", metavar="SRC", help="validation images (default: --source)")
@click.option("--train-split", help="split of --source to train on (default: train)")
@click.option("--val-split", help="split of --val-source to validate on (default: val)")
@click.option("--num-classes", type=int, help="head size (default: the source's class count; a mismatch is refused)")
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int, help="global batch, split over the processes")
@click.option("--lr", type=float)
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]))
@click.option("--seed", type=SEED)
@click.option("--preset", type=click.Choice(sorted(PRESETS)),
              help="recipe to start from (default: mini for minivgg models, paper otherwise)")
@click.option("--mixed-precision", type=click.Choice(["auto", "no", "fp16", "bf16"]))
@click.option("--workers", type=int, help="DataLoader workers (default: 0 on CPU, min(8, cores) on CUDA)")
@click.option("--max-steps", type=int, help="stop after this many steps with a checkpoint (continue with --resume)")
@click.option("--save-every", type=int, help="also checkpoint every N steps")
@click.option("--resume", is_flag=True, help="continue the run in --out from its checkpoint")
@click.option("--overwrite", is_flag=True, help="replace the run in --out")
@click.option("--no-progress", is_flag=True, help="no progress bar")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="output folder")
def train(model, source, val_source, train_split, val_split, num_classes, epochs, batch_size, lr, optimizer, seed,
          preset, mixed_precision, workers, max_steps, save_every, resume, overwrite, no_progress, out):
    """Train a walled model on accelerate; write weights, model card, per-epoch log and a resumable checkpoint."""
    overrides = dict(model=model, source=source, val_source=val_source, train_split=train_split,
                     val_split=val_split, num_classes=num_classes, epochs=epochs, batch_size=batch_size, lr=lr,
                     optimizer=optimizer, seed=seed, mixed_precision=mixed_precision, workers=workers,
                     max_steps=max_steps, save_every=save_every)
    given = {k: v for k, v in overrides.items() if v is not None}
    if resume:
        # The run's own settings; anything given must agree (train() names what differs).
        config = dataclasses.replace(stored_config(Path(out)), max_steps=None).replace(**given) if given else None
    else:
        name = preset or ("mini" if (model or "minivgg").startswith("minivgg") else "paper")
        config = make_preset(name, **given)
        if source and not val_source:  # validate on the given source's val split, not on the preset's
            config = dataclasses.replace(config, val_source=None)
    try:
        summary = run_training(config, out, resume=resume, overwrite=overwrite, progress=not no_progress)
    except KeyboardInterrupt:
        sys.exit(130)  # train() saved a checkpoint and said how to resume
    if summary and summary.get("finished") and "metrics" in summary:
        m, w = summary["metrics"], summary["wall"]
        click.echo(f"top-1 {m['top1']:.2%}, top-5 {m['top5']:.2%} on {m['split']}; wall: {w['verdict']} "
                   f"({w['check']}); {summary['timing']['seconds'] / 60:.1f} min; wrote {out}")
