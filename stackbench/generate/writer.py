"""The resumable, parallel dataset writer, generic over the dataset kind (STACK-MIX, STACK-GEN).

A builder makes row i as a pure function of its recipe and i. The writer cuts [0, n) into shards of
`shard_size` rows, builds the missing shards (in this process or a pool of `num_proc` processes), writes each
one atomically with its own skip report in the Parquet metadata, then writes the card and generation.json.
Rerunning into the same folder reuses finished shards; a folder holding another recipe is refused.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import datasets

from .. import datafolder as df
from ..errors import OtherRecipe, StackbenchError
from ..refs import agree
from ..versions import versions

GENERATION_FORMAT = "stackbench.generation/1"
IDENTITY_KEYS = ("kind", "recipe", "source", "shard_size", "versions")
MAX_SHARDS = 100_000  # planning lists every shard: a larger plan is refused before anything is written


class Report:
    """What one shard's build met: skipped inputs, mode conversions, dropped items."""

    def __init__(self):
        self.skipped: dict[str, str] = {}
        self.converted: Counter = Counter()
        self.dropped: list[dict] = []

    def skip(self, path: str, reason: str) -> None:
        self.skipped.setdefault(path, reason)

    def convert(self, mode: str) -> None:
        self.converted[mode] += 1

    def drop(self, index: int, reason: str) -> None:
        self.dropped.append({"index": index, "reason": reason})

    def to_dict(self) -> dict:
        return {"skipped": [{"path": p, "reason": r} for p, r in sorted(self.skipped.items())],
                "converted": dict(sorted(self.converted.items())), "dropped": self.dropped}


class Builder(Protocol):
    """What the writer needs from a dataset kind."""

    kind: str
    class_names: list[str]
    n_items: int

    def identity(self) -> dict:
        """{recipe, source}: JSON-able; an equal identity (plus shard size and versions) means resumable."""

    def build(self, i: int, report: Report) -> dict | None:
        """Row i (image already encoded), or None after report.drop(i, why). A builder may also offer
        `build_batch(indices, report) -> list[dict | None]` and `batch_size`: the writer then passes fixed
        slices of each shard."""

    def info(self) -> dict:
        """Extra, deterministic facts for generation.json (e.g. classes used, skips found while planning). A builder
        may also offer `features() -> datasets.Features`: its columns, when fewer than the kind's."""


@dataclass
class WriteResult:
    folder: Path
    n_rows: int
    n_shards: int
    built_shards: int
    built_items: int
    seconds: float
    generation: dict = field(repr=False)

    @property
    def images_per_s(self) -> float:
        return self.built_items / self.seconds if self.seconds > 0 else float("nan")


# --- folder state ---------------------------------------------------------------------------------------

def _our_files(folder: Path) -> list[Path]:
    data = folder / df.DATA_DIR
    files = [folder / df.GENERATION, folder / "README.md"]
    if data.is_dir():
        files += [p for p in data.iterdir() if p.suffix in (".parquet", ".tmp")]
    return [p for p in files if p.exists()]


def prepare_folder(folder: Path, identity: dict, overwrite: bool) -> None:
    """Create, resume or (with overwrite) clear the folder; refuse a folder that holds something else."""
    if folder.exists() and not folder.is_dir():
        raise StackbenchError(f"--out {folder} is a file; give a folder")
    df.writable_folder(folder)
    old = df.read_generation(folder) if folder.is_dir() else {}
    if old:
        same = {k: old.get(k) for k in IDENTITY_KEYS} == identity
        if not same and not overwrite:
            differ = [k for k in IDENTITY_KEYS if old.get(k) != identity.get(k)]
            detail = [f"{k}.{sub}" for k in differ if isinstance(identity.get(k), dict) and isinstance(old.get(k), dict)
                      for sub in sorted(set(identity[k]) | set(old[k])) if identity[k].get(sub) != old[k].get(sub)]
            raise OtherRecipe(f"{folder} holds a dataset with another recipe (differs in "
                              f"{', '.join(detail or differ)}); choose another --out or pass --overwrite",
                              ", ".join(detail or differ))
        if not same:
            for p in _our_files(folder):
                p.unlink()
    elif folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir()):
        if not overwrite or any(p.name not in (df.GENERATION, "README.md", df.DATA_DIR) for p in folder.iterdir()):
            raise StackbenchError(f"{folder} is not empty and was not written by `stackbench generate`; choose a new "
                                  "or empty --out folder")
        for p in _our_files(folder):
            p.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    for p in (folder / df.DATA_DIR).glob(".*.tmp"):  # half-written shards of a killed run
        p.unlink(missing_ok=True)


