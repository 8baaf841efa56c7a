"""`stackbench train`: thin wrapper over stackbench.train (run it under `accelerate launch` or `torchrun` for
data-parallel training)."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click

from ..constants import TRAIN_PRESETS
from .common import count_option, no_progress_option, num_proc_option, option, out_option, seed_option

PRESET = " [default: the preset's]"


@click.command()
@option("--model", metavar="REF", help="zoo architecture name, randomly initialised (see `stackbench models`); or "
        "ARCH:PATH / ARCH:hf:REPO, a ViT checkpoint to fine-tune with ARCH's wall")
@option("--source", metavar="SRC", help="training images: shapes[:N][@SEED], imagefolder:PATH or hf:REPO[:CONFIG]")
@option("--val-source", metavar="SRC", help="validation images  [default: --source]")
@option("--train-split", metavar="NAME", help="split of --source to train on  [default: train]")
@option("--val-split", metavar="NAME", help="split of --val-source to validate on  [default: val]")
@count_option("--num-classes",
              help="head size; a mismatch with the source is refused  [default: the source's class count]")
@count_option("--epochs", help=f"passes over the training images {PRESET}")
@count_option("--batch-size", help=f"global batch, split over the processes {PRESET}")
@option("--lr", type=float, help=f"learning rate {PRESET}")
@option("--optimizer", type=click.Choice(["sgd", "adamw"]), help=f"optimizer {PRESET}")
@option("--aux-masks", type=click.FloatRange(min=0), metavar="WEIGHT",
        help="add the per-token object-mask loss with this weight (ViTs; a source that knows its objects' masks, "
        f"such as shapes); 0: off {PRESET}")
@seed_option(f"seed of initialisation, augmentation and shuffling {PRESET}", default=None)
@option("--preset", type=click.Choice(TRAIN_PRESETS), metavar="NAME",
        help=f"recipe to start from ({', '.join(TRAIN_PRESETS)})  [default: mini for minivgg models, mini-vit for "
        "minivit models, paper otherwise]")
@option("--mixed-precision", type=click.Choice(["auto", "no", "fp16", "bf16"]),
        help=f"autocast; auto: fp16 on CUDA, none on CPU {PRESET}")
@num_proc_option("DataLoader worker processes  [default: 0 on CPU, min(8, cores) on CUDA]", default=None)
@count_option("--workers", hidden=True, help="old name of --num-proc (deprecated)")
@count_option("--max-steps", help="stop after this many steps with a checkpoint (continue with --resume)")
@count_option("--save-every", help="also checkpoint every N steps")
@click.option("--resume", is_flag=True, help="continue the run in --out from its checkpoint")
@click.option("--overwrite", is_flag=True, help="replace the run in --out")
@count_option("--log-every", min=1, help="off a terminal, a progress line every N steps  [default: every 30 s]")
@no_progress_option
@out_option("output folder", required=True)
def train(model, source, val_source, train_split, val_split, num_classes, epochs, batch_size, lr, optimizer, aux_masks,
          seed, preset, mixed_precision, num_proc, workers, max_steps, save_every, log_every, resume, overwrite,
          no_progress, out):
    """Train a walled model on accelerate; write weights, model card, per-epoch log and a resumable checkpoint."""
    from ..train import default_preset, stored_config
    from ..train import preset as make_preset
    from ..train import train as run_training

    workers = _num_proc(num_proc, workers)
    overrides = dict(model=model, source=source, val_source=val_source, train_split=train_split,
                     val_split=val_split, num_classes=num_classes, epochs=epochs, batch_size=batch_size, lr=lr,
                     optimizer=optimizer, aux_masks=aux_masks, seed=seed, mixed_precision=mixed_precision,
                     workers=workers,
                     max_steps=max_steps, save_every=save_every)
    given = {k: v for k, v in overrides.items() if v is not None}
    if resume:
        # The run's own settings; anything given must agree (train() names what differs).
        config = dataclasses.replace(stored_config(Path(out)), max_steps=None).replace(**given) if given else None
    else:
        name = preset or default_preset(model)
        config = make_preset(name, **given)
        if source and not val_source:  # validate on the given source's val split, not on the preset's
            config = dataclasses.replace(config, val_source=None)
    try:
        summary = run_training(config, out, resume=resume, overwrite=overwrite, progress=not no_progress,
                               log_every=log_every)
    except KeyboardInterrupt:
        sys.exit(130)  # train() saved a checkpoint and said how to resume
    if summary and summary.get("finished") and "metrics" in summary:
        m, w = summary["metrics"], summary["wall"]
        click.echo(f"top-1 {m['top1']:.2%}, top-5 {m['top5']:.2%} on {m['split']}; wall: {w['verdict']} "
                   f"({w['check']}); {summary['timing']['seconds'] / 60:.1f} min; wrote {out}")


def _num_proc(num_proc: int | None, workers: int | None) -> int | None:
    """--num-proc, or its old name --workers (still read, with a warning on stderr)."""
    if workers is None:
        return num_proc
    if num_proc is not None and num_proc != workers:
        raise click.UsageError(f"--num-proc {num_proc} and --workers {workers} disagree; give --num-proc only "
                               "(--workers is its old name)")
    click.echo("warning: --workers is deprecated; use --num-proc", err=True)
    return workers
