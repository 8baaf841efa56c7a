"""The leaderboard: a store of result records that anyone can add to (submit) and anyone can re-check (verify).

    leaderboard/
      tracks.json                                        the tracks: datasets (presets + pinned fingerprints), model
      results/<track>/<dataset>/<model>/<method>.json    stackbench.result/1 records, with a `submission` block
      results/<track>/<dataset>/<model>/<method>.parquet their per-image rows
      reported/paper.json                                numbers published elsewhere, not re-run
      README.md, index.html, mu.png                      rendered by `stackbench leaderboard build`

Every row says what produced it and can be recomputed: `verify` checks the schema, the rows file's hash, that
the per-image rows aggregate to the stored numbers, the pinned fingerprints, and re-runs the method when it is
available here.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .datafolder import atomic_write_bytes, atomic_write_json, fingerprint
from .errors import Refused, StackbenchError, close_matches, first_line, foreign_failure, watching_ctrl_c
from .metrics import images_phrase, mu_cell
from .models import file_sha256
from .progress import Progress, quiet_libraries
from .records import METRICS, SCHEMA, safe_url, validate_record, weights_fingerprint_of

DATASETS = ("stack-mix", "stack-gen")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
REL_TOL = 1e-6            # stored aggregates must be what their own per-image rows give, to round-off
# A re-run reproduces a number when it agrees to within this (on mu in [0, 1]: 0.01 on the board's x100 scale).
# Not tighter: the same images through the same weights differ by float round-off between CPUs (oneDNN and
# OpenCV pick their kernels by CPU; up to 3e-4 on one image's mu, 1e-5 on a mean, measured AVX-512 vs AVX2).
RERUN_ATOL = 1e-4
# Deletion AUC and the rank correlation move more with that round-off (a near-tie in a map reorders pixels).
RERUN_ATOL_OF = {"deletion_auc": 1e-3, "rand_corr": 1e-3}
log = logging.getLogger(__name__)
VERIFIED = "verified.json"  # the rows the last `verify` of the store reproduced
METHODS_DIR = "methods"   # submitted plugin code, one folder per row name


def default_store() -> Path:
    """`./leaderboard` when the current folder holds a board (a clone of it); never the installed package's."""
    here = Path.cwd() / "leaderboard"
    if (here / "tracks.json").is_file():
        return here
    raise StackbenchError("no leaderboard store here: run from a clone of the board (a folder with "
                          "leaderboard/tracks.json) or pass --store DIR")


# The files `build` renders from the rows (committed with them).
RENDERED = ("README.md", "index.html", "mu.png", "axes.png")


def resolve_store(store) -> Path:
    return default_store() if store is None else Path(store)


def init_store(store) -> bool:
    """Make `store` a board of the shipped tracks when it is missing or an empty folder (a pip-installed
    stackbench has no clone of the board); True when it did. A folder with other files is left alone."""
    from .resources import resource

    store = Path(store)
    if (store / "tracks.json").is_file() or (store.is_dir() and any(store.iterdir())):
        return False
    store.mkdir(parents=True, exist_ok=True)
    shutil.copytree(resource("board", "reported"), store / "reported", dirs_exist_ok=True)
    atomic_write_bytes(store / "tracks.json", resource("board", "tracks.json").read_bytes())
    return True


# ------------------------------------------------------------------------------------------------ tracks

@dataclass
class Track:
    """One leaderboard track: which datasets, which model, which protocol; pins make it exactly reproducible."""

    name: str
    model: str
    datasets: dict  # dataset name -> {"preset": NAME, "fingerprint": sha256 | None} or {"path": DIR}
    model_fingerprint: str | None = None  # the official weights' content fingerprint (records: model.fingerprint)
    target: str = "predicted"
    postprocess: str = "gradcam-lib"
    seed: int = 0
    batch_size: int = 8
    description: str = ""
    extra: dict = field(default_factory=dict)

    def dataset_folder(self, name: str, cache: Path | None = None, progress: bool = False) -> Path:
        """The track's dataset folder: given, or regenerated deterministically from its preset (once, cached),
        and checked against the pinned fingerprint."""
        spec = self.datasets[name]
        if "path" in spec:
            folder = Path(spec["path"])
        else:
            folder = (cache or cache_dir()) / self.name / f"{name}-{spec['preset']}"
            pin = spec.get("fingerprint")
            generation = folder / "generation.json"
            complete = generation.is_file() and json.loads(generation.read_text()).get("status") == "complete"
            if complete and pin and fingerprint(folder) != pin:
                # made by another stackbench from the same recipe: resuming would keep its shards, so start over
                shutil.rmtree(folder)
                complete = False
            if not complete:  # missing, or a killed build (resumed)
                _generate(name, spec["preset"], folder, progress)
        pin = spec.get("fingerprint")
        if pin and fingerprint(folder) != pin:
            raise StackbenchError(f"track {self.name}: dataset {name} at {folder} has fingerprint "
                                  f"{fingerprint(folder)[:12]}, the track pins {pin[:12]}; " + (
                                      "it was just regenerated from its preset: check your library versions against "
                                      "the board's (generation.json lists them)" if "path" not in spec else
                                      "give the track's own dataset"))
        return folder


