"""The evaluation harness: run saliency methods on a STACK dataset through a walled model and score them.

    evaluate(["GradCAM", "HiResCAM"], "stack-mix-mini", "minivgg-masked@random", out="results")

Per batch and view of the model (`stackbench.methods.passes`): one forward to the target layer serves every method
(targets, activations, logits); methods that need gradients share one backward through the head only; other
methods run their own extra passes. Each method's maps are checked (shape, dtype, finite), post-processed as the
metric defines, and scored per image: mu and friends on the model as it is, then the board's axes
(`stackbench.axes`): mu behind a hidden wall, deletion in the seen part, the randomisation check. Per method it
writes `<out>/<method>.parquet` (per-image rows) then `<out>/<method>.json` (the `stackbench.result/3` record),
both atomically; a method whose record is already there with the same identity is skipped (resume). A faulty
method is reported with its first offending item and the pass it failed in; the others finish.

One job per module: `inputs` (the set-up: arguments, methods, dataset and model), `loop` (the batches),
`storage` (resume, rows and records on disk), `summary` (the printed table); the record itself is built and
validated by `stackbench.records`. `evaluate` below strings them together.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from ..axes import Axes
from ..datafolder import folder_lock, writable_folder
from ..errors import StackbenchError, watching_ctrl_c
from ..isolation import Limits, worker_pool
from ..methods.base import check_architecture
from ..models import weights_fingerprint
from ..progress import Progress, log, quiet_libraries
from ..records import aggregate_rows
from ..refs import distributed_state, pick_device
from . import processes
from .inputs import (
    TARGET_RULES,
    base_record,
    check_args,
    instances,
    job_views,
    label_space,
    make_setting,
    open_inputs,
    refuse_label_target,
    resolve_methods,
    scored_items,
)
from .loop import run_batches as _loop  # called through this module's name: tests patch stackbench.evaluate._loop
from .parts import Layout, Parts
from .state import MethodRun, Setting
from .storage import file_stem, finish, resume, rows_table, write_overlays
from .summary import SUMMARY_HEADERS, accuracy_note, sample_note, summary_notes, summary_rows

__all__ = ["SUMMARY_HEADERS", "TARGET_RULES", "MethodRun", "Setting", "accuracy_note", "aggregate_rows", "evaluate",
           "file_stem", "label_space", "refuse_label_target", "resolve_methods", "rows_table", "sample_note",
           "summary_notes", "summary_rows"]


def evaluate(methods, dataset: str, model: str, *, target: str = "predicted", postprocess: str = "gradcam-lib",
             batch_size: int = 8, limit: int | None = None, device: str = "auto", save_maps: bool = False,
             out: str | Path = "results", seed: int = 0, progress: bool = True, method_config: dict | None = None,
             figure: bool = True, allow_incomplete: bool = False, axes: Axes | str = "all",
             limits: Limits | None = None, num_proc: int = 1) -> list[MethodRun]:
    """Run `methods` (specs, classes or SaliencyMethod instances) and write one record + Parquet per method.
    Methods explain in worker processes (the built-ins share one for the job, a plugin has its own), within
    `limits` (default: 600 s per image, no memory limit); the scores are computed here, on model copies no method
    sees. `axes`: "all" (the board's, on every image), "none" (the paper's protocol: mu and its companions alone;
    not a board row), or an `Axes` (e.g. `Axes(sample=20)`).
    The images are scored in chunks (`parts`): a killed run resumes at its last finished chunk, and `num_proc`
    processes on this machine (or those of `accelerate launch`) share them; the record and rows are those one
    process writes.
    Returns a MethodRun per method (status done / skipped / failed). Everything is checked before any work:
    the arguments, the output folder, the dataset (complete, labels within its classes), the model (finite
    weights, the dataset's wall; with target="label", the dataset's classes are the model's). `progress`: one bar
    per pass on a terminal, plain lines on the `stackbench` logger elsewhere; False shows nothing (and silences
    the bars of datasets and huggingface_hub)."""
    check_args(target, postprocess, batch_size, limit, seed, axes, method_config, limits, num_proc)
    given = methods if isinstance(methods, (list, tuple)) else [methods]
    with worker_pool(given):  # imports meanwhile
        methods = instances(methods, method_config, limits)
        state = distributed_state()
        if state is not None and num_proc > 1:
            raise StackbenchError(f"--num-proc {num_proc} under accelerate launch or torchrun: its "
                                  f"{state.num_processes} processes share the images already; leave --num-proc out")
        dev = pick_device(device, state)
        call = {"dataset": dataset, "model": model, "device": device, "target": target, "postprocess": postprocess,
                "batch_size": batch_size, "limit": limit, "save_maps": save_maps, "out": out, "seed": seed,
                "axes": axes, "limits": limits, "allow_incomplete": allow_incomplete,
                "named": {m for m in given if isinstance(m, str)}}
        with quiet_libraries(progress):
            return _evaluate(methods, call, dev, processes.Processes(state), num_proc, progress, figure)


def _runnable(methods, net, named: set) -> list:
    """The methods to run on `net`: one named that cannot run on its architecture is a wrong input, not a failed
    run; one brought in by "all" alone (every registered method) is left out."""
    keep, left = [], []
    for m in methods:
        try:
            check_architecture(m, net)
        except StackbenchError:
            if "all" in named and m.name not in named:
                left.append(m.name)
                continue
            raise
        keep.append(m)
    if left:
        arch = getattr(net, "arch", "vgg")
        log.info(f"--method all: left out {', '.join(left)} (they do not run on {arch} models)")
    return keep


@dataclass
class Job:
    """One evaluation as every one of its processes sets it up: the same items, views, record and parts."""

    ds: object
    setting: Setting
    views: object
    base: dict
    runs: list[MethodRun]
    out: Path
    parts: Parts
    ref: str


def _setup(methods, call: dict, dev) -> Job:
    """The set-up every process of an evaluation does alike (the main one has made the output folder)."""
    c = call
    ds, info, net, band_from = open_inputs(c["dataset"], c["model"], dev, c["seed"], c["target"],
                                           c["allow_incomplete"])
    methods = _runnable(methods, net, c["named"])
    out = Path(c["out"])
    ds = scored_items(ds, c["limit"])
    setting = make_setting(ds, info, net, band_from, c["target"], c["postprocess"], c["seed"], c["save_maps"],
                           c["axes"], c["limits"], c["batch_size"])
    fingerprint = weights_fingerprint(net)
    views = job_views(net, fingerprint, c["seed"], setting, len(ds))
    base = base_record(out, info, net, fingerprint, dev, setting, c["limit"], c["batch_size"], views.rand_seed)
    runs = [MethodRun(m, m.name) for m in methods]
    resume(runs, out, base)
    return Job(ds, setting, views, base, runs, out, Parts(out, base, Layout(len(ds), c["batch_size"])), net.ref)


def _evaluate(methods, call: dict, dev, procs: processes.Processes, num_proc: int, progress: bool,
              figure: bool) -> list[MethodRun]:
    with contextlib.ExitStack() as stack:
        refusal = None
        if procs.main:
            try:
                call = {**call, "out": writable_folder(call["out"])}  # created only once every input checks
                stack.enter_context(folder_lock(call["out"], busy=f"--out {call['out']} is in use by another "
                                                "stackbench evaluate; wait for it to finish or give another --out"))
            except StackbenchError as e:
                refusal = str(e)
        procs.agree(refusal)
        return _evaluate_here(methods, call, dev, procs, num_proc, progress, figure)


def _evaluate_here(methods, call: dict, dev, procs: processes.Processes, num_proc: int, progress: bool,
                   figure: bool) -> list[MethodRun]:
    """The evaluation, its output folder made and held."""
    job = _setup(methods, call, dev)
    todo = [r for r in job.runs if r.status == "pending"]
    reused = [r.name for r in job.runs if r.status == "skipped"]
    if reused and progress and procs.main:
        log.info(f"evaluate {job.setting.name}: {', '.join(reused)} finished earlier in {job.out}; reused")
    if not todo:
        return job.runs
    world = procs.world if procs.state is not None else min(num_proc, job.parts.layout.count)
    if procs.main:
        job.parts.start()
        if progress:
            fewer = f" (only {world} chunks of whole batches)" if world < num_proc else ""
            log.info(f"evaluate {job.setting.name}: {len(todo)} method(s) on {len(job.ds)} images with {job.ref} on "
                     f"{dev}" + (f", {world} processes{fewer}" if world > 1 or fewer else ""))
    procs.wait()
    layout = job.parts.layout
    done = sum(b - a for c in range(layout.count) for a, b in [layout.span(c)]
               if all(job.parts.has(r, c) for r in todo))
    if done and progress and procs.main:
        log.info(f"evaluate {job.setting.name}: resuming: {done} of {len(job.ds)} images were scored earlier "
                 f"({job.parts.dir})")
    with watching_ctrl_c():
        _run(todo, job, call, procs, world, progress and procs.main, done, num_proc)
    if procs.main:
        _merge(todo, job, world)
        if figure:
            write_overlays(job.runs, job.ds, job.setting, job.out)
    procs.wait()
    if not procs.main:
        resume(job.runs, job.out, job.base)  # the main process' records
    return job.runs


def _run(todo: list[MethodRun], job: Job, call: dict, procs: processes.Processes, world: int, progress: bool,
         done: int = 0, num_proc: int = 1):
    """This process' chunks, and those of the processes it starts (`world` of the `num_proc` asked for, as many as
    there are chunks; each with 1/num_proc of the threads, so the rows do not depend on how many chunks there
    were); `done`: the images of chunks finished earlier."""
    import torch

    layout, parts = job.parts.layout, job.parts
    if procs.main:
        bar = processes.Bar(Progress(len(job.ds), f"evaluate {job.setting.name}", enabled=progress, initial=done),
                            parts.dir, procs.rank, world, done)
    else:
        bar = processes.Tally(parts.dir, procs.rank)
    started, threads = [], torch.get_num_threads()
    try:
        if procs.state is None and num_proc > 1:
            share = max(1, threads // num_proc)
            started = processes.start(world, share, _shard, ([r.method for r in job.runs], call,
                                                            [r.name for r in todo]))
            torch.set_num_threads(share)
        _loop(todo, job.ds, job.views, job.setting, parts, layout.mine(procs.rank, world), procs.rank, bar)
        processes.join(started, bar if procs.main else None)
        if not procs.main:
            bar.close()  # its last count, before the main process reads it
        procs.wait()
        if procs.main:
            bar.refresh()
    except BaseException:
        processes.stop(started)
        raise
    finally:
        torch.set_num_threads(threads)
        bar.close()


def _shard(methods, call: dict, names: list[str], rank: int, world: int, threads: int) -> None:
    """A process started by `_run`: the same set-up, then its chunks."""
    import torch

    torch.set_num_threads(threads)
    with worker_pool(methods), quiet_libraries(False):
        job = _setup(methods, call, _device_of(call["device"], rank))
        todo = [r for r in job.runs if r.name in names]
        tally = processes.Tally(job.parts.dir, rank)
        try:
            _loop(todo, job.ds, job.views, job.setting, job.parts, job.parts.layout.mine(rank, world), rank, tally)
        finally:
            tally.close()


def _device_of(device: str, rank: int):
    """A started process' device: with "auto" on a machine of several GPUs, one each (the main process has the
    first)."""
    import torch

    if device == "auto" and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return torch.device(f"cuda:{rank % torch.cuda.device_count()}")
    return pick_device(device)


def _merge(todo: list[MethodRun], job: Job, world: int) -> None:
    """Every chunk's parts into each method's one record and rows file (a method that failed anywhere: its first
    failure in dataset order), then the parts removed."""
    parts = job.parts
    for r in todo:
        error = parts.failure(r)
        if error:
            r.status, r.error = "failed", error
        elif r.status == "pending":
            parts.merge(r)
    if any(r.status == "pending" for r in todo):
        ids, shas, skipped, job.setting.clock = parts.items()
        finish(todo, job.setting, job.base, job.out, ids, shas, skipped, world)
    for r in todo:
        parts.remove(r)
    parts.tidy()
