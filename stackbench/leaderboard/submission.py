"""Adding a row: evaluate a method on a track's datasets and store its records (and its plugin code)."""
from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from pathlib import Path

from ..datafolder import atomic_write_bytes, atomic_write_json
from ..errors import StackbenchError, first_line
from ..progress import log, quiet_libraries
from ..records import safe_url
from .checks import check_record
from .store import METHODS_DIR, file_source, init_store, locked, resolve_store, row_path, stem_for
from .tracks import Track, get_track, given_datasets, load_tracks

# ------------------------------------------------------------------------------------------------ rules

RULES = (
    "The method uses the model it is handed only through its forward and backward passes (gradients included: "
    "masking a map by the model's own gradient support is allowed, and the board ranks such a method by "
    "faithfulness, not by where its zeros are).",
    "It does not read stackbench's wall objects or any attribute that names a wall or an orientation, the published "
    "weights (to match the model it is handed against them), the datasets' layout (which rows are dead, where the "
    "second object sits) or the evaluation's seeds.",
    "It does not change the model, the harness, other methods or anything outside its own worker (a change fails "
    "its row), and it does not reach the network.",
    "Its maps are a function of its inputs and seed; a method whose maps move with round-off declares how far "
    "(`rerun_spread`), and the board re-runs every row to within that.",
)
"""What a submitted method may and may not do: the board's word, printed by `submit` for the pull request."""


def rules_text() -> str:
    """The rules as a Markdown checklist for a pull request's description."""
    return "\n".join(f"- [ ] {rule}" for rule in RULES)


# ------------------------------------------------------------------------------------------------ submit

def _code_to_store(m, store: Path, name: str) -> tuple[str, Path, bytes] | None:
    """(store-relative method source, destination, bytes) for a plugin whose code must travel with the row, or
    None for a built-in or an installed package. A module that no distribution provides cannot be re-run by a
    reviewer: it is refused with the fix."""
    if m.source == "stackbench" or m.package:
        return None
    src = file_source(m.source)
    if not (m.code and src):
        raise StackbenchError(f"method {m.source!r} comes from a module that no installed distribution provides, so "
                              "a reviewer could not install it: submit the file as path/file.py:Class, or install "
                              "it as a package (pip install .) first")
    where, attr = src.body, src.options["attr"]
    data = Path(where).read_bytes()
    if hashlib.sha256(data).hexdigest() != m.code["sha256"]:  # the bytes copied are the bytes that ran
        raise StackbenchError(f"{where} changed while it was evaluated; submit again")
    rel = f"{METHODS_DIR}/{stem_for(name)}/{m.code['file']}"
    return f"{rel}:{attr}", Path(store) / rel, data


def submit(method: str, track: str | Track = "mini", *, name: str | None = None, author: str | None = None,
           url: str | None = None, description: str | None = None, replace: bool = False, store: Path | None = None,
           device: str = "auto", progress: bool = True, method_config: dict | None = None,
           datasets: dict[str, str] | list[tuple[str, str]] | None = None, num_proc: int = 1) -> list[Path]:
    """Run the track's official evaluation of `method` on each of its datasets and write the records into the
    store, with the method's code when it is a plugin file (methods/<name>/). `datasets` ({name: folder or
    hf:REPO@REV}) gives the pinned data instead of regenerating it (used only when its fingerprint is the pin).
    `num_proc`: processes that share the images (`evaluate`; the rows are the same). Returns the written record
    paths."""
    from ..isolation import worker_pool

    with worker_pool([method]):  # a built-in's worker serves every dataset of the track
        return _checked_submit(method, track, name, author, url, description, replace, store, device, progress,
                               method_config, datasets, num_proc)


def _checked_submit(method, track, name, author, url, description, replace, store, device, progress, method_config,
                    datasets, num_proc=1) -> list[Path]:
    from ..evaluate import resolve_methods
    from ..evaluate.inputs import check_num_proc
    from ..refs import one_process, pick_device

    one_process("submit")
    check_num_proc(num_proc)
    m = resolve_methods([method], **({method: method_config} if method_config else {}))[0]  # imported in a worker
    if m.source.split(":")[0] in ("__main__", "builtins"):
        raise StackbenchError(f"method {m.name} is defined in a notebook or script ({m.source}): nobody else could "
                              "re-run its row; put it in a file and submit path/file.py:NAME")
    name = m.name if name is None else name
    stem_for(name)
    url = safe_url(url)
    pick_device(device)  # before anything is said or made
    made = _missing_folders(store)
    created = store is not None and init_store(store)
    try:
        return _submit(m, method, track, name, author, url, description, replace, resolve_store(store), device,
                       progress, created, datasets, num_proc)
    except BaseException:
        if created:  # a board this submission started: leave nothing of it behind
            _undo_new_store(Path(store), made)
        raise


def _missing_folders(store) -> list[Path]:
    """The folders a new store at `store` will make (itself and missing parents), innermost first."""
    out, p = [], Path(store).absolute() if store is not None else None
    while p is not None and not p.exists() and p != p.parent:
        out.append(p)
        p = p.parent
    return out


def _undo_new_store(store: Path, made: list[Path]) -> None:
    for part in ("tracks.json", "reported", "results", METHODS_DIR, ".lock"):
        p = store / part
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    for folder in made:  # only what this submission created, and only while empty
        with contextlib.suppress(OSError):
            folder.rmdir()


def _check_writable(store: Path) -> None:
    """Before minutes of evaluation: can the store take files? (os.access says yes to root on a read-only mount.)"""
    try:
        with tempfile.TemporaryFile(dir=store):
            pass
    except OSError as e:
        raise StackbenchError(f"--store {store} is not writable ({first_line(e, 80)}); give a folder you can "
                              "write to") from None


def _submit(m, method, track, name, author, url, description, replace, store: Path, device, progress,
            created: bool, datasets: dict | None, num_proc: int = 1) -> list[Path]:
    from ..evaluate import evaluate

    t = get_track(track, store)
    given = given_datasets(t, datasets)
    _check_writable(store)
    if created:
        log.info("%s: a new board with stackbench's tracks (%s)", store, ", ".join(load_tracks(store)))
    code = _code_to_store(m, store, name)
    paths = {ds: row_path(store, t.name, ds, t.model, name) for ds in t.datasets}
    taken = [p for p in paths.values() if p.exists()]
    if taken and not replace:
        raise StackbenchError(f"{name} is already on the {t.name} board ({taken[0]}); pass --replace to overwrite it")
    staged = {}
    with tempfile.TemporaryDirectory(prefix="stackbench-submit-") as tmp, quiet_libraries(progress):
        # every dataset made or checked before any is evaluated: a wrong one is said before minutes of work
        folders = {ds: t.dataset_folder(ds, progress=progress, given=given.get(ds)) for ds in t.datasets}
        for i, ds in enumerate(t.datasets, 1):
            if progress:
                log.info(f"submit {name} to track {t.name}: dataset {ds} ({i}/{len(t.datasets)})")
            folder = folders[ds]
            (run,) = evaluate([m], str(folder), t.model, target=t.target, postprocess=t.postprocess,
                              batch_size=t.batch_size, device=device, out=Path(tmp) / ds, seed=t.seed,
                              progress=progress, figure=False, limits=t.method_limits, num_proc=num_proc)
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
        with locked(store):
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


