"""The batch loop: per batch and view of the model, one shared pass, then every live method's maps and scores.

A method that fails (its own fault, or a failed set-up of one of its views) is marked failed with the item and
pass it failed in; the others go on."""
from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import metrics as M
from ..axes import Views, deletion_curves, deletion_ends, orientation_for
from ..datafolder import pixel_sha256
from ..errors import first_line, foreign_failure
from ..isolation.pool import worker_pool
from ..isolation.session import SetupFailure, WorkerFailure, in_call
from ..methods.passes import MethodFailure, make_batch, score_output
from ..progress import rate
from ..records import AXES_METRICS
from ..wall import apply, inverse
from .state import MethodRun, Setting

GRID_ITEMS = 4  # images kept for the overlay grid


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


def _image_bytes(image) -> bytes | None:
    """An undecoded image cell's bytes (stored, or read from its path); None when there are none."""
    data = (image or {}).get("bytes") if isinstance(image, dict) else None
    if data is None and isinstance(image, dict) and image.get("path"):
        try:
            data = Path(image["path"]).read_bytes()
        except OSError:
            data = None
    return data


def iter_batches(ds, batch_size: int, size: tuple[int, int], skipped: list, start: int = 0, stop: int | None = None):
    """Yield (indices, ids, labels, image_sha256s, x01) per batch of items [start, stop); undecodable items go to
    `skipped`."""
    stop = len(ds) if stop is None else stop
    for first in range(start, stop, batch_size):
        chunk = ds[first:min(first + batch_size, stop)]
        idx, ids, labels, shas, xs = [], [], [], [], []
        columns = zip(chunk["id"], chunk["image"], chunk["label"], strict=True)
        for j, (ident, image, label) in enumerate(columns):
            data = _image_bytes(image)
            try:
                if data is None:
                    raise ValueError("no image bytes")
                x, sha = decode_image(data, size)
            except Exception as e:  # noqa: BLE001 - one bad item never stops the run
                skipped.append({"id": str(ident), "reason": first_line(e)})
                continue
            xs.append(x)
            idx.append(first + j)
            ids.append(str(ident))
            labels.append(int(label))
            shas.append(sha)
        if xs:
            yield idx, ids, labels, shas, torch.stack(xs)


def run_batches(todo: list[MethodRun], ds, views: Views, setting: Setting, parts, chunks: list[int], rank: int,
                bar) -> None:
    """This process' `chunks` (`parts.Layout`): every view's shared pass per batch, then every live method; each
    method's rows of a chunk written to `parts` once the chunk is done (its failure, when it fails)."""
    need = [r for r in todo if any(not parts.has(r, c) for c in chunks)]
    with worker_pool() as pool:
        try:
            for r in need:
                _attempt(r, [Pass("setup", "canonical", None, [])], lambda r=r: _start(r, pool, views, setting))
                if r.status == "failed":
                    parts.write_failure(r, -1, rank)
            _run(need, ds, views, setting, parts, chunks, rank, bar)
        finally:
            for r in need:
                if r.session is not None:
                    r.session.close()


def _start(r: MethodRun, pool, views: Views, st: Setting) -> None:
    """The method's worker (the job's shared one for a built-in), set up on the model as it is."""
    r.session = pool.session(r.method, st.limits)
    _hand(r, views, "canonical", st.seed)


def _hand(r: MethodRun, views: Views, view: str, seed: int) -> None:
    """The view's model handed to the method's worker (once) and the method set up on it."""
    token = views.token(view)
    if token not in r.session.models:
        r.session.view(token, views.handed(view), seed)


def _run(todo: list[MethodRun], ds, views: Views, setting: Setting, parts, chunks: list[int], rank: int, bar):
    for c in chunks:
        started = [r for r in todo if r.status == "pending" and not parts.has(r, c)]
        if not started:
            continue
        skipped, ids, shas = [], [], []
        setting.clock.update(forward=0.0, backward=0.0)
        for idx, b_ids, labels, b_shas, x01 in iter_batches(ds, setting.batch_size, setting.size, skipped,
                                                            *parts.layout.span(c)):
            live = [r for r in started if r.status == "pending"]
            if not live:
                break
            ids += b_ids
            shas += b_shas
            _batch(live, views, setting, x01, idx, b_ids, labels)
            bar.update(len(b_ids), postfix=_rates(todo))
        parts.write_chunk(c, ids, shas, skipped, dict(setting.clock))
        for r in started:
            if r.status == "pending":
                parts.write_part(r, c)
            else:
                parts.write_failure(r, c, rank)
            r.rows, r.maps, r.grid_maps, r.seconds = [], [], [], 0.0
    pending = [r for r in todo if r.status == "pending"]
    _teardown(todo)  # after a Ctrl-C or an error, the workers are stopped instead (run_batches)
    for r in pending:
        if r.status == "failed":  # at teardown: after every chunk
            parts.write_failure(r, parts.layout.count, rank)


