"""The set-up of an evaluation: its arguments checked, its methods resolved, its dataset and model opened and
checked against each other, and what every method's record shares."""
from __future__ import annotations

import inspect
from pathlib import Path

import datasets

from .. import cpu
from .. import metrics as M
from .. import records as R
from ..axes import Axes, Views, orientations_for
from ..datafolder import open_dataset
from ..errors import StackbenchError
from ..isolation import Limits, MethodHandle, method_handle, worker_pool
from ..methods import SaliencyMethod, list_methods
from ..versions import versions
from .state import Setting

TARGET_RULES = ("predicted", "label")


def check_args(target, postprocess, batch_size, limit, seed, axes, method_config, limits=None, num_proc=1) -> None:
    """The plain arguments, in the order their errors are reported."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise StackbenchError(f"--seed {seed!r}: must be a whole number from 0 to 2**63 - 1")
    if target not in TARGET_RULES:
        raise StackbenchError(f"--target {target!r}: expected one of {', '.join(TARGET_RULES)}")
    if postprocess not in M.POSTPROCESS:
        raise StackbenchError(f"--postprocess {postprocess!r}: expected one of {', '.join(M.POSTPROCESS)}")
    if batch_size < 1:
        raise StackbenchError(f"--batch-size {batch_size}: must be at least 1")
    if limit is not None and limit < 1:
        raise StackbenchError(f"--limit {limit}: must be at least 1")
    check_num_proc(num_proc)
    Axes.of(axes)
    if method_config is not None and not isinstance(method_config, dict):
        raise StackbenchError(f"method_config {method_config!r:.40}: a dict of method name -> options")
    if limits is not None and not isinstance(limits, Limits):
        raise StackbenchError(f"limits {limits!r:.40}: give a stackbench.isolation.Limits (e.g. Limits(seconds_per_"
                              "image=30, memory_mb=4096)) or None")


def check_num_proc(num_proc) -> None:
    """--num-proc: checked by every job that passes it on, before its first step."""
    if isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1:
        raise StackbenchError(f"--num-proc {num_proc!r}: must be a whole number of at least 1")


def resolve_methods(specs, limits: Limits | None = None, **config) -> list[MethodHandle]:
    """Method specs (names, plugins, entry points, 'all') -> handles, all resolved before any work (a plugin is
    imported in a worker process only)."""
    names: list[str] = []
    for s in specs:
        names.extend(list_methods() if s == "all" else [s])
    out = _unique([method_handle(s, limits, **config.get(s, {})) for s in dict.fromkeys(names)])
    if not out:
        raise StackbenchError("no method given; use --method NAME (see `stackbench methods`) or --method all")
    return out


def _unique(handles: list[MethodHandle]) -> list[MethodHandle]:
    """One handle per name: the same method given twice (a name and its alias) once; two methods of one name (a
    plugin named like a built-in) refused, as their rows would be one file."""
    by_name: dict[str, MethodHandle] = {}
    for m in handles:
        other = by_name.setdefault(m.name, m)
        if other.payload[:2] != m.payload[:2] or other.config != m.config:
            raise StackbenchError(f"two methods are named {m.name} ({other.source} and {m.source}); give one of them "
                                  "another `name`")
    return list(by_name.values())


def instances(methods, method_config, limits: Limits | None = None) -> list[MethodHandle]:
    """`evaluate`'s methods (one or a list of specs, classes, instances or handles) -> handles."""
    if isinstance(methods, (str, SaliencyMethod, MethodHandle)) or inspect.isclass(methods):
        methods = [methods]
    given = [method_handle(m) for m in methods if isinstance(m, (SaliencyMethod, MethodHandle))]
    specs = [m for m in methods if not isinstance(m, (SaliencyMethod, MethodHandle))]
    return _unique(given + resolve_methods(specs, limits, **(method_config or {})) if specs or not given else given)


def open_inputs(dataset, model, dev, seed, target, allow_incomplete):
    """(dataset, its info, the model, the first row of the band mu is scored on), checked against each other."""
    from ..models import load_model

    ds, info = open_dataset(dataset, allow_incomplete=allow_incomplete)
    net = load_model(model, seed=seed, device=dev)
    band_from = check_band(ds, info, net)
    if target == "label":
        refuse_label_target(label_space(ds, net), info["ref"], net.ref)
    return ds, info, net, band_from


def check_band(ds, info, net) -> int:
    """The dataset's band (its one `wall_row` down) must lie inside the model's dead zone: mu is scored on the band,
    and a pixel there the model could see would count against a correct map. Returns the band's first row."""
    walls = sorted({int(v) for v in ds.unique("wall_row")})
    wall = net.wall
    if len(walls) != 1 or not (wall.dead_height and wall.side == "bottom" and
                               wall.dead_from <= walls[0] < wall.input_size[0]):
        where = f"blind from row {wall.dead_from}" if wall.dead_height else "not walled"
        raise StackbenchError(f"dataset {info['ref']} puts the wall at row {', '.join(map(str, walls))} but model "
                              f"{net.ref} is {where}; evaluate it with a model whose dead zone holds the dataset's "
                              "band (or regenerate the dataset for this model)")
    return walls[0]