def cache_dir() -> Path:
    return Path(os.environ.get("STACKBENCH_CACHE", Path.home() / ".cache" / "stackbench"))


def _generate(kind: str, preset: str, folder: Path, progress: bool) -> None:
    from .generate.build import build_dataset

    if progress:
        log.info(f"generating the track's {kind} dataset ({preset}) into {folder}")
    build_dataset(kind, folder, preset=preset, progress=progress, overwrite=True)


def load_tracks(store: Path | None = None) -> dict[str, Track]:
    path = resolve_store(store) / "tracks.json"
    if not path.is_file():
        raise StackbenchError(f"{path} is missing: a board's folder defines its tracks there; give a board's folder, "
                              "or a new or empty one (submit starts a board in it)")
    try:
        raw = json.loads(path.read_text())
        return {name: Track(name=name, **_renamed(spec)) for name, spec in raw["tracks"].items()}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise StackbenchError(f"{path} is not a tracks file ({first_line(e, 80)}); restore it from the board's "
                              "repository") from None


def _renamed(spec: dict) -> dict:
    """A track as tracks files before 0.1 spelled it (`model_sha256`, which was always the weights' fingerprint)."""
    spec = dict(spec)
    if "model_sha256" in spec and "model_fingerprint" not in spec:
        spec["model_fingerprint"] = spec.pop("model_sha256")
    return spec


def get_track(track: str | Track, store: Path | None = None) -> Track:
    if isinstance(track, Track):
        return track
    tracks = load_tracks(store)
    if track not in tracks:
        raise StackbenchError(f"unknown track {track!r}{close_matches(track, tracks)}; tracks: {', '.join(tracks)}")
    return tracks[track]


# ------------------------------------------------------------------------------------------------ store

def stem_for(name: str) -> str:
    """The file name of a row: the submission name itself when it is a plain file name, else a slug of it plus
    a hash (so any display name works and none, e.g. one with path separators, can leave the store)."""
    name = str(name or "").strip()
    if not name:
        raise StackbenchError("--name is empty; give the row a name")
    if NAME_RE.match(name) and name not in (".", ".."):
        return name
    slug = re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("._-")[:40] or "row"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def row_path(store: Path, track: str, dataset: str, model: str, name: str) -> Path:
    base = (Path(store) / "results").resolve()
    path = base / stem_for(track) / stem_for(dataset) / stem_for(re.sub(r"[@/:]", "_", model)) / f"{stem_for(name)}.json"
    if base not in path.resolve().parents:  # belt and braces: never write outside the store
        raise StackbenchError(f"{path} lies outside the store {base}")
    return path


def row_key(store: Path, path: Path) -> str:
    """'track/dataset/model/name': how verify and the board name a row."""
    return path.relative_to(Path(store) / "results").with_suffix("").as_posix()


