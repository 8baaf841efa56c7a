"""The evaluation harness: run saliency methods on a STACK dataset through a walled model and score them.

    evaluate(["GradCAM", "HiResCAM"], "stack-mix-mini", "minivgg-masked@random", out="results")

Per batch and view of the model (`stackbench.passes`): one forward to the target layer serves every method
(targets, activations, logits); methods that need gradients share one backward through the head only; other
methods run their own extra passes. Each method's maps are checked (shape, dtype, finite), post-processed as the
metric defines, and scored per image: mu and friends on the model as it is, then the board's axes
(`stackbench.axes`): mu behind a hidden wall, deletion in the seen part, the randomisation check. Per method it
writes `<out>/<method>.parquet` (per-image rows) then `<out>/<method>.json` (the `stackbench.result/2` record),
both atomically; a method whose record is already there with the same identity is skipped (resume). A faulty
method is reported with its first offending item and the pass it failed in; the others finish.
"""
from __future__ import annotations

import hashlib
import inspect
import io
import re
import time
from dataclasses import dataclass, field
from functools import cached_property
from datetime import datetime, timezone
from pathlib import Path

import datasets
import numpy as np
import torch

from . import metrics as M
from .datafolder import atomic_write_bytes, atomic_write_json, open_dataset, pixel_sha256, writable_folder
from .axes import Axes, Instances, Views, deletion_ends, deletion_probs, orientation_for, orientations_for
from .errors import StackbenchError, first_line, foreign_failure, watching_ctrl_c
from .methods import SaliencyMethod, get_method, list_methods
from .passes import MethodFailure, make_batch, scored_maps
from .progress import Progress, log, quiet_libraries, rate
from .records import SCHEMA, axes_sample, identity, portable, read_record, sampled_mu, validate_record
from .wall import apply, inverse
from .versions import versions

TARGET_RULES = ("predicted", "label")
GRID_ITEMS = 4  # images kept for the overlay grid


@dataclass
class MethodRun:
    method: SaliencyMethod
    spec: str
    status: str = "pending"           # pending | skipped (finished earlier) | done | failed
    error: str | None = None
    rows: list = field(default_factory=list)
    maps: list = field(default_factory=list)
    grid_maps: list = field(default_factory=list)
    seconds: float = 0.0
    record: dict | None = None
    record_path: Path | None = None
    views: Instances | None = None    # one set-up instance per view of the model

    @property
    def name(self) -> str:
        return self.method.name


def file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def resolve_methods(specs, **config) -> list[SaliencyMethod]:
    """Method specs (names, plugins, entry points, 'all') -> instances, all resolved before any work."""
    names: list[str] = []
    for s in specs:
        names.extend(list_methods() if s == "all" else [s])
    seen, out = set(), []
    for s in dict.fromkeys(names):
        m = get_method(s, **config.get(s, {}))
        if m.name in seen:
            continue
        seen.add(m.name)
        out.append(m)
    if not out:
        raise StackbenchError("no method given; use --method NAME (see `stackbench methods`) or --method all")
    return out


from .devices import pick_device  # noqa: E402,F401  (re-exported: one --device rule for every command)


# ----------------------------------------------------------------------------------------------- inputs