def scored_items(ds, limit):
    """The items to score: the first `limit`, their images left undecoded (hashed and decoded by the loop)."""
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds.cast_column("image", datasets.Image(decode=False))


def make_setting(ds, info, net, band_from, target, postprocess, seed, save_maps, axes, limits=None,
                 batch_size: int = 8) -> Setting:
    axes = Axes.of(axes).fitted(len(ds))
    return Setting(target, postprocess, seed, save_maps, net.wall, axes, axes.chosen(len(ds), seed),
                   name=Path(info["ref"].rstrip("/")).name or info["ref"], classes=label_space(ds, net),
                   band_from=band_from, limits=limits or Limits(), batch_size=batch_size)


def job_views(net, fingerprint: str, seed: int, setting: Setting, n: int) -> Views:
    """The evaluation's views of the model (`axes.Views`; n: the number of scored images). Those of the job's last
    evaluation when it had the same model, seed and orientations (a verify run's rows, the demo's two sets): their
    harness copies are not rebuilt, and the shared worker holds their handed models already. The views are
    functions of these alone, so the rows are the bytes of fresh ones."""
    orientations = orientations_for(seed, range(n) if setting.chosen is None else setting.chosen)
    random = setting.axes.measured
    p = next(net.parameters())
    key = ("views", fingerprint, type(net).__qualname__, repr(getattr(net, "wall", None)),
           tuple(getattr(net, "input_size", ())), str(p.device), seed, tuple(orientations), random)
    with worker_pool() as pool:  # the job's (evaluate opens it)
        return pool.kept(key, lambda: Views(net, seed, orientations, random), lambda v: v.tokens)


def base_record(out: Path, info, net, fingerprint: str, dev, setting: Setting, limit, batch_size,
                rand_seed: int) -> R.BaseRecord:
    """What every method's record shares; local paths relative to `out`, where the records are written.
    `fingerprint`: the model's `weights_fingerprint`."""
    env = {**versions("torch", "grad-cam", "captum", "numpy", "opencv", "scipy"), "device": dev.type,
           "cpu": cpu.describe(), "isolation": f"worker process; {setting.limits}",
           "dtype": str(next(net.parameters()).dtype).replace("torch.", "")}
    band = {"axis": "rows", "first": setting.band_from, "last": setting.size[0] - 1}
    return R.base_record(R.dataset_info(info, out), R.model_info(net, fingerprint, out), band=band,
                         target=setting.target, postprocess=setting.postprocess,
                         axes=setting.axes.describe(setting.seed, rand_seed), env=env, seed=setting.seed,
                         limit=limit, batch_size=batch_size)


def _few(names, k: int = 4) -> str:
    names = list(names)
    return ", ".join(names[:k]) + (f", ... ({len(names)} in all)" if len(names) > k else "")


def label_space(ds, net) -> dict:
    """Do the dataset's labels name the model's classes? By name when the model records its class names
    (config.json id2label, written by `stackbench train`; the mini zoo models name the shapes classes), else by
    count (the outputs are assumed to be the dataset's classes in the same order: vgg16*, paper:)."""
    feat = ds.features.get("label")
    names = list(getattr(feat, "names", None) or []) or None
    theirs = getattr(net, "class_names", None)
    labels = ds.data.column("label").to_numpy(zero_copy_only=False)
    top = int(max(labels, default=-1))
    if names and theirs:
        aligned, basis = list(names) == list(theirs), "names"
    elif names:
        aligned, basis = len(names) == net.num_classes and top < net.num_classes, "indices"
    else:
        aligned, basis = top < net.num_classes, "indices"
    return {"aligned": aligned, "basis": basis, "dataset": names, "model": theirs, "num_classes": net.num_classes,
            "top": top}


def refuse_label_target(space: dict, dataset: str, model_ref: str) -> None:
    """--target label explains the dataset's label as a class of the model: refused (one line, with the fix) when
    the two are not the same classes."""
    if space["aligned"]:
        return
    ours = (f"{len(space['dataset'])} classes ({_few(space['dataset'])}; labels up to {space['top']})"
            if space["dataset"] else f"labels up to {space['top']}")
    theirs = f"{space['num_classes']} classes" + (f" ({_few(space['model'])})" if space["model"] else "")
    raise StackbenchError(f"--target label: dataset {dataset} has {ours} but model {model_ref} has {theirs}, so a "
                          "label would name another class; use --target predicted, or a model trained on the "
                          "dataset's classes (stackbench train --source ...)")