def _teardown(todo: list[MethodRun]) -> None:
    """Every method torn down in its worker, its models checked a last time; a teardown that raises fails a method
    that had not failed yet."""
    for r in todo:
        if r.session is None or r.status != "pending":
            continue
        try:
            reason = r.session.teardown()
            reason = reason and f"method {r.name}: teardown raised {reason}"
        except (WorkerFailure, SetupFailure) as e:
            reason = f"method {r.name} {e} at teardown"
        if reason:
            r.status, r.error = "failed", reason


def _rates(runs) -> str:
    """The bar's postfix: each method's own rate in the chunk at hand (its maps and axes; the shared pass is
    apart), slowest first, so a narrow terminal still shows the ones that set the pace."""
    order = sorted(runs, key=lambda r: (r.status != "failed", -r.seconds))
    return ", ".join(f"{r.name} FAILED" if r.status == "failed" else f"{r.name} {rate(len(r.rows), r.seconds)}"
                     for r in order)


@dataclass
class Pass:
    """One of a batch's passes a method is measured on: the view of the model, the batch as that view sees it (the
    images in the view's orientation, their targets), and where its images sit in the whole batch."""

    what: str          # "main", "hidden-wall (rot90)", "randomisation": how a failure names it
    view: str
    batch: object
    pos: list


def _attempt(r: MethodRun, passes: list[Pass], call):
    """Run a method's step; on failure (its own, or a failed setup of a view) mark it failed, naming the pass it
    failed in (the exception's `call`: which of `passes`; the main one when it does not say), and return None."""
    if r.status != "pending":
        return None
    t0 = time.perf_counter()
    try:
        return call()
    except BaseException as e:  # noqa: BLE001 - _failure re-raises what is not the method's
        i = getattr(e, "call", 0)
        p = passes[i if isinstance(i, int) and 0 <= i < len(passes) else 0]
        r.error = _failure(r, e, p.what, p.batch.ids if p.batch is not None else [])
    finally:
        r.seconds += time.perf_counter() - t0
    r.status, r.rows, r.maps, r.grid_maps = "failed", [], [], []
    return None


def _failure(r: MethodRun, e: BaseException, what: str, ids) -> str:
    """The row's one line for a method's failure in pass `what`; re-raises what is not the method's."""
    where = "" if what in ("main", "setup") else f" in the {what} pass"
    if isinstance(e, MethodFailure):
        item = ids[int(e.item)] if e.item and e.item.isdigit() and int(e.item) < len(ids) else (ids[0] if ids else "-")
        return f"method {r.name} {e.reason}{where} (first offending item: {item!r})"
    if isinstance(e, SetupFailure):
        phase = "setup" if what in ("setup", "main") else f"setup for the {what} pass"
        return f"method {r.name}: {phase} {e}"
    if isinstance(e, WorkerFailure):
        return f"method {r.name} {e}{where}"
    reason = foreign_failure(e)
    if reason is None:
        raise e
    return f"method {r.name}: {what} failed: {reason}"


def _maps(r: MethodRun, views: Views, passes: list[Pass], st: Setting) -> list[tuple]:
    """The method's maps of every pass, from its worker in one request, checked and post-processed as the metric
    scores them: [(maps, empty)] in the passes' order."""
    for i, p in enumerate(passes):
        with in_call(i):
            _hand(r, views, p.view, st.seed)
    raw = r.session.explain([(views.token(p.view), p.batch.message()) for p in passes])
    out = []
    for i, (p, maps) in enumerate(zip(passes, raw, strict=True)):
        with in_call(i):
            out.append(score_output(maps, len(p.batch.ids), st.shapes, st.postprocess, st.size))
    return out


def _need_grads(runs) -> bool:
    return any("gradients" in r.method.needs for r in runs if r.status == "pending")