def decode_image(data: bytes, size: tuple[int, int]) -> tuple[torch.Tensor, str]:
    """PNG/JPEG bytes -> ((3, H, W) float in [0, 1], exactly torchvision's ToTensor of the RGB image; the pixel
    sha256 of the stored image, as the dataset fingerprint counts it)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.size != (size[1], size[0]):
            raise ValueError(f"image is {img.size[0]}x{img.size[1]}, the model takes {size[1]}x{size[0]}")
        sha = pixel_sha256(img)
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255), sha


def iter_batches(ds, batch_size: int, size: tuple[int, int], skipped: list):
    """Yield (indices, ids, labels, image_sha256s, x01) per batch; undecodable items go to `skipped`."""
    for start in range(0, len(ds), batch_size):
        chunk = ds[start:start + batch_size]
        idx, ids, labels, shas, xs = [], [], [], [], []
        for j, (ident, image, label) in enumerate(zip(chunk["id"], chunk["image"], chunk["label"])):
            data = (image or {}).get("bytes") if isinstance(image, dict) else None
            if data is None and isinstance(image, dict) and image.get("path"):
                try:
                    data = Path(image["path"]).read_bytes()
                except OSError:
                    data = None
            try:
                if data is None:
                    raise ValueError("no image bytes")
                x, sha = decode_image(data, size)
            except Exception as e:  # noqa: BLE001 - one bad item never stops the run
                skipped.append({"id": str(ident), "reason": first_line(e)})
                continue
            xs.append(x)
            idx.append(start + j)
            ids.append(str(ident))
            labels.append(int(label))
            shas.append(sha)
        if xs:
            yield idx, ids, labels, shas, torch.stack(xs)


# ----------------------------------------------------------------------------------------------- records

def items_digest(ids, shas) -> str:
    """sha256 over 'id pixel-sha256' lines in evaluation order: which exact images were scored (their pixels, not
    their encoding)."""
    h = hashlib.sha256()
    for i, s in zip(ids, shas):
        h.update(f"{i} {s}\n".encode())
    return h.hexdigest()


def rows_table(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {k: [r[k] for r in rows] for k in rows[0]} if rows else {}
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    return buf.getvalue()


# Which empty-map column counts an empty map for each metric (schema 2: empty maps are scored, EMPTY_RULE).
EMPTY_COLUMN = {"mu": "map_empty", "dead_mass": "map_empty", "leak_rate": "map_empty", "mu_hidden": "hidden_empty",
                "deletion_auc": "map_empty", "rand_corr": "map_empty"}


AXES_METRICS = ("mu_hidden", "deletion_auc", "rand_corr")  # measured on the images that have an orientation


def aggregate_rows(rows: list[dict], seed: int) -> dict:
    """The record's metrics from its per-image rows (schema 1 rows: the three mu metrics, NaN for an empty map).
    The axes' metrics count only the rows that got the axes (all of them, unless the axes ran on a sample)."""
    v2 = bool(rows) and "map_empty" in rows[0]
    if not v2:
        return {m: M.aggregate([np.nan if r[m] is None else r[m] for r in rows], seed=seed) for m in M.PER_IMAGE}
    out = {}
    for m, empty in EMPTY_COLUMN.items():
        rs = [r for r in rows if r["orientation"] is not None] if m in AXES_METRICS else rows
        out[m] = M.aggregate([np.nan if r[m] is None else r[m] for r in rs], seed=seed,
                             empty=[bool(r[empty]) for r in rs])
    return out


# ----------------------------------------------------------------------------------------------- harness

@dataclass
class Setting:
    """What every pass of one evaluation shares."""

    target: str
    postprocess: str
    seed: int
    save_maps: bool
    wall: object                       # the model's Wall (the bottom one: the paper's geometry)
    axes: Axes = field(default_factory=Axes)
    chosen: frozenset | None = None    # dataset indices that get the axes (None: every image)
    clock: dict = field(default_factory=lambda: {"forward": 0.0, "backward": 0.0})
    name: str = "dataset"              # how progress names the dataset
    classes: dict | None = None        # `label_space`: do the dataset's labels name the model's classes?

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.wall.input_size)

    @property
    def shapes(self) -> tuple:
        return (tuple(self.wall.grid), self.size)

    @cached_property
    def seen(self) -> torch.Tensor:
        """(H, W) bool: the pixels in front of the wall (deletion removes these)."""
        return self.wall.seen_mask()

    @cached_property
    def read_cells(self) -> np.ndarray:
        """(H, W) bool: the pixels under the feature cells the head reads (the randomisation check's cells)."""
        return self.wall.read_cells().numpy()