# --- building shards ------------------------------------------------------------------------------------

_STATE: dict = {}


def _init_worker(builder, feats, folder, shard_size, n_shards, counter) -> None:
    _STATE.update(builder=builder, feats=feats, folder=folder, shard_size=shard_size, n_shards=n_shards,
                  counter=counter)


def _build_shard(s: int, tick: Callable[[int], None] | None = None) -> int:
    st = _STATE
    builder, report = st["builder"], Report()
    rows = []
    lo, hi = s * st["shard_size"], min((s + 1) * st["shard_size"], builder.n_items)
    # A builder with build_batch (e.g. a diffusion pipeline) gets fixed slices of the shard.
    step = int(getattr(builder, "batch_size", 1) or 1) if hasattr(builder, "build_batch") else 1
    for start in range(lo, hi, step):
        indices = list(range(start, min(start + step, hi)))
        built = builder.build_batch(indices, report) if step > 1 else [builder.build(i, report) for i in indices]
        rows += [row for row in built if row is not None]
        if tick is not None:
            tick(len(indices))
        elif st["counter"] is not None:
            with st["counter"].get_lock():
                st["counter"].value += len(indices)
    df.write_shard(rows, st["feats"], df.shard_path(st["folder"], s, st["n_shards"]), metadata=report.to_dict())
    return s


def _context():
    # fork: workers inherit the opened source and imported libraries (spawn would re-import torch & co.).
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() and sys.platform != "darwin" else "spawn")


def write_dataset(folder: str | Path, builder: Builder, *, shard_size: int = 500, num_proc: int = 1,
                  overwrite: bool = False, progress: bool = True,
                  card: Callable[[Path, datasets.Features, dict], None] | None = None,
                  state=None) -> WriteResult:
    """Build every missing shard of `builder` into `folder`, then write generation.json (and the card).

    `state`: an accelerate PartialState when launched as several processes (`accelerate launch`, torchrun):
    process p builds the missing shards s with s % num_processes == p, each writing its own files; the main
    process prepares the folder and, once every process is done, writes generation.json and the card."""
    _check_sizes(builder, shard_size, num_proc)
    folder = Path(folder)
    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    main = rank == 0
    identity = {"kind": builder.kind, **builder.identity(), "shard_size": shard_size,
                "versions": versions("pillow", "numpy", "datasets", "pyarrow", python=False)}
    fresh = world == 1 and not (folder.is_dir() and any(folder.iterdir()))  # made by this call: undone if it fails
    _start(folder, identity, overwrite, main, state)
    # A builder may narrow the kind's columns to those that mean something for its recipe.
    feats = builder.features() if hasattr(builder, "features") else df.features(builder.kind, builder.class_names)
    n_shards = max(1, math.ceil(builder.n_items / shard_size))
    missing = _missing_shards(folder, n_shards, main)
    if world > 1:
        state.wait_for_everyone()  # every process has listed the missing shards before any is written
    todo = [s for s in missing if s % world == rank]
    size_of = lambda s: min((s + 1) * shard_size, builder.n_items) - s * shard_size  # noqa: E731
    t0 = time.perf_counter()
    try:
        _build(builder, feats, folder, shard_size, n_shards, todo, sum(map(size_of, todo)), num_proc,
               progress and main)
    except BaseException:
        if fresh and not df.list_shards(folder):  # nothing to resume: leave no half-made folder behind
            shutil.rmtree(folder, ignore_errors=True)
        raise
    if world > 1:
        state.wait_for_everyone()
    seconds = time.perf_counter() - t0  # all processes' work
    if main:
        generation = finish(folder, builder, identity, n_shards)
        if card is not None:
            card(folder, feats, generation)
        df.atomic_write_json(folder / df.GENERATION, generation)
    if world > 1:
        state.wait_for_everyone()
        generation = df.read_generation(folder)
    return WriteResult(folder, generation["n"], n_shards, len(missing), sum(map(size_of, missing)), seconds,
                       generation)


