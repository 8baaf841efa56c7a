"""`stackbench generate stack-mix` and `stackbench generate stack-gen`: build a dataset folder, then print a summary."""
from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..constants import SOURCE_HELP
from .common import count_option, device_option, no_progress_option, num_proc_option, option, out_option, seed_option

if TYPE_CHECKING:
    from ..generate.writer import WriteResult

MAX_LISTED = 20


@click.group()
def generate():
    """Build the evaluation datasets (STACK-MIX, STACK-GEN) as dataset folders."""


def writer_options(f):
    """Options every generator shares (the writer's)."""
    for opt in reversed([
        out_option("dataset folder to write", required=True),
        num_proc_option("worker processes (CPU cores)"),
        count_option("--shard-size", default=500, help="rows per Parquet shard"),
        click.option("--overwrite", is_flag=True, help="replace a folder that holds a different recipe"),
        no_progress_option,
    ]):
        f = opt(f)
    return f


def print_summary(result: WriteResult) -> None:
    g = result.generation
    reused = result.n_shards - result.built_shards
    click.echo(f"wrote:     {result.n_rows} images to {result.folder} ({result.n_shards} shards: "
               f"{result.built_shards} built, {reused} reused)")
    click.echo(f"time:      {result.seconds:.1f} s for {result.built_items} items, "
               f"{result.images_per_s:.1f} images/s")
    src = g["source"]
    detail = ", ".join(f"{k} {src[k]}" for k in ("split", "n_items", "revision", "version") if src.get(k) is not None)
    click.echo(f"source:    {src['ref']}{f' ({detail})' if detail else ''}; "
               f"{len(g.get('classes_used', []))} classes used")
    skipped = g.get("skipped", [])
    click.echo(f"skipped:   {len(skipped)} input(s)")
    for s in skipped[:MAX_LISTED]:
        click.echo(f"  {s['path']}: {s['reason']}")
    if len(skipped) > MAX_LISTED:
        click.echo(f"  ... {len(skipped) - MAX_LISTED} more in {result.folder}/generation.json")
    for s in g.get("skipped_classes", []):
        click.echo(f"  class {s['class']!r} skipped: {s['reason']}")
    for d in g.get("dropped", []):
        click.echo(f"  item {d['index']} dropped: {d['reason']}")
    if g.get("converted"):
        click.echo("converted: " + ", ".join(f"{m}->RGB x{k}" for m, k in g["converted"].items()) + " (inputs used)")
    click.echo(f"fingerprint: {g['fingerprint']}")


@generate.command("stack-mix")
@option("--preset", default=None, metavar="NAME", help="defaults from generation/stack-mix/NAME.json (paper, mini); "
        "options given here override them")
@option("--source", default=None, metavar="SRC", help=f"image source: {SOURCE_HELP}  [default: shapes]")
@option("--split", default=None, metavar="NAME", help="source split (imagefolder sub-folder, datasets split, shapes "
        "train/val/test)")
@count_option("--num-images", help="number of images  [default: 100]")
@count_option("--per-class", help="images per class (instead of --num-images)")
@option("--classes", default=None, metavar="LIST|FILE",
        help="comma-separated class names/indices, or a file with one per line (e.g. generation/classes/)")
@option("--layout", type=click.Choice(["cut", "fit"]), default=None,
        help="cut: the paper's CutMix rows; fit: the whole second image in the band  [default: cut]")
@seed_option("recipe seed  [default: 0]", default=None)
@option("--format", "fmt", type=click.Choice(["png", "jpeg"]), default=None, help="image encoding  [default: png]")
@count_option("--min-size", min=0,
              help="skip inputs smaller than this per side, in px (0: keep every size)  [default: 64]")
@click.option("--allow-repeats", is_flag=True, help="allow more images than the source gives before it uses an "
              "image twice")
@writer_options
def stack_mix(preset, source, split, num_images, per_class, classes, layout, seed, fmt, min_size, allow_repeats, out,
              num_proc, shard_size, overwrite, no_progress):
    """STACK-MIX: two same-class images stacked, one behind the wall."""
    from ..generate import load_preset
    from ..generate.stackmix import StackMixRecipe, generate_stack_mix

    given = {"source": source, "split": split, "num_images": num_images, "per_class": per_class,
             "classes": classes, "layout": layout, "seed": seed, "format": fmt, "min_size": min_size}
    fields = load_preset("stack-mix", preset) if preset else {}
    if num_images is not None or per_class is not None:  # a count given here replaces the preset's count
        fields.pop("num_images", None), fields.pop("per_class", None)
    fields.update({k: v for k, v in given.items() if v is not None})
    result = generate_stack_mix(out, StackMixRecipe.from_fields(fields), num_proc=num_proc, shard_size=shard_size,
                                overwrite=overwrite, progress=not no_progress, allow_repeats=allow_repeats)
    print_summary(result)