def evaluate(methods, dataset: str, model: str, *, target: str = "predicted", postprocess: str = "gradcam-lib",
             batch_size: int = 8, limit: int | None = None, device: str = "auto", save_maps: bool = False,
             out: str | Path = "results", seed: int = 0, progress: bool = True, method_config: dict | None = None,
             figure: bool = True, allow_incomplete: bool = False, axes: Axes | None = None) -> list[MethodRun]:
    """Run `methods` (specs or SaliencyMethod instances) and write one record + Parquet per method.
    Returns a MethodRun per method (status done / skipped / failed). Everything is checked before any work:
    the arguments, the output folder, the dataset (complete, labels within its classes), the model (finite
    weights, the dataset's wall; with target="label", the dataset's classes are the model's). `progress`: one bar
    per pass on a terminal, plain lines on the `stackbench` logger elsewhere; False shows nothing (and silences
    the bars of datasets and huggingface_hub)."""
    _check_args(target, postprocess, batch_size, limit, seed)
    if axes is not None and not isinstance(axes, Axes):
        raise StackbenchError(f"axes {axes!r:.40}: give a stackbench.axes.Axes (e.g. Axes(sample=20)) or None")
    if method_config is not None and not isinstance(method_config, dict):
        raise StackbenchError(f"method_config {method_config!r:.40}: a dict of method name -> options")
    instances = _instances(methods, method_config)
    dev = pick_device(device)
    with quiet_libraries(progress):
        return _evaluate(instances, dataset, model, dev, target, postprocess, batch_size, limit, save_maps, out,
                         seed, progress, figure, allow_incomplete, axes)


def _evaluate(instances, dataset, model, dev, target, postprocess, batch_size, limit, save_maps, out, seed, progress,
              figure, allow_incomplete, axes) -> list[MethodRun]:
    ds, info, net = _open_inputs(dataset, model, dev, seed, target, allow_incomplete)
    out = writable_folder(out)  # created only once every input checks
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    ds = ds.cast_column("image", datasets.Image(decode=False))  # hash and decode the stored bytes ourselves
    axes = (axes or Axes()).fitted(len(ds))
    setting = Setting(target, postprocess, seed, save_maps, net.wall, axes, axes.chosen(len(ds), seed),
                      name=Path(info["ref"].rstrip("/")).name or info["ref"], classes=label_space(ds, net))
    views = Views(net, seed, orientations_for(seed, range(len(ds)) if setting.chosen is None else setting.chosen))
    base = _base_record(out, info, net, dev, setting, limit, batch_size, views.rand_seed)
    runs = [MethodRun(m, m.name) for m in instances]
    _resume(runs, out, base)
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
    _finish(todo, setting, base, out, all_ids, all_shas, skipped)
    if figure:
        grid = [r for r in runs if r.grid_maps]
        if grid:
            from .figures import overlay_grid

            images, ids = _grid_images(ds, setting.size, GRID_ITEMS)
            overlay_grid(images, {r.name: np.stack(r.grid_maps)[:len(images)] for r in grid}, ids,
                         net.wall.dead_from, out / "overlays.png")
    return runs


def _finish(todo, setting: Setting, base, out, all_ids, all_shas, skipped) -> None:
    """Share the shared passes' time among the methods and write each finished method's rows and record."""
    share = setting.clock["forward"] / max(1, len(todo))
    grad_users = [r for r in todo if "gradients" in r.method.needs]
    for r in todo:
        if r.status != "pending":
            continue
        if not r.rows:
            why = f"; the first: {skipped[0]['id']}: {skipped[0]['reason']}" if skipped else ""
            r.status, r.error = "failed", f"no item could be evaluated (all {len(skipped)} were skipped{why})"
            continue
        r.seconds += share + (setting.clock["backward"] / len(grad_users) if r in grad_users else 0.0)
        r.record = _write(r, base, out, all_ids, all_shas, skipped, setting)
        r.status = "done"


def _check_args(target, postprocess, batch_size, limit, seed) -> None:
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


def _instances(methods, method_config) -> list[SaliencyMethod]:
    if isinstance(methods, (str, SaliencyMethod)) or inspect.isclass(methods):
        methods = [methods]
    given = [m for m in methods if isinstance(m, SaliencyMethod)]
    specs = [m for m in methods if not isinstance(m, SaliencyMethod)]
    return given + resolve_methods(specs, **(method_config or {})) if specs or not given else given