def _check_sizes(builder: Builder, shard_size: int, num_proc: int) -> None:
    if shard_size < 1:
        raise StackbenchError(f"--shard-size must be at least 1, got {shard_size}")
    if num_proc < 1:
        raise StackbenchError(f"--num-proc must be at least 1, got {num_proc}")
    shards = math.ceil(builder.n_items / shard_size)
    if shards > MAX_SHARDS:
        raise StackbenchError(f"{builder.n_items} images in shards of {shard_size} make {shards} shards, more than "
                              f"{MAX_SHARDS}: ask for fewer images or a larger --shard-size")


def _start(folder: Path, identity: dict, overwrite: bool, main: bool, state=None) -> None:
    """The main process prepares the folder and marks it incomplete; with several processes, every one stops with
    the main one's refusal instead of waiting for it forever."""
    refusal = None
    if main:
        try:
            prepare_folder(folder, identity, overwrite)
            df.atomic_write_json(folder / df.GENERATION, {"format": GENERATION_FORMAT, "status": "incomplete",
                                                          **identity})
        except StackbenchError as e:
            if state is None:
                raise
            refusal = str(e)
    agree(refusal, state)


def _missing_shards(folder: Path, n_shards: int, main: bool) -> list[int]:
    """The shards still to build; the main process first removes shard files of another shard count."""
    if main:
        expected = {df.shard_path(folder, s, n_shards).name for s in range(n_shards)}
        for p in df.list_shards(folder):
            if p.name not in expected:
                p.unlink()
    return [s for s in range(n_shards) if not df.shard_path(folder, s, n_shards).exists()]


def _build(builder: Builder, feats, folder: Path, shard_size: int, n_shards: int, todo: list[int],
           todo_items: int, num_proc: int, progress: bool) -> None:
    """Build the shards in `todo`, here or in a pool of `num_proc` processes, with one progress bar."""
    from ..progress import Progress

    done = builder.n_items - todo_items
    bar = Progress(builder.n_items, f"{builder.kind} -> {folder.name}", initial=done,
                   enabled=progress)  # a bar on a terminal, plain log lines elsewhere
    procs = min(num_proc, len(todo))
    try:
        if procs <= 1:
            _init_worker(builder, feats, folder, shard_size, n_shards, None)
            for s in todo:
                _build_shard(s, tick=bar.update)
            return
        ctx = _context()
        counter = ctx.Value("q", 0)
        with ctx.Pool(procs, initializer=_init_worker,
                      initargs=(builder, feats, folder, shard_size, n_shards, counter)) as pool:
            pending = pool.map_async(_build_shard, todo, chunksize=1)
            while not pending.ready():
                pending.wait(0.25)
                bar.update(counter.value - (bar.n - done))
            pending.get()  # re-raises a worker's exception
            bar.update(counter.value - (bar.n - done))
    finally:
        bar.close()
        _STATE.clear()


def finish(folder: Path, builder: Builder, identity: dict, n_shards: int) -> dict:
    """generation.json's content: a deterministic function of the recipe and the shards (no times, no paths of
    this machine), so a resumed or parallel run ends with the same file."""
    import pyarrow.parquet as pq

    report, n = Report(), 0
    info = builder.info()
    for s in info.pop("skipped", []):
        report.skip(s["path"], s["reason"])
    for p in (df.shard_path(folder, s, n_shards) for s in range(n_shards)):
        footer = pq.read_metadata(p)
        n += footer.num_rows
        meta = df.shard_metadata(footer)
        for s in meta.get("skipped", []):
            report.skip(s["path"], s["reason"])
        report.converted.update(meta.get("converted", {}))
        report.dropped += meta.get("dropped", [])
    return {"format": GENERATION_FORMAT, "status": "complete", **identity, **info, "n": n, "shards": n_shards,
            "fingerprint": df.fingerprint(folder), **report.to_dict()}
