"""The evaluation harness: run saliency methods on a STACK dataset through a walled model and score them.

    evaluate(["GradCAM", "HiResCAM"], "stack-mix-mini", "minivgg-masked@random", out="results")

Per batch: one forward to the target layer serves every method (targets, activations, logits); methods
that need gradients share one backward through the head only; other methods run their own extra passes.
Each method's maps are checked (shape, dtype, finite), post-processed as the metric defines, and scored per
image. Per method it writes `<out>/<method>.parquet` (per-image rows) then `<out>/<method>.json` (the
`stackbench.result/1` record), both atomically; a method whose record is already there with the same
identity is skipped (resume). A faulty method is reported with its first offending item; the others finish.
"""
from __future__ import annotations

import hashlib
import io
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import datasets
import numpy as np
import torch

from . import metrics as M
from .datafolder import atomic_write_bytes, atomic_write_json, open_dataset, pixel_sha256, writable_folder
from .errors import StackbenchError, first_line, foreign_failure, watching_ctrl_c
from .methods import Backbone, Batch, SaliencyMethod, get_method, list_methods
from .records import SCHEMA, identity, read_record, validate_record
from .versions import versions

TARGET_RULES = ("predicted", "label")
GRID_ITEMS = 4  # images kept for the overlay grid


class MethodFailure(Exception):
    def __init__(self, reason: str, item: str):
        super().__init__(reason)
        self.reason, self.item = reason, item


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


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise StackbenchError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise StackbenchError(f"--device {device}: CUDA is not available here; use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise StackbenchError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda", "mps", "xpu"):
        raise StackbenchError(f"--device {device}: unsupported device type; use auto, cpu, cuda or cuda:N")
    return dev


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


# ----------------------------------------------------------------------------------------------- passes

def shared_pass(backbone: Backbone, x: torch.Tensor, rule: str, labels, need_grads: bool):
    """One forward to the target layer (and, if needed, one backward through the head only).
    Returns (logits, targets, activations, gradients or None)."""
    A = backbone.activations(x)
    if not need_grads:
        with torch.no_grad():
            logits = backbone.head(A)
        targets = choose_targets(logits, rule, labels)
        return logits, targets, A, None
    with torch.enable_grad():
        leaf = A.detach().requires_grad_(True)
        logits = backbone.head(leaf)
        targets = choose_targets(logits, rule, labels)
        (G,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), leaf)
    return logits.detach(), targets, A, G


def choose_targets(logits: torch.Tensor, rule: str, labels) -> torch.Tensor:
    if rule == "predicted":
        return logits.detach().argmax(dim=1)
    return torch.as_tensor(labels, dtype=torch.long, device=logits.device)


def check_maps(out, n: int, shapes=()) -> np.ndarray:
    """A method's output -> float32 numpy (n, h, w), or MethodFailure naming the first offending item. `shapes`:
    the (h, w) a map may have (the target layer's grid, the input size); anything else is not stretched to fit."""
    if isinstance(out, torch.Tensor):
        if not (out.is_floating_point()):
            raise MethodFailure(f"returned dtype {out.dtype}, expected a floating-point map", "")
        out = out.detach().float().cpu().numpy()
    elif isinstance(out, np.ndarray):
        if not np.issubdtype(out.dtype, np.floating):
            raise MethodFailure(f"returned dtype {out.dtype}, expected a floating-point map", "")
    else:
        raise MethodFailure(f"returned a {type(out).__name__}, expected a tensor or array (N, h, w)", "")
    if out.ndim != 3 or out.shape[0] != n or min(out.shape[1:]) < 1:
        raise MethodFailure(f"returned shape {tuple(out.shape)}, expected ({n}, h, w)", "")
    if shapes and tuple(out.shape[1:]) not in [tuple(s) for s in shapes]:
        allowed = " or ".join(f"({n}, {h}, {w})" for h, w in shapes)
        raise MethodFailure(f"returned maps of shape {tuple(out.shape)}; a map is the target layer's grid or the "
                            f"input size: {allowed}", "")
    bad = ~np.isfinite(out).all(axis=(1, 2))
    if bad.any():
        i = int(np.argmax(bad))
        raise MethodFailure("returned NaN or inf", str(i))
    return out.astype(np.float32, copy=False)


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


