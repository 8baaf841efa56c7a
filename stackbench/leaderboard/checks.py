"""Re-checking rows: the schema, the rows file, the aggregates, the pins, and a re-run where the method is
available; one verdict per row (reproduced, failed, not re-run)."""
from __future__ import annotations

import hashlib
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import (
    StackbenchError,
    first_line,
    foreign_failure,
    watching_ctrl_c,
)
from ..metrics import images_phrase, rerun_tolerances
from ..models import file_sha256
from ..progress import Progress, quiet_libraries
from ..records import (
    METRICS,
    SCHEMA,
    aggregate_rows,
    axes_measured,
    schema_number,
    validate_record,
    weights_fingerprint_of,
)
from ..refs import method_ref
from .badges import read_file, record_verdicts
from .store import (
    METHODS_DIR,
    file_source,
    resolve_store,
    row_key,
    stored_rows,
)
from .tracks import Track, get_track, given_datasets, load_tracks

REL_TOL = 1e-6            # stored aggregates must be what their own per-image rows give, to round-off
# A re-run reproduces a metric's mean and std within its tolerance (`metrics.rerun_tolerances`: each metric's own,
# or what the method declares where it amplifies round-off), measured between CPU kernel sets with
# scripts/kernel_spread.py. The model's top-1 within this:
RERUN_ATOL = 1e-4

# ------------------------------------------------------------------------------------------------ verify

def _rows_from(data: bytes) -> list[dict]:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(io.BytesIO(data)).to_pylist()
    except pa.ArrowException as e:
        raise StackbenchError(f"its per-image rows are not a readable Parquet file ({first_line(e, 80)})") from None


def _close(a, b, rel: float = REL_TOL, abs_: float = 1e-12) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and \
            all(_close(x, y, rel, abs_) for x, y in zip(a, b, strict=True))
    if isinstance(a, (bool, str, int)) or isinstance(b, (bool, str, int)):
        return a == b
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


def check_record(record: dict, rows_bytes: bytes | None, track: Track, where: str) -> None:
    """Schema, rows hash, rows -> summary, pinned fingerprints. Raises StackbenchError naming the row.
    `rows_bytes` None: the rows file is missing."""
    validate_record(record, where=where)
    for f in ("track", "submission"):
        if f not in record:
            raise StackbenchError(f"{where}: field {f} is missing")
    if rows_bytes is None:
        raise StackbenchError(f"{where}: per-image rows file {record['rows']['file']} is missing")
    if hashlib.sha256(rows_bytes).hexdigest() != record["rows"]["sha256"]:
        raise StackbenchError(f"{where}: the per-image rows file does not match rows.sha256 (edited?)")
    try:
        rows = _rows_from(rows_bytes)
        again = aggregate_rows(rows, record["seeds"].get("bootstrap", 0))
    except (StackbenchError, KeyError, TypeError) as e:
        raise StackbenchError(f"{where}: the per-image rows cannot be aggregated ({first_line(e, 120)})") from None
    if len(rows) != record["items"]["n"]:
        raise StackbenchError(f"{where}: {len(rows)} per-image rows but items.n = {record['items']['n']}")
    for metric, agg in again.items():
        for key, value in agg.items():
            stored = record["metrics"].get(metric, {}).get(key)
            if not _close(value, stored):
                raise StackbenchError(f"{where}: metrics.{metric}.{key} = {stored} but the per-image rows give "
                                      f"{value}")
    _check_accuracy(record, rows, where)
    if record["schema"] == SCHEMA:
        _check_axes(record, again, where, sum(r["orientation"] is None for r in rows))
    name = record["dataset"].get("name")
    pin = track.datasets.get(name, {}).get("fingerprint") if name else None
    if pin and record["dataset"]["fingerprint"] != pin:
        raise StackbenchError(f"{where}: dataset fingerprint {record['dataset']['fingerprint'][:12]} is not the "
                              f"track's official {pin[:12]}")
    if track.model_fingerprint and weights_fingerprint_of(record) != track.model_fingerprint:
        raise StackbenchError(f"{where}: model weights fingerprint {weights_fingerprint_of(record)[:12]} is not the "
                              f"track's official {track.model_fingerprint[:12]}")