@contextlib.contextmanager
def _locked(store: Path):
    """One writer at a time in a store (concurrent submits both land, one after the other). The lock is taken on
    the store folder itself: nothing is left behind."""
    Path(store).mkdir(parents=True, exist_ok=True)
    fd = os.open(store, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def stored_rows(store: Path | None = None, track: str | None = None, method: str | None = None) -> list[Path]:
    base = resolve_store(store) / "results"
    pattern = f"{track or '*'}/*/*/{method or '*'}.json"
    return sorted(base.glob(pattern))


# ------------------------------------------------------------------------------------------------ submit

def _code_to_store(m, store: Path, name: str) -> tuple[str, Path, bytes] | None:
    """(store-relative method source, destination, bytes) for a plugin whose code must travel with the row, or
    None for a built-in or an installed package. A module that no distribution provides cannot be re-run by a
    reviewer: it is refused with the fix."""
    from .methods.plugins import is_file_spec

    if m.source == "stackbench" or m.package:
        return None
    if not (m.code and is_file_spec(m.source)):
        raise StackbenchError(f"method {m.source!r} comes from a module that no installed distribution provides, so "
                              "a reviewer could not install it: submit the file as path/file.py:Class, or install "
                              "it as a package (pip install .) first")
    where, _, attr = m.source.rpartition(":")
    data = Path(where).read_bytes()
    if hashlib.sha256(data).hexdigest() != m.code["sha256"]:  # the bytes copied are the bytes that ran
        raise StackbenchError(f"{where} changed while it was evaluated; submit again")
    rel = f"{METHODS_DIR}/{stem_for(name)}/{m.code['file']}"
    return f"{rel}:{attr}", Path(store) / rel, data


def submit(method: str, track: str | Track = "mini", *, name: str | None = None, author: str | None = None,
           url: str | None = None, description: str | None = None, replace: bool = False, store: Path | None = None,
           device: str = "auto", progress: bool = True, method_config: dict | None = None) -> list[Path]:
    """Run the track's official evaluation of `method` on each of its datasets and write the records into the
    store, with the method's code when it is a plugin file (methods/<name>/). Returns the written record paths."""
    from .devices import pick_device
    from .evaluate import resolve_methods

    m = resolve_methods([method], **({method: method_config} if method_config else {}))[0]
    if m.source.split(":")[0] in ("__main__", "builtins"):
        raise StackbenchError(f"method {m.name} is defined in a notebook or script ({m.source}): nobody else could "
                              "re-run its row; put it in a file and submit path/file.py:NAME")
    name = m.name if name is None else name
    stem_for(name)
    url = safe_url(url)
    pick_device(device)  # before anything is said or made
    existed = store is None or Path(store).exists()
    created = store is not None and init_store(store)
    try:
        return _submit(m, method, track, name, author, url, description, replace, resolve_store(store), device,
                       progress, created)
    except BaseException:
        if created:  # a board this submission started: leave nothing of it behind
            _undo_new_store(Path(store), existed)
        raise


def _undo_new_store(store: Path, existed: bool) -> None:
    for part in ("tracks.json", "reported", "results", METHODS_DIR, ".lock"):
        p = store / part
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    if not existed:
        with contextlib.suppress(OSError):
            store.rmdir()


def _check_writable(store: Path) -> None:
    """Before minutes of evaluation: can the store take files? (os.access says yes to root on a read-only mount.)"""
    try:
        with tempfile.TemporaryFile(dir=store):
            pass
    except OSError as e:
        raise StackbenchError(f"--store {store} is not writable ({first_line(e, 80)}); give a folder you can "
                              "write to") from None


def _submit(m, method, track, name, author, url, description, replace, store: Path, device, progress,
            created: bool) -> list[Path]:
    from .evaluate import evaluate

    if created:
        log.info("%s: a new board with stackbench's tracks (%s)", store, ", ".join(load_tracks(store)))
    t = get_track(track, store)
    _check_writable(store)
    code = _code_to_store(m, store, name)
    paths = {ds: row_path(store, t.name, ds, t.model, name) for ds in t.datasets}
    taken = [p for p in paths.values() if p.exists()]
    if taken and not replace:
        raise StackbenchError(f"{name} is already on the {t.name} board ({taken[0]}); pass --replace to overwrite it")
    staged = {}
    with tempfile.TemporaryDirectory(prefix="stackbench-submit-") as tmp, quiet_libraries(progress):
        for i, ds in enumerate(t.datasets, 1):
            if progress:
                log.info(f"submit {name} to track {t.name}: dataset {ds} ({i}/{len(t.datasets)})")
            folder = t.dataset_folder(ds, progress=progress)
            (run,) = evaluate([m], str(folder), t.model, target=t.target, postprocess=t.postprocess,
                              batch_size=t.batch_size, device=device, out=Path(tmp) / ds, seed=t.seed,
                              progress=progress, figure=False)
            if run.status != "done":
                raise StackbenchError(f"{name} failed on {t.name}/{ds}: {run.error}; nothing was written")
            record = dict(run.record)
            record["dataset"] = {**record["dataset"], "ref": f"{t.name}:{ds}", "name": ds}
            if code:
                record["method"] = {**record["method"], "source": code[0]}
            record["track"] = t.name
            record["submission"] = {"name": name, "author": author, "url": url, "description": description,
                                    "method_spec": method if isinstance(method, str) else m.source,
                                    "submitted": record["created"][:10]}
            record["rows"] = {**record["rows"], "file": paths[ds].with_suffix(".parquet").name}
            rows = run.record_path.with_suffix(".parquet").read_bytes()
            check_record(record, rows, t, where=f"{t.name}/{ds}/{name}")
            staged[ds] = (record, rows)
        with _locked(store):
            taken = [p for p in paths.values() if p.exists()]
            if taken and not replace:
                raise StackbenchError(f"{name} was submitted to the {t.name} board meanwhile ({taken[0]}); pass "
                                      "--replace to overwrite it")
            if code:
                atomic_write_bytes(code[1], code[2])
            for ds, (record, rows) in staged.items():
                atomic_write_bytes(paths[ds].with_suffix(".parquet"), rows)
                atomic_write_json(paths[ds], record)  # last: a record means its rows are there
    return [paths[ds] for ds in t.datasets]


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
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y, rel, abs_) for x, y in zip(a, b))
    if isinstance(a, (bool, str, int)) or isinstance(b, (bool, str, int)):
        return a == b
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


