"""Where a board keeps its rows: the store folder, its layout, row names and the lock writers take."""
from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
from pathlib import Path

from ..datafolder import atomic_write_bytes, folder_lock
from ..errors import StackbenchError
from ..refs import method_ref

DATASETS = ("stack-mix", "stack-gen")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
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
    from ..resources import resource

    store = Path(store)
    if (store / "tracks.json").is_file() or (store.is_dir() and any(store.iterdir())):
        return False
    store.mkdir(parents=True, exist_ok=True)
    shutil.copytree(resource("board", "reported"), store / "reported", dirs_exist_ok=True)
    atomic_write_bytes(store / "tracks.json", resource("board", "tracks.json").read_bytes())
    return True



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
    model_dir = stem_for(re.sub(r"[@/:]", "_", model))
    path = base / stem_for(track) / stem_for(dataset) / model_dir / f"{stem_for(name)}.json"
    if base not in path.resolve().parents:  # belt and braces: never write outside the store
        raise StackbenchError(f"{path} lies outside the store {base}")
    return path


def row_key(store: Path, path: Path) -> str:
    """'track/dataset/model/name': how verify and the board name a row."""
    return path.relative_to(Path(store) / "results").with_suffix("").as_posix()


@contextlib.contextmanager
def locked(store: Path):
    """One writer at a time in a store (concurrent submits both land, one after the other)."""
    Path(store).mkdir(parents=True, exist_ok=True)
    with folder_lock(store):
        yield


def stored_rows(store: Path | None = None, track: str | None = None, method: str | None = None) -> list[Path]:
    base = resolve_store(store) / "results"
    pattern = f"{track or '*'}/*/*/{method or '*'}.json"
    return sorted(base.glob(pattern))


def file_source(source: str):
    """The parsed `path/file.py:attr` a record's method source names, or None (a module, a name, or malformed)."""
    try:
        ref = method_ref(source)
    except StackbenchError:
        return None
    return ref if ref.scheme == "file" else None