def _check_accuracy(record: dict, rows: list[dict], where: str) -> None:
    """A record's model top-1 (when it has one: older records do not) is what its per-image rows give."""
    acc = (record.get("accuracy") or {}).get("top1")
    if acc is None:
        return
    again = sum(int(r["predicted"]) == int(r["label"]) for r in rows) / max(len(rows), 1)
    if not _close(acc, again):
        raise StackbenchError(f"{where}: accuracy.top1 = {acc} but the per-image rows give {again}")


def _parameters(axes: dict) -> dict:
    """The numbers and lists of a record's `axes` (tolerances, orientations, steps, seeds), without the prose that
    describes them (rewording a description does not change a measurement)."""
    return {k: {kk: vv for kk, vv in v.items() if not isinstance(vv, str)}
            for k, v in axes.items() if isinstance(v, dict)}


def _check_axes(record: dict, metrics: dict, where: str, unmeasured: int = 0) -> None:
    """A /2 record's axes were measured on every image with this stackbench's parameters (a board compares like
    with like), and its flags are what those parameters give on its own rows."""
    from ..axes import Axes

    if not axes_measured(record):
        raise StackbenchError(f"{where}: the board's axes were not measured (evaluate --axes none: the paper's "
                              "protocol, mu alone); a board row needs them on every image: re-run it with "
                              "`stackbench submit` (or evaluate without --axes none)")
    run, rand = record["seeds"]["run"], record["axes"]["randomisation"]["seed"]
    sample = record["axes"].get("sample")
    if sample or unmeasured:
        what = (f"were measured on a sample of {images_phrase(sample['images'])}" if sample else
                f"were not measured on {unmeasured} of its {record['items']['n']} images (no orientation)")
        raise StackbenchError(f"{where}: the board's axes {what}; a board row needs every image: re-run it with "
                              "`stackbench submit` (or evaluate without --axes-images)")
    axes = Axes()
    if rand < run or _parameters(record["axes"]) != _parameters(axes.describe(run, rand)):
        raise StackbenchError(f"{where}: field axes is not what this stackbench measures (tolerances, orientations, "
                              "steps or seeds were changed); re-run the row with `stackbench submit --replace`")
    for flag, value in axes.flags(metrics).items():
        if record["flags"].get(flag) != value:
            raise StackbenchError(f"{where}: flags.{flag} = {record['flags'].get(flag)} but the per-image rows give "
                                  f"{value}")


REPRODUCED, FAILED, NOT_RERUN = "reproduced", "failed", "not re-run"


@dataclass
class Verdict:
    """One row's verdict: reproduced (re-run here, every metric within REL_TOL), failed (named: the field and both
    values), or not re-run (with the reason; never counted as passed)."""

    row: str
    status: str
    message: str

    @property
    def passed(self) -> bool:
        return self.status == REPRODUCED

    @property
    def failed(self) -> bool:
        return self.status == FAILED


class _NotRerun(Exception):
    """The row's method cannot be re-created here (the reason says what is missing)."""


def _load_record(path: Path, row: str) -> dict:
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StackbenchError(f"{row}: not valid JSON ({first_line(e, 80)})") from None
    if not isinstance(record, dict):
        raise StackbenchError(f"{row}: not a JSON object (a {type(record).__name__})")
    return record


def check_stored_row(store: Path, path: Path, tracks: dict) -> tuple[dict, Track]:
    """The static checks of one stored row (`verify --no-rerun`): (record, track), or StackbenchError."""
    row = row_key(store, path)
    record = _load_record(path, row)
    t = tracks.get(path.relative_to(Path(store) / "results").parts[0])
    if t is None:
        raise StackbenchError(f"{row}: no track of that name in tracks.json")
    rows_file = path.with_suffix(".parquet")
    check_record(record, rows_file.read_bytes() if rows_file.is_file() else None, t, where=row)
    return record, t