def check_record(record: dict, rows_bytes: bytes | None, track: Track, where: str) -> None:
    """Schema, rows hash, rows -> summary, pinned fingerprints. Raises StackbenchError naming the row.
    `rows_bytes` None: the rows file is missing."""
    from .evaluate import aggregate_rows

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
    return {k: {kk: vv for kk, vv in v.items() if not isinstance(vv, str)} for k, v in axes.items() if isinstance(v, dict)}


def _check_axes(record: dict, metrics: dict, where: str, unmeasured: int = 0) -> None:
    """A /2 record's axes were measured on every image with this stackbench's parameters (a board compares like
    with like), and its flags are what those parameters give on its own rows."""
    from .axes import Axes

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
    """The method instance that re-runs a stored row: a built-in, the plugin file copied into the store (its
    sha256 checked), or an installed package at the recorded version. _NotRerun says what is missing;
    StackbenchError means the row is wrong."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__
    from .methods import get_method, list_methods
    from .methods.plugins import is_file_spec

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
        spec = m["source"]
        return get_method(spec.split(":", 1)[1].split("=", 1)[0] if spec.startswith("entry-point:") else spec,
                          **m["config"])
    if not (m.get("code") and is_file_spec(m["source"])):
        raise _NotRerun(f"the record carries neither the code nor the package of method {m['source']!r}")
    where, _, attr = m["source"].rpartition(":")
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


def rerun_row(record: dict, t: Track, inst, device: str, progress: bool) -> list[str]:
    """Re-run one row; the differences from the record (empty when it reproduces)."""
    from .evaluate import evaluate

    with tempfile.TemporaryDirectory(prefix="stackbench-verify-") as tmp:
        folder = t.dataset_folder(record["dataset"]["name"], progress=progress)
        (run,) = evaluate([inst], str(folder), t.model, target=record["target"],
                          postprocess=record["postprocess"]["name"], batch_size=t.batch_size, device=device,
                          out=tmp, seed=record["seeds"]["run"], progress=progress, figure=False)
        if run.status != "done":
            return [f"the re-run failed: {run.error}"]
        again = run.record
        bad = [f"metrics.{k}.{f}: stored {record['metrics'].get(k, {}).get(f)}, recomputed {again['metrics'][k][f]}"
               for k in METRICS for f in ("mean", "std", "n", "n_empty")
               if not _close(again["metrics"][k][f], record["metrics"].get(k, {}).get(f), 0.0,
                             RERUN_ATOL_OF.get(k, RERUN_ATOL))]
        bad += [f"flags.{k}: stored {v}, recomputed {again['flags'][k]}" for k, v in record["flags"].items()
                if again["flags"].get(k) != v]
        old_acc, new_acc = (record.get("accuracy") or {}).get("top1"), (again.get("accuracy") or {}).get("top1")
        if old_acc is not None and not _close(old_acc, new_acc, 0.0, RERUN_ATOL):
            bad.append(f"accuracy.top1: stored {old_acc}, recomputed {new_acc}")
        if record["items"]["digest"] != again["items"]["digest"]:
            bad.append("items.digest differs (other images were scored)")
    return bad


def verify_row(store: Path, path: Path, tracks: dict, rerun: bool, device: str, progress: bool,
               skip: tuple[str, ...]) -> Verdict:
    row = row_key(store, path)
    try:
        record, t = check_stored_row(store, path, tracks)
        if not rerun:
            return Verdict(row, NOT_RERUN, "record, rows and pins check (--no-rerun)")
        if path.stem in skip or record["method"]["name"] in skip:
            return Verdict(row, NOT_RERUN, "record, rows and pins check; skipped with --skip")
        if record["schema"] != SCHEMA:
            return Verdict(row, NOT_RERUN, f"record, rows and pins check; schema 1 ({record['schema']}): resubmit "
                                           "it with this stackbench to measure the board's axes")
        bad = rerun_row(record, t, method_for(record, store), device, progress)
    except _NotRerun as e:
        return Verdict(row, NOT_RERUN, f"record, rows and pins check; {e}")
    except StackbenchError as e:
        return Verdict(row, FAILED, str(e).removeprefix(f"{row}: "))  # the row is said once, by whoever prints it
    except BaseException as e:  # noqa: BLE001 - a row's method must never end the whole verification
        reason = foreign_failure(e)
        if reason is None:
            raise
        return Verdict(row, FAILED, reason)
    if bad:
        return Verdict(row, FAILED, "; ".join(bad))
    return Verdict(row, REPRODUCED, f"re-run here: every metric within {RERUN_ATOL:g} (deletion and randomisation "
                                    f"{RERUN_ATOL_OF['deletion_auc']:g}), the same flags, the same images")


def verify(track: str | None = None, method: str | None = None, store: Path | None = None, rerun: bool = True,
           device: str = "auto", progress: bool = True, skip: tuple[str, ...] = ()) -> list[Verdict]:
    """Check every stored row (of a track / method): record, rows, pins; then re-run it. Each row gets one
    verdict (see Verdict), said as it comes with `progress` (a bar on a terminal, a line per row elsewhere).
    With rerun, the reproduced rows are recorded in the store's verified.json, which the board shows."""
    store = resolve_store(store)
    tracks = load_tracks(store)
    out = []
    paths = stored_rows(store, track, method)
    bar = Progress(len(paths), "verify", unit="row", enabled=progress and bool(paths), every=0.0)
    with watching_ctrl_c(), bar, quiet_libraries(progress):
        for path in paths:
            v = verify_row(store, path, tracks, rerun, device, progress and rerun, tuple(skip))
            out.append(v)
            bar.update(1, postfix=f"{v.row}: {v.status}")
    if rerun:
        record_verdicts(store, out)
    return out