@generate.command("stack-gen")
@option("--preset", default=None, metavar="NAME", help="defaults from generation/stack-gen/NAME.json (paper, mini); "
        "options given here override them")
@option("--generator", type=click.Choice(["shapes", "diffusers"]), default=None,
        help="shapes: the embedded scene renderer; diffusers: a Stable Diffusion checkpoint  [default: shapes]")
@option("--model", default=None, metavar="REF", help="diffusers: Hub id or local folder (SD 1.x/2.x)")
@option("--revision", default=None, metavar="REV", help="diffusers: Hub revision of --model")
@option("--classes", default=None, metavar="LIST|FILE",
        help="class names, comma-separated or a file  [default: shapes' ten / generation/classes/imagenette.txt]")
@count_option("--num-images", help="number of images  [default: 100]")
@seed_option("recipe seed  [default: 0]", default=None)
@count_option("--steps", help="diffusers: denoising steps  [default: 30]")
@option("--guidance", type=float, default=None, help="diffusers: classifier-free guidance  [default: 7.5]")
@count_option("--gen-size", help="generation size in px  [default: the checkpoint's own]")
@count_option("--batch-size", help="images per pipeline call  [default: 1]")
@option("--prompts", default=None, metavar="NAME|FILE",
        help="prompt templates: generation/stack-gen/prompts/NAME.json or a JSON file  [default: default]")
@click.option("--verify", is_flag=True, help="score both object crops with a zero-shot CLIP model")
@option("--verify-model", default=None, metavar="REF",
        help="CLIP checkpoint for --verify (Hub id or folder)  [default: openai/clip-vit-base-patch32]")
@option("--min-verify", type=float, default=None, metavar="SCORE",
        help="keep only items whose two crops CLIP scores at least SCORE (0 to 1); others are regenerated "
             "deterministically")
@count_option("--max-attempts", help="attempts per item under --min-verify  [default: 8]")
@option("--format", "fmt", type=click.Choice(["png", "jpeg"]), default=None, help="image encoding  [default: png]")
@device_option("auto: this process' accelerator (under accelerate launch / torchrun), else cuda if present, else cpu")
@writer_options
def stack_gen(preset, generator, model, revision, classes, num_images, seed, steps, guidance, gen_size, batch_size,
              prompts, verify, verify_model, min_verify, max_attempts, fmt, device, out, num_proc, shard_size,
              overwrite, no_progress):
    """STACK-GEN: one generated scene with two same-class objects, one behind the wall.

    Many GPUs: `accelerate launch -m stackbench generate stack-gen ...` (or torchrun) splits the shards across
    processes; the same command works unchanged with one process."""
    from ..generate import load_preset
    from ..generate.stackgen import StackGenRecipe, generate_stack_gen, load_prompts
    from ..refs import pick_device

    fields = load_preset("stack-gen", preset) if preset else {}
    given = {"generator": generator, "model": model, "revision": revision, "classes": classes,
             "num_images": num_images, "seed": seed,
             "steps": steps, "guidance": guidance, "gen_size": gen_size, "batch_size": batch_size,
             "min_verify": min_verify, "max_attempts": max_attempts, "format": fmt}
    fields.update({k: v for k, v in given.items() if v is not None})
    if verify or verify_model or min_verify is not None:
        fields["verify_model"] = verify_model or fields.get("verify_model") or "openai/clip-vit-base-patch32"
    if prompts:
        fields["prompts"] = load_prompts(prompts)
    from ..refs import distributed_state

    state = distributed_state()
    device = str(pick_device(device, state))
    result = generate_stack_gen(out, StackGenRecipe.from_fields(fields), device=device, num_proc=num_proc,
                                shard_size=shard_size, overwrite=overwrite, progress=not no_progress, state=state)
    if state is None or state.is_main_process:
        print_summary(result)