def _batch(live, views: Views, st: Setting, x01, idx, ids, labels) -> None:
    """One batch through every view; appends each live method's per-image rows."""
    canon = views.backbone("canonical")
    grads = _need_grads(live)
    batch = make_batch(canon, x01, st.target, labels, idx, ids, st.seed, grads, st.clock)
    on = [j for j in range(len(ids)) if st.chosen is None or idx[j] in st.chosen]  # the images that get the axes
    ends = deletion_ends(canon, batch.x[on], batch.targets[on], st.seen) if on else None
    orientation = [orientation_for(st.seed, i) if j in on else None for j, i in enumerate(idx)]
    passes = [Pass("main", "canonical", batch, list(range(len(ids))))]
    if on:
        passes += _axes_passes(views, st, batch, x01, orientation, on, grads)
    predicted = batch.logits.argmax(dim=1).tolist()
    for r in live:
        v = _attempt(r, passes, lambda r=r: _measure(r, views, passes, st, on, ends))
        if v is not None:
            _add_rows(r, v, batch, labels, predicted, orientation, st.save_maps)


def _axes_passes(views: Views, st: Setting, batch, x01, orientation, on: list[int], grads: bool) -> list[Pass]:
    """The passes of the axes, each with its shared pass: mu behind a hidden wall (each image of the sample through
    its orientation's model) and the randomisation check (the same images and targets through the re-initialised
    model)."""
    out = []
    for g in dict.fromkeys(o for o in orientation if o is not None):
        pos = [j for j, o in enumerate(orientation) if o == g]
        sub = make_batch(views.backbone(g), apply(x01[pos], g), st.target, None, [batch.index[j] for j in pos],
                         [batch.ids[j] for j in pos], st.seed, grads, st.clock, targets=batch.targets[pos])
        out.append(Pass(f"hidden-wall ({g})", g, sub, pos))
    sub = make_batch(views.backbone("random"), x01[on], st.target, None, [batch.index[j] for j in on],
                     [batch.ids[j] for j in on], st.seed, grads, st.clock, targets=batch.targets[on])
    return out + [Pass("randomisation", "random", sub, on)]


def _measure(r: MethodRun, views: Views, passes: list[Pass], st: Setting, on: list[int], ends) -> dict:
    """A method's maps on every pass, scored: mu and friends on the model as it is, and on the images `on`,
    deletion, mu behind a hidden wall (the map turned back) and the randomisation check."""
    got = _maps(r, views, passes, st)
    (maps, empty), main = got[0], passes[0]
    n = len(main.batch.ids)
    v = {"maps": maps, "empty": empty, **M.per_image(maps, st.band_from),
         "hidden_empty": np.zeros(n, bool), **{k: np.full(n, np.nan) for k in AXES_METRICS}}
    if not on:
        return v
    b = main.batch
    curves = deletion_curves(views.backbone("canonical"), b.x[on], maps[on], b.targets[on], st.seen, st.axes, st.seed,
                             [b.index[j] for j in on], ends)
    auc = {c: M.deletion_auc(p) for c, p in curves.items()}
    v["deletion_auc"][on], v["morf_auc"][on], v["lerf_auc"][on] = auc["deletion"], auc["morf"], auc["lerf"]
    v["srg"][on] = M.srg(auc["morf"], auc["lerf"])
    for p, (m, e) in zip(passes[1:], got[1:], strict=True):
        if p.view == "random":
            v["rand_corr"][p.pos] = M.rank_correlation(maps[p.pos], m, st.read_cells)
            v["rand_ssim"][p.pos] = M.structural_similarity(maps[p.pos], m, st.read_cells)
        else:
            v["mu_hidden"][p.pos] = M.mu(apply(m, inverse(p.view)), st.band_from)
            v["hidden_empty"][p.pos] = e
    return v


def _num(a, j) -> float | None:
    return None if np.isnan(a[j]) else float(a[j])


def _add_rows(r: MethodRun, v: dict, batch, labels, predicted, orientation, save_maps) -> None:
    """The batch's per-image rows (the Parquet file's columns, in its order), grid maps and saved maps."""
    maps = v["maps"]
    for j, ident in enumerate(batch.ids):
        r.rows.append({"id": ident, "index": int(batch.index[j]), "label": int(labels[j]),
                       "target": int(batch.targets[j]), "predicted": int(predicted[j]),
                       **{k: _num(v[k], j) for k in M.PER_IMAGE}, "map_empty": bool(v["empty"][j]),
                       "orientation": orientation[j], "mu_hidden": _num(v["mu_hidden"], j),
                       "hidden_empty": None if orientation[j] is None else bool(v["hidden_empty"][j]),
                       **{k: _num(v[k], j) for k in AXES_METRICS if k != "mu_hidden"},
                       "map_sha256": hashlib.sha256(np.ascontiguousarray(maps[j], dtype=np.float32)).hexdigest()})
    if len(r.grid_maps) < GRID_ITEMS:
        r.grid_maps.extend(maps[: GRID_ITEMS - len(r.grid_maps)])
    if save_maps:
        r.maps.append(maps.astype(np.float16))