def _open_inputs(dataset, model, dev, seed, target, allow_incomplete):
    """(dataset, its info, the model), checked against each other."""
    from .models import load_model

    ds, info = open_dataset(dataset, allow_incomplete=allow_incomplete)
    net = load_model(model, seed=seed, device=dev)
    walls = sorted(set(int(v) for v in ds.unique("wall_row")))
    if walls != [net.wall.dead_from]:
        raise StackbenchError(f"dataset {info['ref']} puts the wall at row {', '.join(map(str, walls))} but model "
                              f"{net.ref} is blind from row {net.wall.dead_from}; evaluate it with a model of the same "
                              "wall (or regenerate the dataset for this model)")
    if target == "label":
        refuse_label_target(label_space(ds, net), info["ref"], net.ref)
    return ds, info, net


# A model's top-1 on the scored images within this factor of chance (1/classes) is warned about: its maps explain
# guesses. 2x: a 10-class model below 20% (the issue's 13.5% model), a 1000-class model below 0.2%.
NEAR_CHANCE = 2.0


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


def accuracy(rows: list[dict], space: dict | None) -> dict | None:
    """The model's top-1 on the scored images against the dataset's labels (null when they name other classes)."""
    if space is None or not rows:
        return None
    hit = sum(int(r["predicted"]) == int(r["label"]) for r in rows)
    k = space["num_classes"]
    return {"top1": hit / len(rows) if space["aligned"] else None, "n": len(rows), "chance": 1.0 / k,
            "classes": space["basis"] if space["aligned"] else "differ"}


def near_chance(acc: dict | None) -> bool:
    return bool(acc) and acc.get("top1") is not None and acc["top1"] < NEAR_CHANCE * acc["chance"]


def _base_record(out: Path, info, net, dev, setting: Setting, limit, batch_size, rand_seed: int) -> dict:
    """What every method's record shares; local paths relative to `out`, where the records are written."""
    from .models import weights_fingerprint

    param = next(net.parameters())
    return {
        "schema": SCHEMA,
        "dataset": {"ref": portable(info["ref"], out), "fingerprint": info["fingerprint"], "n": info["n"], "revision": info.get("revision"),
                    "kind": (info.get("generation") or {}).get("kind")},
        "model": {"ref": portable(net.ref, out), "name": getattr(net, "name", type(net).__name__), "fingerprint": weights_fingerprint(net),
                  "wall": net.wall.to_dict()},
        "target": setting.target,
        "postprocess": {"name": setting.postprocess, "definition": M.POSTPROCESS[setting.postprocess]},
        "axes": setting.axes.describe(setting.seed, rand_seed),
        "env": {**versions("torch", "grad-cam", "captum", "numpy", "opencv", "scipy"), "device": dev.type,
                "dtype": str(param.dtype).replace("torch.", "")},
        "seeds": {"run": setting.seed, "bootstrap": setting.seed},
        "run": {"limit": limit, "batch_size": batch_size,
                "preprocess": "RGB, ToTensor, ImageNet mean/std; images used at their stored size"},
    }


def _resume(runs: list[MethodRun], out: Path, base: dict) -> None:
    """Mark as skipped the methods whose record of the same identity (and untouched rows) is already in `out`."""
    from .models import file_sha256

    for r in runs:
        stem = file_stem(r.name)
        r.record_path = out / f"{stem}.json"
        if r.record_path.is_file() and (out / f"{stem}.parquet").is_file():
            try:
                old = read_record(r.record_path)
                probe = {**base, "method": r.method.describe()}
                if identity(old) == identity(probe) and file_sha256(out / f"{stem}.parquet") == old["rows"]["sha256"]:
                    r.status, r.record = "skipped", old
            except StackbenchError:
                pass  # unreadable or tampered: compute it again


def _loop(todo, ds, views: Views, setting: Setting, batch_size, progress):
    """The batches: every view's shared pass, then every live method. Returns (skipped, ids, image shas)."""
    for r in todo:
        r.views = Instances(r.method, views, setting.seed)
        _attempt(r, "setup", [], lambda r=r: r.views.get("canonical"))
    bar = Progress(len(ds), f"evaluate {setting.name}", enabled=progress)  # one bar: the methods share each pass
    skipped: list[dict] = []
    all_ids, all_shas = [], []
    try:
        for idx, ids, labels, shas, x01 in iter_batches(ds, batch_size, setting.size, skipped):
            live = [r for r in todo if r.status == "pending"]
            if not live:
                break
            all_ids += ids
            all_shas += shas
            _batch(live, views, setting, x01, idx, ids, labels)
            bar.update(len(ids), postfix=_rates(todo, len(all_ids)))
    finally:
        bar.close()
        for r in todo:
            reason = r.views.teardown() if r.views is not None else None
            if reason and r.status == "pending":
                r.status, r.error = "failed", f"method {r.name}: teardown raised {reason}"
    return skipped, all_ids, all_shas


