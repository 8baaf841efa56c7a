"""The dataset folder contract in one place (DESIGN.md "Dataset folder").

    README.md                          card (YAML header + prose)
    data/test-00000-of-0000N.parquet   one row per image
    generation.json                    recipe, seed, versions, source fingerprint

Used by the generators (writing), the evaluation harness (reading) and the Hub publisher.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Sequence

import datasets

from .errors import StackbenchError

SPLIT = "test"
DATA_DIR = "data"
GENERATION = "generation.json"
SHARD_RE = re.compile(rf"^{SPLIT}-(\d{{5}})-of-(\d{{5}})\.parquet$")

_int, _str, _float = datasets.Value("int32"), datasets.Value("string"), datasets.Value("float32")
_box = datasets.List(datasets.Value("int32"))

# kind -> the columns that kind adds to the common ones.
EXTRA_COLUMNS = {
    "stack-mix": {"top_source": _str, "bottom_source": _str, "layout": _str},
    "stack-gen": {"prompt_top": _str, "prompt_bottom": _str, "prompt_scene": _str, "negative_prompt": _str,
                  "generator": _str, "steps": _int, "guidance": _float, "verify_top": _float, "verify_bottom": _float},
}


def features(kind: str, class_names: Sequence[str]) -> datasets.Features:
    """The Features of a STACK-MIX / STACK-GEN folder with these class names."""
    if kind not in EXTRA_COLUMNS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {sorted(EXTRA_COLUMNS)}")
    common = {
        "id": _str, "image": datasets.Image(), "label": datasets.ClassLabel(names=list(class_names)),
        "class_name": _str, "wall_row": _int, "seed": datasets.Value("int64"), "top_box": _box, "bottom_box": _box,
    }
    return datasets.Features({**common, **EXTRA_COLUMNS[kind]})


def shard_path(folder: str | Path, index: int, total: int) -> Path:
    return Path(folder) / DATA_DIR / f"{SPLIT}-{index:05d}-of-{total:05d}.parquet"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())


def write_shard(rows: list[dict], feats: datasets.Features, path: str | Path) -> None:
    """One Parquet shard, written atomically. Images are dicts {"bytes": ..., "path": None} (already encoded)."""
    path = Path(path)
    ds = datasets.Dataset.from_list(rows, features=feats)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        ds.to_parquet(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def list_shards(folder: str | Path) -> list[Path]:
    return sorted(p for p in (Path(folder) / DATA_DIR).glob("*.parquet") if SHARD_RE.match(p.name))


def fingerprint(folder: str | Path) -> str:
    """sha256 over the shard names and bytes: the dataset's identity in result records."""
    h = hashlib.sha256()
    for p in list_shards(folder):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def read_generation(folder: str | Path) -> dict:
    p = Path(folder) / GENERATION
    return json.loads(p.read_text()) if p.is_file() else {}


def resolve(ref: str) -> tuple[Path, str | None]:
    """A dataset reference -> (local folder, revision). `hf:REPO[@REV]` is downloaded with huggingface_hub."""
    if ref.startswith("hf:"):
        from huggingface_hub import snapshot_download

        repo, _, rev = ref[3:].partition("@")
        try:
            folder = snapshot_download(repo_id=repo, repo_type="dataset", revision=rev or None)
        except Exception as e:  # noqa: BLE001 - network, auth and not-found all need the same advice
            raise StackbenchError(f"{ref}: could not fetch the dataset from the Hub ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}); check the repo id, revision, "
                                  "network and login") from None
        return Path(folder), rev or None
    folder = Path(ref)
    if not folder.is_dir():
        raise StackbenchError(f"dataset folder {ref} does not exist; create it with `stackbench generate stack-mix ... "
                              f"--out {ref}` or give hf:REPO")
    return folder, None


def open_dataset(ref: str) -> tuple[datasets.Dataset, dict]:
    """Load a dataset folder (or hf:REPO[@REV]) with its features; also return {ref, fingerprint, revision, n,
    generation}."""
    folder, rev = resolve(ref)
    shards = list_shards(folder)
    if not shards:
        raise StackbenchError(f"dataset folder {ref} has no {DATA_DIR}/{SPLIT}-*.parquet shards; "
                              "run `stackbench generate` into it")
    ds = datasets.load_dataset("parquet", data_files={SPLIT: [str(p) for p in shards]}, split=SPLIT)
    missing = {"id", "image", "label", "wall_row"} - set(ds.column_names)
    if missing:
        raise StackbenchError(f"dataset folder {ref} lacks the columns {sorted(missing)}; it was not written by "
                              "`stackbench generate`")
    info = {"ref": ref, "fingerprint": fingerprint(folder), "revision": rev, "n": len(ds),
            "generation": read_generation(folder), "path": str(folder)}
    return ds, info