def aggregate_rows(rows: list[dict], seed: int) -> dict:
    return {m: M.aggregate([np.nan if r[m] is None else r[m] for r in rows], seed=seed) for m in M.PER_IMAGE}


# ----------------------------------------------------------------------------------------------- harness

def evaluate(methods, dataset: str, model: str, *, target: str = "predicted", postprocess: str = "gradcam-lib",
             batch_size: int = 8, limit: int | None = None, device: str = "auto", save_maps: bool = False,
             out: str | Path = "results", seed: int = 0, progress: bool = True, method_config: dict | None = None,
             figure: bool = True, allow_incomplete: bool = False) -> list[MethodRun]:
    """Run `methods` (specs or SaliencyMethod instances) and write one record + Parquet per method.
    Returns a MethodRun per method (status done / skipped / failed). Everything is checked before any work:
    the arguments, the output folder, the dataset (complete, labels within its classes), the model (finite
    weights, the dataset's wall; with target="label", the labels within its classes)."""
    _check_args(target, postprocess, batch_size, limit)
    instances = _instances(methods, method_config)
    dev = pick_device(device)
    ds, info, net = _open_inputs(dataset, model, dev, seed, target, allow_incomplete)
    out = writable_folder(out)  # created only once every input checks
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    ds = ds.cast_column("image", datasets.Image(decode=False))  # hash and decode the stored bytes ourselves
    base = _base_record(dataset, info, net, dev, target, postprocess, seed, limit, batch_size)
    runs = [MethodRun(m, m.name) for m in instances]
    _resume(runs, out, base)
    todo = [r for r in runs if r.status == "pending"]
    if not todo:
        return runs
    size = tuple(net.wall.input_size)
    with watching_ctrl_c():
        skipped, all_ids, all_shas, shared_s = _loop(todo, ds, Backbone(net), dev, target, postprocess, batch_size,
                                                     seed, save_maps, progress)
    share = shared_s["forward"] / max(1, len(todo))
    grad_users = [r for r in todo if "gradients" in r.method.needs]
    for r in todo:
        if r.status != "pending":
            continue
        if not r.rows:
            why = f"; the first: {skipped[0]['id']}: {skipped[0]['reason']}" if skipped else ""
            r.status, r.error = "failed", f"no item could be evaluated (all {len(skipped)} were skipped{why})"
            continue
        r.seconds += share + (shared_s["backward"] / len(grad_users) if r in grad_users else 0.0)
        r.record = _write(r, base, out, all_ids, all_shas, skipped, seed, r.seconds, save_maps)
        r.status = "done"
    if figure:
        grid = [r for r in runs if r.grid_maps]
        if grid:
            from .figures import overlay_grid

            images, ids = _grid_images(ds, size, GRID_ITEMS)
            overlay_grid(images, {r.name: np.stack(r.grid_maps)[:len(images)] for r in grid}, ids,
                         net.wall.dead_from, out / "overlays.png")
    return runs


def _check_args(target, postprocess, batch_size, limit) -> None:
    if target not in TARGET_RULES:
        raise StackbenchError(f"--target {target!r}: expected one of {', '.join(TARGET_RULES)}")
    if postprocess not in M.POSTPROCESS:
        raise StackbenchError(f"--postprocess {postprocess!r}: expected one of {', '.join(M.POSTPROCESS)}")
    if batch_size < 1:
        raise StackbenchError(f"--batch-size {batch_size}: must be at least 1")
    if limit is not None and limit < 1:
        raise StackbenchError(f"--limit {limit}: must be at least 1")


def _instances(methods, method_config) -> list[SaliencyMethod]:
    if isinstance(methods, (str, SaliencyMethod)):
        methods = [methods]
    given = [m for m in methods if isinstance(m, SaliencyMethod)]
    specs = [m for m in methods if not isinstance(m, SaliencyMethod)]
    return given + (resolve_methods(specs, **(method_config or {})) if specs else [])


