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

from pathlib import Path

from ..axes import Axes
from ..datafolder import writable_folder
from ..errors import StackbenchError, watching_ctrl_c
from ..isolation import Limits, worker_pool
from ..methods.base import check_architecture
from ..models import weights_fingerprint
from ..progress import log, quiet_libraries
from ..records import aggregate_rows
from ..refs import pick_device
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
from .state import MethodRun, Setting
from .storage import file_stem, finish, resume, rows_table, write_overlays
from .summary import SUMMARY_HEADERS, accuracy_note, sample_note, summary_notes, summary_rows

__all__ = ["SUMMARY_HEADERS", "TARGET_RULES", "MethodRun", "Setting", "accuracy_note", "aggregate_rows", "evaluate",
           "file_stem", "label_space", "refuse_label_target", "resolve_methods", "rows_table", "sample_note",
           "summary_notes", "summary_rows"]


def evaluate(methods, dataset: str, model: str, *, target: str = "predicted", postprocess: str = "gradcam-lib",
             batch_size: int = 8, limit: int | None = None, device: str = "auto", save_maps: bool = False,
             out: str | Path = "results", seed: int = 0, progress: bool = True, method_config: dict | None = None,
             figure: bool = True, allow_incomplete: bool = False, axes: Axes | None = None,
             limits: Limits | None = None) -> list[MethodRun]:
    """Run `methods` (specs, classes or SaliencyMethod instances) and write one record + Parquet per method.
    Methods explain in worker processes (the built-ins share one for the job, a plugin has its own), within
    `limits` (default: 600 s per image, no memory limit); the scores are computed here, on model copies no method
    sees.
    Returns a MethodRun per method (status done / skipped / failed). Everything is checked before any work:
    the arguments, the output folder, the dataset (complete, labels within its classes), the model (finite
    weights, the dataset's wall; with target="label", the dataset's classes are the model's). `progress`: one bar
    per pass on a terminal, plain lines on the `stackbench` logger elsewhere; False shows nothing (and silences
    the bars of datasets and huggingface_hub)."""
    check_args(target, postprocess, batch_size, limit, seed, axes, method_config, limits)
    given = methods if isinstance(methods, (list, tuple)) else [methods]
    with worker_pool(given):  # imports meanwhile
        methods = instances(methods, method_config, limits)
        dev = pick_device(device)
        with quiet_libraries(progress):
            return _evaluate(methods, dataset, model, dev, target, postprocess, batch_size, limit, save_maps, out,
                             seed, progress, figure, allow_incomplete, axes, limits,
                             named={m for m in given if isinstance(m, str)})


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


def _evaluate(methods, dataset, model, dev, target, postprocess, batch_size, limit, save_maps, out, seed, progress,
              figure, allow_incomplete, axes, limits, named=frozenset()) -> list[MethodRun]:
    ds, info, net, band_from = open_inputs(dataset, model, dev, seed, target, allow_incomplete)
    methods = _runnable(methods, net, named)
    out = writable_folder(out)  # created only once every input checks
    ds = scored_items(ds, limit)
    setting = make_setting(ds, info, net, band_from, target, postprocess, seed, save_maps, axes, limits)
    fingerprint = weights_fingerprint(net)
    views = job_views(net, fingerprint, seed, setting, len(ds))
    base = base_record(out, info, net, fingerprint, dev, setting, limit, batch_size, views.rand_seed)
    runs = [MethodRun(m, m.name) for m in methods]
    resume(runs, out, base)
    todo = [r for r in runs if r.status == "pending"]
    reused = [r.name for r in runs if r.status == "skipped"]
    if reused and progress:
        log.info(f"evaluate {setting.name}: {', '.join(reused)} finished earlier in {out}; reused")
    if not todo:
        return runs
    if progress:
        log.info(f"evaluate {setting.name}: {len(todo)} method(s) on {len(ds)} images with {net.ref} on {dev}")
    with watching_ctrl_c():
        skipped, all_ids, all_shas = _loop(todo, ds, views, setting, batch_size, progress)
    finish(todo, setting, base, out, all_ids, all_shas, skipped)
    if figure:
        write_overlays(runs, ds, setting, out)
    return runs