def record_verdicts(store: Path, verdicts: list[Verdict]) -> None:
    """Keep verified.json in step: a reproduced row is entered with the hashes of its record and rows; a row that
    failed or could not be re-run is taken out; rows this run did not look at keep their entry."""
    from . import __version__

    store = Path(store)
    with _locked(store):
        entries = read_verified(store, strict=False)  # a broken file is replaced by this run's verdicts
        for v in verdicts:
            entries.pop(v.row, None)
            path = store / "results" / f"{v.row}.json"
            if v.passed and path.is_file():
                entries[v.row] = {"record_sha256": file_sha256(path), "rows_sha256": file_sha256(path.with_suffix(".parquet")),
                                  "date": time.strftime("%Y-%m-%d", time.gmtime()), "stackbench": __version__}
        atomic_write_json(store / VERIFIED, {"schema": "stackbench.verified/1", "rows": dict(sorted(entries.items()))})


def read_verified(store: Path, strict: bool = True) -> dict:
    """{row: entry} of verified.json ({} when absent). An unreadable file is refused (strict) or ignored."""
    path = Path(store) / VERIFIED
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        rows = data["rows"]
        if not isinstance(rows, dict):
            raise TypeError("rows is not an object")
        return {k: v for k, v in rows.items() if isinstance(v, dict)}
    except (OSError, ValueError, KeyError, TypeError) as e:
        if not strict:
            return {}
        raise Refused([f"{VERIFIED}: not a verify record ({first_line(e, 80)}); delete it and run `stackbench "
                       "leaderboard verify` to write it again"]) from None


def reproduced(store: Path, path: Path, entries: dict, submitted: str | None) -> str | None:
    """The date the last verify reproduced this row, if its record and rows are unchanged since (and that date is
    not before the row's submission); else None."""
    e = entries.get(row_key(store, path))
    if not e or e.get("record_sha256") != file_sha256(path) or e.get("rows_sha256") != file_sha256(path.with_suffix(".parquet")):
        return None
    date = str(e.get("date") or "")
    return date if date and date >= str(submitted or "") else None


# ------------------------------------------------------------------------------------------------ render

def board(store: Path | None = None) -> dict:
    """{track: [entry...]} with entry = {name, method, family, schema, metrics: {dataset: aggregates}, flags and
    maps (digest) per dataset, mu, leak, n, submitted, url, author, description, reproduced: {dataset: date or
    None}} and its place (`stackbench.standings`: rank, section, notes, same_as, caught_by), in board order.
    Every record must pass the checks of `verify --no-rerun` first: otherwise Refused, with one line per bad
    record (a board never shows a number its rows do not give)."""
    from .standings import standings

    store = resolve_store(store)
    tracks = load_tracks(store)
    entries_of, problems = {}, []
    verified = read_verified(store)
    for path in stored_rows(store):
        try:
            rec, t = check_stored_row(store, path, tracks)
        except StackbenchError as e:
            problems.append(str(e))
            continue
        _add_entry(entries_of.setdefault(t.name, {}), path, rec, reproduced(store, path, verified,
                                                                         rec["submission"].get("submitted")))
    if problems:
        raise Refused([f"{p} (the board shows only records that pass `stackbench leaderboard verify --no-rerun`)"
                       for p in problems])
    out = {}
    for t in tracks.values():
        placed = standings(list(entries_of.get(t.name, {}).values()), list(t.datasets))
        for s in placed:
            s.entry.update(rank=s.rank, section=s.section, notes=s.notes, same_as=s.same_as, caught_by=s.caught_by)
        out[t.name] = [s.entry for s in placed]
    return out