def _rates(runs, n: int) -> str:
    """The bar's postfix: each method's own rate (its maps and axes; the shared pass is apart), slowest first, so
    a narrow terminal still shows the ones that set the pace."""
    parts = sorted(runs, key=lambda r: (r.status != "failed", -r.seconds))
    return ", ".join(f"{r.name} FAILED" if r.status == "failed" else f"{r.name} {rate(n, r.seconds)}" for r in parts)


def _attempt(r: MethodRun, what: str, ids, call):
    """Run one step of a method; on failure (its own, or a failed setup of a view) mark it failed and return None."""
    if r.status != "pending":
        return None
    t0 = time.perf_counter()
    try:
        return call()
    except MethodFailure as f:
        item = ids[int(f.item)] if f.item else (ids[0] if ids else "-")
        where = "" if what == "main" else f" in the {what} pass"
        r.status, r.error = "failed", f"method {r.name} {f.reason}{where} (first offending item: {item!r})"
    except BaseException as e:  # noqa: BLE001 - a method's setup (of any view) is foreign code too
        reason = foreign_failure(e)
        if reason is None:
            raise
        phase = "setup" if what in ("setup", "main") else f"setup for the {what} pass"
        r.status, r.error = "failed", f"method {r.name}: {phase} raised {reason}"
    finally:
        r.seconds += time.perf_counter() - t0
    r.rows, r.maps, r.grid_maps = [], [], []
    return None


def _need_grads(runs) -> bool:
    return any("gradients" in r.method.needs for r in runs if r.status == "pending")


def _batch(live, views: Views, st: Setting, x01, idx, ids, labels) -> None:
    """One batch through every view; appends each live method's per-image rows."""
    n = len(ids)
    canon = views.backbone("canonical")
    batch = make_batch(canon, x01, st.target, labels, idx, ids, st.seed, _need_grads(live), st.clock)
    on = [j for j in range(n) if st.chosen is None or idx[j] in st.chosen]  # the images that get the axes
    ends = deletion_ends(canon, batch.x[on], batch.targets[on], st.seen) if on else None
    got = {}
    for r in live:
        def main(r=r):
            maps, empty = scored_maps(r.views.get("canonical"), batch, st.shapes, st.postprocess, st.size)
            v = {"maps": maps, "empty": empty, **M.per_image(maps, st.wall.dead_from),
                 "hidden_empty": np.zeros(n, bool), **{k: np.full(n, np.nan) for k in AXES_METRICS}}
            if on:
                v["deletion_auc"][on] = M.deletion_auc(deletion_probs(
                    canon, batch.x[on], maps[on], batch.targets[on], st.seen, st.axes.deletion_steps, st.seed,
                    [idx[j] for j in on], st.axes.deletion_chunk, ends))
            return v
        got[r.name] = _attempt(r, "main", ids, main)
    orientation = [orientation_for(st.seed, i) if j in on else None for j, i in enumerate(idx)]
    if on:
        _hidden(live, views, st, got, batch, x01, orientation)
        _randomisation(live, views, st, got, batch, x01, on)
    predicted = batch.logits.argmax(dim=1).tolist()
    for r in live:
        if r.status == "pending":
            _add_rows(r, got[r.name], batch, labels, predicted, orientation, st.save_maps)