def method_for(record: dict, store: Path):
    """The method that re-runs a stored row (a handle: a plugin is imported in a worker only): a built-in, the
    plugin file copied into the store (its sha256 checked), or an installed package at the recorded version.
    _NotRerun says what is missing; StackbenchError means the row is wrong."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__
    from ..isolation import method_handle as get_method
    from ..methods import list_methods

    m = record["method"]
    if m["source"] == "stackbench":
        if m["name"] not in list_methods():
            made = record["env"].get("stackbench")
            if made == __version__:
                raise StackbenchError(f"method {m['name']!r} is not a built-in of stackbench {made}, the version the "
                                      "record names")
            raise _NotRerun(f"stackbench {__version__} has no built-in method {m['name']!r} (the record was made "
                            f"with stackbench {made})")
        return get_method(m["name"], **m["config"])
    if m.get("package"):
        want = m["package"]
        try:
            have = version(want["name"])
        except PackageNotFoundError:
            have = None
        if have != want["version"]:
            raise _NotRerun(f"needs package {want['name']}=={want['version']}"
                            + (f" ({have} is installed)" if have else ""))
        spec = method_ref(m["source"], recorded=True)
        return get_method(spec.body if spec.scheme == "entry-point" else spec.text, **m["config"])
    src = file_source(m["source"])
    if not (m.get("code") and src):
        raise _NotRerun(f"the record carries neither the code nor the package of method {m['source']!r}")
    where, attr = src.body, src.options["attr"]
    path = (Path(store) / where).resolve()
    if Path(where).is_absolute() or (Path(store) / METHODS_DIR).resolve() not in path.parents:
        raise StackbenchError(f"method source {where} is not inside the store's {METHODS_DIR}/ folder: a stored row "
                              "runs only code the store holds (submit copies it there)")
    if not path.is_file():
        raise _NotRerun(f"its method code {where} is not in the store (submit copies it there; add it to the pull "
                        "request)")
    if file_sha256(path) != m["code"]["sha256"]:
        raise StackbenchError(f"method code {where} has sha256 {file_sha256(path)[:12]}, the record says "
                              f"{m['code']['sha256'][:12]} (edited after submission?)")
    return get_method(f"{path}:{attr}", **m["config"])


def rerun_row(record: dict, t: Track, inst, device: str, progress: bool, datasets: dict | None = None,
              same: dict | None = None) -> list[str]:
    """Re-run one row; the differences from the record (empty when it reproduces). `datasets`: the pinned data
    given by the user ({name: folder or hf:REPO@REV}) instead of regenerating it. `same["maps"]` is set to whether
    the re-run's maps are the stored ones byte for byte (their digest)."""
    from ..evaluate import evaluate

    with tempfile.TemporaryDirectory(prefix="stackbench-verify-") as tmp:
        name = record["dataset"]["name"]
        folder = t.dataset_folder(name, progress=progress, given=(datasets or {}).get(name))
        (run,) = evaluate([inst], str(folder), t.model, target=record["target"],
                          postprocess=record["postprocess"]["name"], batch_size=t.batch_size, device=device,
                          out=tmp, seed=record["seeds"]["run"], progress=progress, figure=False,
                          limits=t.method_limits)
        if run.status != "done":
            return [f"the re-run failed: {run.error}"]
        again = run.record
        tol = tolerances(inst, record["items"]["n"])  # the code's, never the record's own claim
        bad = [f"metrics.{k}.{f}: stored {record['metrics'].get(k, {}).get(f)}, recomputed {again['metrics'][k][f]} "
               f"(tolerance {tol[k]:g})"
               for k in METRICS for f in ("mean", "std", "n", "n_empty")
               if not _close(again["metrics"][k][f], record["metrics"].get(k, {}).get(f), 0.0, tol[k])]
        bad += [f"flags.{k}: stored {v}, recomputed {again['flags'][k]}" for k, v in record["flags"].items()
                if again["flags"].get(k) != v]
        old_acc, new_acc = (record.get("accuracy") or {}).get("top1"), (again.get("accuracy") or {}).get("top1")
        if old_acc is not None and not _close(old_acc, new_acc, 0.0, RERUN_ATOL):
            bad.append(f"accuracy.top1: stored {old_acc}, recomputed {new_acc}")
        if record["items"]["digest"] != again["items"]["digest"]:
            bad.append("items.digest differs (other images were scored)")
        if same is not None:
            same["maps"] = (record.get("maps") or {}).get("digest") == again["maps"]["digest"]
    return bad


