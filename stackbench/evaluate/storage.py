"""Storage: what an evaluation finds in and writes to its output folder. Per method `<out>/<method>.parquet` (the
per-image rows) then `<out>/<method>.json` (the record), both atomically, so a record on disk means the rows beside
it are complete; a record of the same identity already there is reused (resume)."""
from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import numpy as np

from ..datafolder import atomic_write_bytes, atomic_write_json
from ..errors import StackbenchError
from ..metrics import rerun_tolerances
from ..records import aggregate_rows, identity, method_record, read_record, sampled_mu, validate_record
from .loop import GRID_ITEMS, decode_image
from .state import MethodRun, Setting


def file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def rows_table(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {k: [r[k] for r in rows] for k in rows[0]} if rows else {}
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    return buf.getvalue()


def resume(runs: list[MethodRun], out: Path, base: dict) -> None:
    """Mark as skipped the methods whose record of the same identity (and untouched rows) is already in `out`."""
    from ..models import file_sha256

    for r in runs:
        stem = file_stem(r.name)
        r.record_path = out / f"{stem}.json"
        for p in (r.record_path, out / f"{stem}.parquet"):
            if p.exists() and not p.is_file():  # said before any work, not after it when the file cannot be written
                raise StackbenchError(f"--out {out}: {p.name} is not a file, and method {r.name} writes its results "
                                      "there; move it away or give another --out")
        if r.record_path.is_file() and (out / f"{stem}.parquet").is_file():
            try:
                old = read_record(r.record_path)
                probe = {**base, "method": r.method.describe()}
                if identity(old) == identity(probe) and file_sha256(out / f"{stem}.parquet") == old["rows"]["sha256"]:
                    r.status, r.record = "skipped", old
            except StackbenchError:
                pass  # unreadable or tampered: compute it again


def finish(todo: list[MethodRun], setting: Setting, base, out: Path, all_ids, all_shas, skipped,
           processes: int = 1) -> None:
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
        r.record = write(r, base, out, all_ids, all_shas, skipped, setting, processes)
        r.status = "done"


def write(r: MethodRun, base: dict, out: Path, ids, shas, skipped, setting: Setting, processes: int = 1) -> dict:
    """A finished method's rows (and maps, when saved), then its record."""
    stem = file_stem(r.name)
    data = rows_table(r.rows)
    atomic_write_bytes(out / f"{stem}.parquet", data)
    if setting.save_maps and r.maps:
        buf = io.BytesIO()
        np.savez_compressed(buf, ids=np.array([row["id"] for row in r.rows]), maps=np.concatenate(r.maps))
        atomic_write_bytes(out / f"{stem}.maps.npz", buf.getvalue())
    metrics = aggregate_rows(r.rows, setting.seed)
    flags = setting.axes.flags(metrics, sampled_mu(r.rows) if setting.chosen is not None else None)
    record = method_record(base, r.method.describe(), r.rows, metrics=metrics, flags=flags, ids=ids, shas=shas,
                           skipped=skipped, rows_file=f"{stem}.parquet", rows_sha256=hashlib.sha256(data).hexdigest(),
                           classes=setting.classes, seconds=r.seconds, processes=processes,
                           tolerances=rerun_tolerances(getattr(r.method, "rerun_spread", None), len(r.rows)))
    validate_record(record, where=f"result record of {r.name}")
    atomic_write_json(r.record_path, record)  # last: a record on disk means the rows beside it are complete
    return record


def write_overlays(runs: list[MethodRun], ds, setting: Setting, out: Path) -> None:
    """`<out>/overlays.png`: the first images with each method's maps (the methods that made any)."""
    grid = [r for r in runs if r.grid_maps]
    if not grid:
        return
    from ..figures import overlay_grid

    images, ids = _grid_images(ds, setting.size, GRID_ITEMS)
    overlay_grid(images, {r.name: np.stack(r.grid_maps)[:len(images)] for r in grid}, ids,
                 setting.wall.dead_from, out / "overlays.png")


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