def _add_entry(entries: dict, path: Path, rec: dict, reproduced_on: str | None) -> None:
    sub = rec["submission"]
    e = entries.setdefault(path.stem, {
        "name": sub["name"], "method": rec["method"]["name"], "family": rec["method"].get("family"), "schema": 2,
        "wall": rec["model"]["wall"], "metrics": {}, "flags": {}, "maps": {}, "mu": {}, "leak": {}, "n": {},
        "reproduced": {}, "submitted": sub.get("submitted"), "url": sub.get("url"), "author": sub.get("author"),
        "description": sub.get("description")})
    e["schema"] = min(e["schema"], 2 if rec["schema"] == SCHEMA else 1)  # a row is /2 when every dataset's record is
    ds = rec["dataset"].get("name", path.parent.parent.name)
    e["metrics"][ds] = rec["metrics"]
    e["flags"][ds] = rec.get("flags", {})
    e["maps"][ds] = rec.get("maps", {}).get("digest")
    e["mu"][ds] = rec["metrics"]["mu"]
    e["leak"][ds] = rec["metrics"]["leak_rate"]["mean"]
    e["n"][ds] = rec["items"]["n"]
    e["reproduced"][ds] = reproduced_on


def reported(store: Path | None = None) -> list[dict]:
    out = []
    for path in sorted((resolve_store(store) / "reported").glob("*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise Refused([f"reported/{path.name}: not valid JSON ({first_line(e, 80)})"]) from None
    return out


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~-])")


def md_text(s) -> str:
    """Untrusted text for a Markdown table cell: HTML-escaped, Markdown punctuation backslash-escaped."""
    import html

    s = " ".join(str(s or "").split())  # no newlines: they would break the table
    # Only &, < and > become entities: a quote is inert in Markdown, and an entity's '#' would be escaped again.
    return _MD_SPECIAL.sub(r"\\\1", html.escape(s, quote=False))


def _md_link(text: str, url: str | None) -> str:
    if not url or not re.match(r"^https?://[^\s<>\"'()]+$", url, flags=re.I):
        return md_text(text)
    return f"[{md_text(text)}]({url})"


def verified_cell(track: Track, e: dict) -> str:
    """'reproduced DATE' when the last verify of the store re-ran every dataset's row unchanged since, else
    'not re-run'."""
    dates = [e["reproduced"].get(d) for d in track.datasets if d in e["mu"]]
    return f"reproduced {max(dates)}" if dates and all(dates) else "not re-run"


SECTIONS = {"ranked": "Ranked", "unranked": "Listed, not ranked", "control": "Controls (never ranked)"}


def table_header(track: Track) -> list[str]:
    """The columns of every rendering of a track's table (Markdown, HTML, terminal)."""
    return ["#", "method", "mu hidden x100", "deletion AUC", *[f"{d.upper()} mu x100" for d in track.datasets],
            "rand. corr", "n (empty)", "notes", "verified", "submitted", "source"]


