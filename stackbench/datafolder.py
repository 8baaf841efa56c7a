"""The dataset folder contract in one place (DESIGN.md "Dataset folder").

    README.md                          card (YAML header + prose)
    data/test-00000-of-0000N.parquet   one row per image
    generation.json                    recipe, seed, versions, source fingerprint

Used by the generators (writing), the evaluation harness (reading) and the Hub publisher.
"""
from __future__ import annotations

import contextlib
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # mkstemp makes 0600 files; published files get the usual mode


@contextlib.contextmanager
def atomic_open(path: str | Path):
    """A binary file that appears at `path` only when the block ends without error (temporary file in the same
    folder, fsync, rename): readers never see half a file, a crash leaves the old file or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())


SHARD_META_KEY = b"stackbench"  # per-shard facts (e.g. skipped inputs) written atomically with the rows
ROW_GROUP = 100  # rows per Parquet row group for image data (datasets' record batch size for images)


def write_shard(rows: list[dict], feats: datasets.Features, path: str | Path, metadata: dict | None = None) -> None:
    """One Parquet shard, written atomically, laid out as `Dataset.to_parquet` does (schema with the features,
    content-defined chunking, page index, images stored uncompressed). Images are dicts {"bytes": ..., "path":
    None} (already encoded). `metadata` (JSON-able) is stored in the file's key-value metadata under
    `stackbench`; read it back with `shard_metadata`."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.arrow_writer import get_parquet_column_options

    schema = feats.arrow_schema
    table = pa.Table.from_pylist([feats.encode_example(r) for r in rows], schema=schema)
    with atomic_open(path) as f:
        cdc = datasets.config.DEFAULT_CDC_OPTIONS
        writer = pq.ParquetWriter(f, schema=schema, use_content_defined_chunking=cdc, write_page_index=True,
                                  **get_parquet_column_options(feats, schema))
        for start in range(0, max(len(rows), 1), ROW_GROUP):
            writer.write_table(table.slice(start, ROW_GROUP))
        meta = {"content_defined_chunking": json.dumps(cdc)}
        if metadata is not None:
            meta[SHARD_META_KEY.decode()] = json.dumps(metadata, sort_keys=True, ensure_ascii=False)
        writer.add_key_value_metadata(meta)
        writer.close()


def shard_metadata(shard) -> dict:
    """The `metadata` a shard was written with ({} if none); `shard` is its path or its read footer."""
    import pyarrow.parquet as pq

    footer = shard if isinstance(shard, pq.FileMetaData) else pq.read_metadata(shard)
    meta = footer.metadata or {}
    return json.loads(meta[SHARD_META_KEY]) if SHARD_META_KEY in meta else {}


def list_shards(folder: str | Path) -> list[Path]:
    return sorted(p for p in (Path(folder) / DATA_DIR).glob("*.parquet") if SHARD_RE.match(p.name))


def digest_files(files: Sequence[tuple[str, Path]]) -> str:
    """sha256 over (name, NUL, bytes) of each file in the given order: the identity of a set of files."""
    h = hashlib.sha256()
    for name, p in files:
        h.update(name.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def fingerprint(folder: str | Path) -> str:
    """sha256 over the shard names and bytes: the dataset's identity in result records."""
    return digest_files([(p.name, p) for p in list_shards(folder)])


def read_generation(folder: str | Path) -> dict:
    p = Path(folder) / GENERATION
    return json.loads(p.read_text()) if p.is_file() else {}


def resolve(ref: str) -> tuple[Path, str | None]:
    """A dataset reference -> (local folder, revision). `hf:REPO[@REV]` is downloaded with huggingface_hub."""
    if ref.startswith("hf:"):
        from .hubfetch import snapshot

        repo, _, rev = ref[3:].partition("@")
        return snapshot(ref, repo, rev, repo_type="dataset")
    folder = Path(ref)
    if not folder.is_dir():
        raise StackbenchError(f"dataset folder {ref} does not exist; create it with `stackbench generate stack-mix ... "
                              f"--out {ref}` or give hf:REPO")
    return folder, None


def read_shards(shards: Sequence[str | Path]) -> datasets.Dataset:
    """Shards -> one in-memory Dataset with the features stored in their schema. Reads with pyarrow directly:
    no `datasets` cache folder, so many readers (and a writer replacing shards atomically) never collide."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.table import InMemoryTable

    tables = [pq.read_table(p) for p in shards]
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    feats = datasets.Features.from_arrow_schema(tables[0].schema)
    return datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=feats),
                            split=datasets.NamedSplit(SPLIT))


def open_dataset(ref: str) -> tuple[datasets.Dataset, dict]:
    """Load a dataset folder (or hf:REPO[@REV]) with its features; also return {ref, fingerprint, revision, n,
    generation}."""
    folder, rev = resolve(ref)
    shards = list_shards(folder)
    if not shards:
        raise StackbenchError(f"dataset folder {ref} has no {DATA_DIR}/{SPLIT}-*.parquet shards; "
                              "run `stackbench generate` into it")
    ds = read_shards(shards)
    missing = {"id", "image", "label", "wall_row"} - set(ds.column_names)
    if missing:
        raise StackbenchError(f"dataset folder {ref} lacks the columns {sorted(missing)}; it was not written by "
                              "`stackbench generate`")
    info = {"ref": ref, "fingerprint": fingerprint(folder), "revision": rev, "n": len(ds),
            "generation": read_generation(folder), "path": str(folder)}
    return ds, info