def _open_inputs(dataset, model, dev, seed, target, allow_incomplete):
    """(dataset, its info, the model), checked against each other."""
    from .models import load_model

    ds, info = open_dataset(dataset, allow_incomplete=allow_incomplete)
    net = load_model(model, seed=seed, device=dev)
    walls = sorted(set(int(v) for v in ds.unique("wall_row")))
    if walls != [net.wall.dead_from]:
        raise StackbenchError(f"dataset {dataset} puts the wall at row {', '.join(map(str, walls))} but model "
                              f"{net.ref} is blind from row {net.wall.dead_from}; evaluate it with a model of the same "
                              "wall (or regenerate the dataset for this model)")
    if target == "label":
        top = int(max(ds.data.column("label").to_numpy(zero_copy_only=False), default=-1))
        if top >= net.num_classes:
            raise StackbenchError(f"--target label: dataset {dataset} has labels up to {top} but model {net.ref} has "
                                  f"{net.num_classes} classes; use --target predicted, or a model trained on the "
                                  "dataset's classes")
    return ds, info, net


def _base_record(dataset, info, net, dev, target, postprocess, seed, limit, batch_size) -> dict:
    from .models import model_sha256

    param = next(net.parameters())
    return {
        "schema": SCHEMA,
        "dataset": {"ref": dataset, "fingerprint": info["fingerprint"], "n": info["n"], "revision": info.get("revision"),
                    "kind": (info.get("generation") or {}).get("kind")},
        "model": {"ref": net.ref, "name": getattr(net, "name", type(net).__name__), "sha256": model_sha256(net),
                  "wall": net.wall.to_dict()},
        "target": target,
        "postprocess": {"name": postprocess, "definition": M.POSTPROCESS[postprocess]},
        "env": {**versions("torch", "grad-cam", "captum", "numpy", "opencv"), "device": dev.type,
                "dtype": str(param.dtype).replace("torch.", "")},
        "seeds": {"run": seed, "bootstrap": seed},
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


def _guarded(r: MethodRun, what: str, call) -> bool:
    """Run a method's setup/teardown; a failure (SystemExit included) fails that method alone. A real Ctrl-C
    propagates."""
    try:
        call()
        return True
    except BaseException as e:  # noqa: BLE001 - foreign code may raise anything
        reason = foreign_failure(e)
        if reason is None:
            raise
        if r.status == "pending":
            r.status, r.error = "failed", f"method {r.name}: {what} raised {reason}"
        return False


def _loop(todo, ds, backbone, dev, target, postprocess, batch_size, seed, save_maps, progress):
    """The batches: one shared pass, then every live method. Returns (skipped, ids, image shas, shared seconds)."""
    wall = backbone.wall
    for r in todo:
        _guarded(r, "setup", lambda r=r: r.method.setup(backbone, seed=seed))
    need_grads = any("gradients" in r.method.needs for r in todo if r.status == "pending")
    bars = _bars(todo, len(ds), progress)
    skipped: list[dict] = []
    all_ids, all_shas = [], []
    shared_s = {"forward": 0.0, "backward": 0.0}
    size = tuple(wall.input_size)
    shapes = (tuple(wall.grid), size)
    try:
        for idx, ids, labels, shas, x01 in iter_batches(ds, batch_size, size, skipped):
            live = [r for r in todo if r.status == "pending"]
            if not live:
                break
            all_ids += ids
            all_shas += shas
            x01 = x01.to(dev)
            x = backbone.normalize(x01)
            t0 = time.perf_counter()
            logits, targets, A, G = shared_pass(backbone, x, target, labels,
                                                need_grads and any("gradients" in r.method.needs for r in live))
            shared_s["forward" if G is None else "backward"] += time.perf_counter() - t0
            predicted = logits.argmax(dim=1).tolist()
            batch = Batch(x=x, x01=x01, targets=targets, logits=logits, index=idx, ids=ids, backbone=backbone,
                          activations=A, gradients=G, seed=seed)
            for r in live:
                _run_one(r, batch, labels, predicted, postprocess, wall.dead_from, size, save_maps, shapes)
                if bars:
                    bars[r.name].update(len(ids))
                    if r.status == "failed":
                        bars[r.name].set_postfix_str("FAILED")
    finally:
        for b in (bars or {}).values():
            b.close()
        for r in todo:
            _guarded(r, "teardown", r.method.teardown)
    return skipped, all_ids, all_shas, shared_s


def _bars(runs, total, progress):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return {r.name: tqdm(total=total, desc=f"{r.name:>20}", unit="img", position=i, leave=True, dynamic_ncols=True)
            for i, r in enumerate(runs)}


def _run_one(r: MethodRun, batch: Batch, labels, predicted, postprocess, dead_from, size, save_maps, shapes):
    t0 = time.perf_counter()
    try:
        try:
            out = r.method.explain(batch)
        except MethodFailure:
            raise
        except BaseException as e:  # noqa: BLE001 - a faulty method fails alone, even one that calls sys.exit
            reason = foreign_failure(e)
            if reason is None:  # the user's Ctrl-C
                raise
            raise MethodFailure(f"raised {reason}", "0") from None
        maps = check_maps(out, len(batch.ids), shapes)
    except MethodFailure as f:
        item = batch.ids[int(f.item)] if f.item else batch.ids[0]
        r.status = "failed"
        r.error = f"method {r.name} {f.reason} (first offending item: {item!r})"
        r.rows, r.maps, r.grid_maps = [], [], []
        return
    pp = M.postprocess(maps, postprocess, size)
    r.seconds += time.perf_counter() - t0
    vals = M.per_image(pp, dead_from)
    empty = M.is_empty(pp)
    for j, ident in enumerate(batch.ids):
        r.rows.append({"id": ident, "index": int(batch.index[j]), "label": int(labels[j]),
                       "target": int(batch.targets[j]), "predicted": int(predicted[j]),
                       **{k: (None if np.isnan(v[j]) else float(v[j])) for k, v in vals.items()},
                       "empty": bool(empty[j])})
    if len(r.grid_maps) < GRID_ITEMS:
        r.grid_maps.extend(pp[: GRID_ITEMS - len(r.grid_maps)])
    if save_maps:
        r.maps.append(pp.astype(np.float16))


def _write(r: MethodRun, base: dict, out: Path, ids, shas, skipped, seed, seconds, save_maps) -> dict:
    stem = file_stem(r.name)
    data = rows_table(r.rows)
    atomic_write_bytes(out / f"{stem}.parquet", data)
    n = len(r.rows)
    if save_maps and r.maps:
        buf = io.BytesIO()
        np.savez_compressed(buf, ids=np.array([row["id"] for row in r.rows]), maps=np.concatenate(r.maps))
        atomic_write_bytes(out / f"{stem}.maps.npz", buf.getvalue())
    record = {
        **base,
        "method": r.method.describe(),
        "metrics": aggregate_rows(r.rows, seed),
        "items": {"n": n, "digest": items_digest(ids, shas), "skipped": skipped},
        "rows": {"file": f"{stem}.parquet", "sha256": hashlib.sha256(data).hexdigest(),
                 "columns": list(r.rows[0])},
        "timing": {"seconds": round(seconds, 4), "images_per_s": round(n / seconds, 3) if seconds > 0 else None},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    validate_record(record, where=f"result record of {r.name}")
    atomic_write_json(r.record_path, record)  # last: a record on disk means the rows beside it are complete
    return record


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
    """Table-1-style rows: method, n, n_empty, mu x100 mean +- std, 95% CI, dead mass, leak rate, img/s, status."""
    rows = []
    for r in runs:
        if r.record is None:
            rows.append([r.name, "-", "-", "-", "-", "-", "-", "-", f"FAILED: {r.error}"])
            continue
        m = r.record["metrics"]
        mu = m["mu"]
        f = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
        ci = "-" if mu["ci95"] is None else f"[{f(mu['ci95'][0])}, {f(mu['ci95'][1])}]"
        ips = r.record["timing"].get("images_per_s")
        rows.append([r.name, mu["n"], mu["n_empty"], f"{f(mu['mean'])} ± {f(mu['std'])}", ci,
                     f(m["dead_mass"]["mean"]), f(m["leak_rate"]["mean"]), "-" if ips is None else f"{ips:.2f}",
                     "resumed" if r.status == "skipped" else "done"])
    return rows


SUMMARY_HEADERS = ["method", "n", "n_empty", "mu x100", "95% CI", "dead mass x100", "leak rate x100", "img/s", "status"]