def verify_row(store: Path, path: Path, tracks: dict, rerun: bool, device: str, progress: bool,
               skip: tuple[str, ...], datasets: dict | None = None) -> Verdict:
    row = row_key(store, path)
    try:
        record, t = check_stored_row(store, path, tracks)
        if not rerun:
            return Verdict(row, NOT_RERUN, "record, rows and pins check (--no-rerun)")
        if path.stem in skip or record["method"]["name"] in skip:
            return Verdict(row, NOT_RERUN, "record, rows and pins check; skipped with --skip")
        if record["schema"] != SCHEMA:
            return Verdict(row, NOT_RERUN, f"record, rows and pins check; schema {schema_number(record['schema'])} "
                                           f"({record['schema']}): resubmit it with this stackbench to measure the "
                                           "board's axes")
        inst = method_for(record, store)
        same: dict = {}
        bad = rerun_row(record, t, inst, device, progress, datasets, same)
    except _NotRerun as e:
        return Verdict(row, NOT_RERUN, f"record, rows and pins check; {e}")
    except StackbenchError as e:
        return Verdict(row, FAILED, str(e).removeprefix(f"{row}: "))  # the row is said once, by whoever prints it
    except BaseException as e:
        reason = foreign_failure(e)
        if reason is None:
            raise
        return Verdict(row, FAILED, reason)
    if bad:
        return Verdict(row, FAILED, "; ".join(bad))
    maps = "the same map bytes" if same.get("maps") else "maps not the same bytes"
    return Verdict(row, REPRODUCED, "re-run here: every metric within its tolerance "
                                    f"({tolerance_phrase(tolerances(inst, record['items']['n']))}), the same flags, "
                                    f"the same images, {maps}")


def _method_names(paths) -> list[str]:
    """The method names the stored rows record (a row that does not say is checked, and said, by verify_row)."""
    names = []
    for p in paths:
        try:
            names.append(str(json.loads(Path(p).read_text())["method"]["name"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return [n for n in names if n]


def tolerances(inst, n: int) -> dict[str, float]:
    """The tolerances a re-run of this method's row of n images meets (the method's declared spread, if any)."""
    return rerun_tolerances(getattr(inst, "rerun_spread", None), n)


def tolerance_phrase(tol: dict[str, float]) -> str:
    """'mu 0.0001, ..., rand_corr 0.001': the tolerances, in metric order."""
    return ", ".join(f"{k} {v:.2g}" for k, v in tol.items())


def verify(track: str | None = None, method: str | None = None, store: Path | None = None, rerun: bool = True,
           device: str = "auto", progress: bool = True, skip: tuple[str, ...] = (),
           datasets: dict[str, str] | list[tuple[str, str]] | None = None) -> "Verdicts":
    """Check every stored row (of a track / method): record, rows, pins; then re-run it. Each row gets one
    verdict (see Verdict), said as it comes with `progress` (a bar on a terminal, a line per row elsewhere).
    With rerun, a verify of every stored row writes the store's verified.json (`badges.record_verdicts`; the result's
    `badges` says what it did, and names any badge the old file claimed that this run did not reproduce). `datasets`
    ({name: folder or hf:REPO@REV}, with `track`) re-runs on the pinned data given instead of regenerating it."""
    store = resolve_store(store)
    tracks = load_tracks(store)
    if datasets:
        if track is None:
            raise StackbenchError("--dataset needs --track: a dataset belongs to one track")
        datasets = given_datasets(get_track(track, store), datasets)
    out = Verdicts()
    if not rerun:
        read_file(store)  # a broken verified.json is refused here as build and show refuse it
    paths = stored_rows(store, track, method)
    from ..isolation import worker_pool

    bar = Progress(len(paths), "verify", unit="row", enabled=progress and bool(paths), every=0.0)
    # the re-runs' forkserver imports while the data is made; the built-ins' worker serves every re-run
    methods = _method_names(paths) if rerun and paths else None
    with watching_ctrl_c(), bar, quiet_libraries(progress), worker_pool(methods):
        for path in paths:
            v = verify_row(store, path, tracks, rerun, device, progress and rerun, tuple(skip), datasets)
            out.append(v)
            bar.update(1, postfix=f"{v.row}: {v.status}")
    if rerun:
        full = not (track or method or skip or datasets)
        out.badges = record_verdicts(store, out, full or len(paths) == len(stored_rows(store)) and not skip)
    return out


class Verdicts(list):
    """A verify's verdicts, with what it did with verified.json (`badges`: `badges.Badges`, None without a
    re-run)."""

    badges = None