def _hidden(live, views: Views, st: Setting, got: dict, batch, x01, orientation) -> None:
    """mu behind a hidden wall: each image (of the sample) through its orientation's model, the map turned back."""
    for g in dict.fromkeys(o for o in orientation if o is not None):
        pos = [j for j, o in enumerate(orientation) if o == g]
        runs = [r for r in live if r.status == "pending"]
        if not runs:
            return
        sub = make_batch(views.backbone(g), apply(x01[pos], g), st.target, None, [batch.index[j] for j in pos],
                         [batch.ids[j] for j in pos], st.seed, _need_grads(runs), st.clock, targets=batch.targets[pos])
        for r in runs:
            def hidden(r=r, g=g, sub=sub):
                return scored_maps(r.views.get(g), sub, st.shapes, st.postprocess, st.size)
            res = _attempt(r, f"hidden-wall ({g})", sub.ids, hidden)
            if res is not None:
                got[r.name]["mu_hidden"][pos] = M.mu(apply(res[0], inverse(g)), st.wall.dead_from)
                got[r.name]["hidden_empty"][pos] = res[1]


def _randomisation(live, views: Views, st: Setting, got: dict, batch, x01, on: list[int]) -> None:
    """The randomisation check: the same images (of the sample) and targets through the re-initialised model."""
    runs = [r for r in live if r.status == "pending"]
    if not runs:
        return
    sub = make_batch(views.backbone("random"), x01[on], st.target, None, [batch.index[j] for j in on],
                     [batch.ids[j] for j in on], st.seed, _need_grads(runs), st.clock, targets=batch.targets[on])
    for r in runs:
        res = _attempt(r, "randomisation", sub.ids, lambda r=r: scored_maps(r.views.get("random"), sub, st.shapes,
                                                                             st.postprocess, st.size))
        if res is not None:
            got[r.name]["rand_corr"][on] = M.rank_correlation(got[r.name]["maps"][on], res[0], st.read_cells)


def _add_rows(r: MethodRun, v: dict, batch, labels, predicted, orientation, save_maps) -> None:
    maps = v["maps"]
    num = lambda a, j: None if np.isnan(a[j]) else float(a[j])  # noqa: E731
    for j, ident in enumerate(batch.ids):
        r.rows.append({"id": ident, "index": int(batch.index[j]), "label": int(labels[j]),
                       "target": int(batch.targets[j]), "predicted": int(predicted[j]),
                       **{k: num(v[k], j) for k in M.PER_IMAGE}, "map_empty": bool(v["empty"][j]),
                       "orientation": orientation[j], "mu_hidden": num(v["mu_hidden"], j),
                       "hidden_empty": None if orientation[j] is None else bool(v["hidden_empty"][j]),
                       "deletion_auc": num(v["deletion_auc"], j),
                       "rand_corr": num(v["rand_corr"], j),
                       "map_sha256": hashlib.sha256(np.ascontiguousarray(maps[j], dtype=np.float32)).hexdigest()})
    if len(r.grid_maps) < GRID_ITEMS:
        r.grid_maps.extend(maps[: GRID_ITEMS - len(r.grid_maps)])
    if save_maps:
        r.maps.append(maps.astype(np.float16))