def _x100(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def table_rows(track: Track, entries: list[dict]) -> list[list[str]]:
    """One row per entry, in `table_header`'s columns (the source column holds the URL or "")."""
    from .standings import mean_over

    ds = list(track.datasets)
    rows = []
    for e in entries:
        auc, rc = mean_over(e, "deletion_auc", ds), mean_over(e, "rand_corr", ds)
        n = "/".join(str(e["n"].get(d, "-")) for d in ds)
        empty = sum(int((e["metrics"].get(d) or {}).get("mu", {}).get("n_empty") or 0) for d in ds)
        notes = list(e.get("notes") or [])
        if e.get("same_as"):
            notes.append(f"same maps as {e['same_as']}")
        if e.get("section") == "control":
            notes = [f"caught by: {', '.join(e['caught_by']) or 'nothing'}"] + [x for x in notes if "same maps" in x]
        rows.append([str(e["rank"]) if e.get("rank") else "-", e["name"], _x100(mean_over(e, "mu_hidden", ds)),
                     "-" if auc is None else f"{auc:.3f}", *[mu_cell(e["mu"].get(d)) for d in ds],
                     "-" if rc is None else f"{rc:.2f}", n + (f" ({empty} empty)" if empty else ""), "; ".join(notes),
                     verified_cell(track, e), e["submitted"] or "-", e["url"] or ""])
    return rows


def sections(entries: list[dict]) -> list[tuple[str, list[dict]]]:
    """[(title, entries)] for the sections that have rows, in board order."""
    return [(title, [e for e in entries if e.get("section") == key]) for key, title in SECTIONS.items()
            if any(e.get("section") == key for e in entries)]


def _view(store: Path | None, view: tuple | None) -> tuple[dict, dict]:
    """(tracks, boards): the given snapshot, or read from the store."""
    return view if view is not None else (load_tracks(store), board(store))


BOARD_INTRO = ("Ranked by **mu behind a hidden wall** (x100, lower is better: the share of a map's L2 norm behind "
               "the wall when the model and image are re-oriented so that the wall sits on another side, unknown to "
               "the method), then by **deletion AUC** in the seen part (lower is better: the map finds what the model "
               "uses). Rows equal on both as shown share a rank. *mu* is the paper's eq. 1 with the wall at the "
               "bottom; a uniform map scores 49.1 (sqrt(54/224)), and an empty map is scored as the uniform map. "
               "*rand. corr*: Spearman correlation of the map with the map on a re-initialised model over the cells "
               "the head reads. Rows flagged orientation-dependent or model-insensitive, and schema 1 records, are "
               "listed but not ranked; controls are never ranked and say which axis catches them. Every row is a "
               "`stackbench.result/2` record under `results/` with its per-image rows; `stackbench leaderboard "
               "verify` re-runs it. *verified*: the rows that the last verify of this store reproduced, unchanged "
               "since; any other row is *not re-run*.")


def render_markdown(store: Path | None = None, view: tuple | None = None) -> str:
    tracks, boards = _view(store, view)
    lines = ["# stackbench leaderboard", "", BOARD_INTRO, ""]
    for t in tracks.values():
        lines += [f"## Track `{t.name}`", "", md_text(t.description), "",
                  f"Model `{t.model}`" + (f" (weights fingerprint `{t.model_fingerprint[:12]}`)" if t.model_fingerprint else "") +
                  f"; target: {t.target}; post-processing: {t.postprocess}.", ""]
        header = table_header(t)
        entries = boards[t.name]
        for title, part in sections(entries):
            lines += [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for row, e in zip(table_rows(t, part), part):
                row[1], row[-4] = md_text(row[1]), md_text(row[-4])
                row[-1] = _md_link("link", e["url"]) if e["url"] else "-"
                lines.append("| " + " | ".join(row) + " |")
            lines.append("")
        if not entries:
            lines += ["(no submissions yet)", ""]
    for rep in reported(store):
        lines += [f"## Reported: {md_text(rep['title'])}", "", f"*Reported, not re-run here.* {md_text(rep.get('note'))}", "",
                  "| method | " + " | ".join(f"{d.upper()} mu x100" for d in rep["datasets"]) + " |",
                  "|---|" + "---|" * len(rep["datasets"])]
        for r in rep["rows"]:
            lines.append(f"| {md_text(r['method'])} | " + " | ".join(
                f"{r[d][0]:.1f} ± {r[d][1]:.1f}" for d in rep["datasets"]) + " |")
        lines.append("")
    lines += ["![mu behind a hidden wall against deletion AUC](axes.png)", "", "![mu per method](mu.png)", ""]
    return "\n".join(lines)


def render_axes_chart(path: Path, store: Path | None = None, view: tuple | None = None) -> Path:
    """mu behind a hidden wall against deletion AUC, one point per row, controls marked, the Pareto front of the
    ranked rows drawn; one panel per track that has rows."""
    from .figures import pareto_ax
    from .metrics import uniform_mu
    from .standings import mean_over

    def panel(ax, t, entries):
        points = [(e["name"], mean_over(e, "mu_hidden", t.datasets), mean_over(e, "deletion_auc", t.datasets),
                   e.get("section", "ranked")) for e in entries]
        walls = [e["wall"] for e in entries if e.get("wall")]
        uniform = uniform_mu(walls[0]["dead_from"], walls[0]["input_size"][0]) if walls else None
        pareto_ax(ax, [p for p in points if p[1] is not None and p[2] is not None], f"track {t.name}: model {t.model}",
                  uniform)

    return _track_panels(path, store, view, panel, (7.5, 5.5), side_by_side=True)


def render_chart(path: Path, store: Path | None = None, view: tuple | None = None) -> Path:
    """mu x100 per method and dataset with std error bars, one panel per track that has rows."""
    from .figures import mu_bars_ax

    def panel(ax, t, entries):
        mu_bars_ax(ax, {e["name"]: e["mu"] for e in entries}, list(t.datasets), f"track {t.name}: model {t.model}")

    return _track_panels(path, store, view, panel, (9, 3.4), side_by_side=False)


def _track_panels(path: Path, store, view, panel, size: tuple[float, float], side_by_side: bool) -> Path:
    """One figure, one panel per track that has rows (the first track when none has): panel(ax, track, entries)."""
    from .figures import _plt, save_figure

    tracks, boards = _view(store, view)
    shown = [t for t in tracks.values() if boards[t.name]] or list(tracks.values())[:1]
    n = len(shown)
    shape, figsize = ((1, n), (size[0] * n, size[1])) if side_by_side else ((n, 1), (size[0], size[1] * n))
    fig, axes = _plt().subplots(*shape, figsize=figsize, squeeze=False)
    for ax, t in zip(axes.flat, shown):
        panel(ax, t, boards[t.name])
    return save_figure(fig, path)


def _html_table(t: Track, entries: list[dict], esc) -> str:
    header = table_header(t)[:-1] + ["author", "source"]
    out = ["<table class='board'><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for row, e in zip(table_rows(t, entries), entries):
        link = (f"<a href='{esc(e['url'])}' rel='noopener noreferrer nofollow'>link</a>"
                if e["url"] and re.match(r"^https?://", e["url"], flags=re.I) else "")
        cells = [f"<td class='num'>{esc(row[0])}</td>", f"<td title='{esc(e['description'])}'>{esc(row[1])}</td>"]
        cells += [f"<td class='num'>{esc(v)}</td>" for v in row[2:-4]]
        cells += [f"<td>{esc(row[-4])}</td>", f"<td class='verified'>{esc(row[-3])}</td>", f"<td>{esc(row[-2])}</td>",
                  f"<td>{esc(e['author'])}</td>", f"<td>{link}</td>"]
        out.append("<tr class='row'>" + "".join(cells) + "</tr>")
    return "".join(out) + "</tbody></table>"


def render_html(store: Path | None = None, chart: bytes | None = None, view: tuple | None = None,
                axes_chart: bytes | None = None) -> str:
    import base64
    import html

    esc = lambda s: html.escape(str(s if s is not None else ""), quote=True)  # noqa: E731
    tracks, boards = _view(store, view)
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'><title>stackbench leaderboard</title>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;width:100%}th,td{border:1px solid #ccc;padding:4px 8px;"
             "text-align:left;font-size:14px}th{background:#f3f3f3;cursor:pointer}td.num{text-align:right;"
             "font-variant-numeric:tabular-nums}.reported{background:#fffbea}.tag{font-size:12px;color:#8a6d00}"
             "img{max-width:100%}</style></head><body>",
             "<h1>stackbench leaderboard</h1>",
             f"<p>{esc(BOARD_INTRO)} Click a column header to sort.</p>"]
    for t in tracks.values():
        parts.append(f"<h2>Track <code>{esc(t.name)}</code></h2><p>{esc(t.description.rstrip('.'))}. Model "
                     f"<code>{esc(t.model)}</code>.</p>")
        for title, part in sections(boards[t.name]):
            parts.append(f"<h3>{esc(title)}</h3>")
            parts.append(_html_table(t, part, esc))
    if axes_chart:
        parts.append("<img alt='mu behind a hidden wall against deletion AUC' "
                     f"src='data:image/png;base64,{base64.b64encode(axes_chart).decode()}'>")
    if chart:
        parts.append(f"<img alt='mu per method' src='data:image/png;base64,{base64.b64encode(chart).decode()}'>")
    for rep in reported(store):
        parts.append(f"<h2>Reported: {esc(rep['title'])} <span class='tag'>reported, not re-run</span></h2>"
                     f"<p>{esc(rep['note'])}</p><table class='reported'><thead><tr><th>method</th>" +
                     "".join(f"<th>{esc(d.upper())} mu x100</th>" for d in rep["datasets"]) + "</tr></thead><tbody>")
        for r in rep["rows"]:
            parts.append(f"<tr class='reported-row'><td>{esc(r['method'])}</td>" + "".join(
                f"<td class='num'>{r[d][0]:.1f} &plusmn; {r[d][1]:.1f}</td>" for d in rep["datasets"]) + "</tr>")
        parts.append("</tbody></table>")
    parts.append("""<script>
for (const table of document.querySelectorAll('table')) {
  table.querySelectorAll('th').forEach((th, col) => th.addEventListener('click', () => {
    const body = table.tBodies[0], rows = Array.from(body.rows);
    const key = r => { const t = r.cells[col].textContent.trim(); const v = parseFloat(t); return isNaN(v) ? t : v; };
    const dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
    rows.sort((a, b) => { const x = key(a), y = key(b); return (x > y ? 1 : x < y ? -1 : 0) * dir; });
    rows.forEach(r => body.appendChild(r));
  }));
}
</script></body></html>
""")
    return "\n".join(parts)


def build(store: Path | None = None) -> list[Path]:
    """Render README.md, mu.png, axes.png and index.html (deterministic: the same store gives the same bytes). Refused,
    with nothing written, when any record fails the checks of `verify --no-rerun`."""
    store = resolve_store(store)
    view = (load_tracks(store), board(store))  # one reading of the store: the three files show the same rows
    reported(store)  # a broken reported file is refused before anything is written
    chart = render_chart(store / "mu.png", store, view)
    axes_chart = render_axes_chart(store / "axes.png", store, view)
    atomic_write_bytes(store / "README.md", render_markdown(store, view).encode())
    atomic_write_bytes(store / "index.html", render_html(store, chart.read_bytes(), view, axes_chart.read_bytes()).encode())
    return [store / name for name in RENDERED]