def _write(r: MethodRun, base: dict, out: Path, ids, shas, skipped, setting: Setting) -> dict:
    stem = file_stem(r.name)
    data = rows_table(r.rows)
    atomic_write_bytes(out / f"{stem}.parquet", data)
    n = len(r.rows)
    if setting.save_maps and r.maps:
        buf = io.BytesIO()
        np.savez_compressed(buf, ids=np.array([row["id"] for row in r.rows]), maps=np.concatenate(r.maps))
        atomic_write_bytes(out / f"{stem}.maps.npz", buf.getvalue())
    metrics = aggregate_rows(r.rows, setting.seed)
    record = {
        **base,
        "method": r.method.describe(),
        "metrics": metrics,
        "flags": setting.axes.flags(metrics, sampled_mu(r.rows) if setting.chosen is not None else None),
        "maps": {"digest": maps_digest(r.rows)},
        "items": {"n": n, "digest": items_digest(ids, shas), "skipped": skipped},
        "rows": {"file": f"{stem}.parquet", "sha256": hashlib.sha256(data).hexdigest(),
                 "columns": list(r.rows[0])},
        **({"accuracy": acc} if (acc := accuracy(r.rows, setting.classes)) else {}),
        "timing": {"seconds": round(r.seconds, 4), "images_per_s": round(n / r.seconds, 3) if r.seconds > 0 else None},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    validate_record(record, where=f"result record of {r.name}")
    atomic_write_json(r.record_path, record)  # last: a record on disk means the rows beside it are complete
    return record


def maps_digest(rows) -> str:
    """sha256 over the per-image map digests in evaluation order: equal for two methods whose scored maps are
    bitwise identical on every image."""
    return hashlib.sha256("".join(f"{r['map_sha256']}\n" for r in rows).encode()).hexdigest()


def _grid_images(ds, size, k):
    images, ids = [], []
    for j in range(min(k, len(ds))):
        row = ds[j]
        try:
            x, _ = decode_image(row["image"]["bytes"], size)
        except Exception:  # noqa: BLE001
            continue
        images.append(x.permute(1, 2, 0).numpy())
        ids.append(str(row["id"]))
    return images, ids


def summary_rows(runs: list[MethodRun]) -> list[list]:
    """Table-1-style rows: method, n, n_empty, mu x100 mean +- std, 95% CI, dead mass, leak rate, then the board's
    axes (mu behind a hidden wall, deletion AUC, rand. corr, flags), img/s, status."""
    rows = []
    for r in runs:
        if r.record is None:
            rows.append([r.name, *["-"] * (len(SUMMARY_HEADERS) - 2), f"FAILED: {r.error}"])
            continue
        m = r.record["metrics"]
        mu = m["mu"]
        f = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
        g = lambda k: "-" if (m.get(k) or {}).get("mean") is None else f"{m[k]['mean']:.3f}"  # noqa: E731
        ci = "-" if mu["ci95"] is None else f"[{f(mu['ci95'][0])}, {f(mu['ci95'][1])}]"
        ips = r.record["timing"].get("images_per_s")
        flags = [k.replace("_", "-") for k, v in (r.record.get("flags") or {}).items() if v]
        acc = (r.record.get("accuracy") or {}).get("top1")
        rows.append([r.name, mu["n"], mu["n_empty"], f"{f(mu['mean'])} ± {f(mu['std'])}", ci,
                     f(m["dead_mass"]["mean"]), f(m["leak_rate"]["mean"]), f((m.get("mu_hidden") or {}).get("mean")),
                     g("deletion_auc"), g("rand_corr"), ", ".join(flags) or "-", "-" if acc is None else f"{acc:.1%}",
                     "-" if ips is None else f"{ips:.2f}", "resumed" if r.status == "skipped" else "done"])
    return rows


SUMMARY_HEADERS = ["method", "n", "n_empty", "mu x100", "95% CI", "dead mass x100", "leak rate x100", "mu hidden x100",
                   "deletion AUC", "rand. corr", "flags", "model top-1", "img/s", "status"]


def accuracy_note(runs: list[MethodRun]) -> str | None:
    """One line when the model's top-1 on the scored images is near chance, or could not be measured because the
    dataset's labels name other classes than the model's."""
    rec = next((r.record for r in runs if r.record and r.record.get("accuracy")), None)
    if rec is None:
        return None
    acc, model = rec["accuracy"], rec["model"]["ref"]
    if acc["top1"] is None:
        return (f"model top-1 not measured: the dataset's labels name other classes than model {model}'s (mu is "
                "still measured, on the classes the model predicts)")
    if near_chance(acc):
        return (f"warning: model {model} has top-1 {acc['top1']:.1%} on these {acc['n']} images, near chance "
                f"({acc['chance']:.1%}; warned below {NEAR_CHANCE:g}x chance): its maps explain guesses, not a "
                "trained classifier's decisions; check the model and that the dataset fits it")
    return None


def summary_notes(runs: list[MethodRun]) -> list[str]:
    """The lines printed under the summary table: the axes' sample, the model's accuracy when it is suspect."""
    return [n for n in (sample_note(runs), accuracy_note(runs)) if n]


def sample_note(runs: list[MethodRun]) -> str | None:
    """One line when the axes ran on a sample (the summary's axis columns are over those images only)."""
    k = axes_sample(r.record for r in runs if r.record)
    return None if k is None else (
        f"the board's axes (mu hidden, deletion AUC, rand. corr, flags) on a seeded sample of {M.images_phrase(k)} "
        "(the rows with an orientation), mu on every image; such a record is not a board row")
