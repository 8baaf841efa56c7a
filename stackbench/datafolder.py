"""The dataset folder contract in one place (docs/datasets.md, "Datasets: STACK-MIX").

    README.md                          card (YAML header + prose)
    data/test-00000-of-0000N.parquet   one row per image
    generation.json                    recipe, seed, versions, source fingerprint

Used by the generators (writing), the evaluation harness (reading) and the Hub publisher.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Sequence

import datasets

from .errors import StackbenchError, first_line
from .refs import dataset_ref

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


@contextlib.contextmanager
def folder_lock(folder: str | Path, busy: str | None = None):
    """One writer at a time in `folder`: an exclusive lock on the folder itself, released when the block ends or
    the process dies (nothing is left behind). `busy`: refuse at once with this line when another process holds
    it, instead of waiting for it."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy else 0))
        except BlockingIOError:
            raise StackbenchError(busy) from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


def writable_folder(out: str | Path, option: str = "--out") -> Path:
    """`out` as a folder this process can write into (created if needed), or one line saying why not."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StackbenchError(f"{option} {out} is a file; give a folder (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise StackbenchError(f"{option} {out} cannot be written ({first_line(e)}); give a folder you can write "
                              "to") from None
    return out


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


CONTENT = "stackbench.content/1"


def pixel_sha256(img) -> str:
    """sha256 of a decoded image (mode, size, pixels): the same picture gives the same digest whatever encoded it
    (PNG bytes differ between zlib builds: Pillow's zlib-ng picks its deflate code by CPU)."""
    h = hashlib.sha256(f"{img.mode} {img.size[0]}x{img.size[1]}\0".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def _cell(value) -> str:
    if isinstance(value, dict) and "bytes" in value:  # an image: its pixels, not its encoding
        from PIL import Image

        if value.get("bytes") is None:
            return "image:none"
        try:
            with Image.open(io.BytesIO(value["bytes"])) as img:
                return "image:" + pixel_sha256(img)
        except Exception:  # noqa: BLE001 - an undecodable image still has an identity: its bytes
            return "bytes:" + hashlib.sha256(value["bytes"]).hexdigest()
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


_FINGERPRINTS: dict[tuple, str] = {}  # shards' (path, size, mtime) -> fingerprint: decoding every image once


def fingerprint(folder: str | Path) -> str:
    """The dataset's identity in result records: sha256 over every row's content, in order (each column's value;
    an image as its decoded pixels). It does not depend on how the bytes were encoded: the PNG compressor (which
    can differ by CPU) or the Parquet writer's version. Remembered in this process while the shards are unchanged
    (a track's dataset is checked, then evaluated)."""
    shards = list_shards(folder)
    key = tuple((str(p.resolve()), st.st_size, st.st_mtime_ns) for p in shards for st in (p.stat(),))
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = _content_digest(shards)
    return _FINGERPRINTS[key]


def _content_digest(shards: Sequence[Path]) -> str:
    import pyarrow.parquet as pq

    return table_digest(pq.read_table(shard) for shard in shards)


def table_digest(tables) -> str:
    """The content fingerprint of Arrow tables in order (what `fingerprint` computes for a folder's shards)."""
    h = hashlib.sha256(CONTENT.encode() + b"\0")
    for table in tables:
        names = sorted(table.column_names)
        for batch in table.to_batches(max_chunksize=64):
            for row in batch.to_pylist():
                h.update("\0".join(f"{k}={_cell(row[k])}" for k in names).encode() + b"\n")
    return h.hexdigest()


def item_pixels(folder: str | Path) -> list[tuple[str, str]]:
    """(id, first 16 hex of its image's pixel digest) for every row in order: where two folders of one recipe part
    (a track pins them, so a mismatch names the first item that differs)."""
    import pyarrow.parquet as pq

    out = []
    for shard in list_shards(folder):
        for row in pq.read_table(shard, columns=["id", "image"]).to_pylist():
            out.append((row["id"], _cell(row["image"]).split(":", 1)[1][:16]))
    return out


def read_generation(folder: str | Path) -> dict:
    p = Path(folder) / GENERATION
    if not p.is_file():
        return {}
    try:
        gen = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StackbenchError(f"{p} is not valid JSON ({first_line(e, 80)}); regenerate the dataset with "
                              "--overwrite") from None
    if not isinstance(gen, dict):
        raise StackbenchError(f"{p} is not a JSON object; regenerate the dataset with --overwrite")
    return gen


def resolve(ref: str) -> tuple[Path, str | None]:
    """A dataset reference -> (local folder, revision). `hf:REPO[@REV]` is downloaded with huggingface_hub."""
    parsed = dataset_ref(ref)
    if parsed.scheme == "hf":
        from .hub.fetch import snapshot

        return snapshot(ref, parsed.body, parsed.revision, repo_type="dataset")
    folder = Path(ref)
    if folder.is_file():
        raise StackbenchError(f"dataset {ref} is a file; give a dataset folder (data/*.parquet and generation.json, "
                              "as stackbench generate writes it) or hf:REPO")
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

    tables = []
    for p in shards:
        try:
            tables.append(pq.read_table(p))
        except (pa.ArrowException, OSError) as e:
            raise StackbenchError(f"dataset shard {p} is not a readable Parquet file ({first_line(e, 120)}); delete "
                                  "it and run the same `stackbench generate` command again (it rebuilds missing "
                                  "shards)") from None
    try:
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        feats = datasets.Features.from_arrow_schema(tables[0].schema)
    except (pa.ArrowException, ValueError, TypeError) as e:
        raise StackbenchError(f"the shards of {Path(shards[0]).parent} do not share one schema ({first_line(e, 120)}); "
                              "regenerate the dataset") from None
    return datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=feats),
                            split=datasets.NamedSplit(SPLIT))


def check_complete(gen: dict, ref: str) -> None:
    """Refuse a folder whose generation was stopped before the end (its generation.json `gen` says so)."""
    status = gen.get("status")
    if status not in (None, "complete"):
        recipe = gen.get("recipe") or {}
        planned = recipe.get("num_images") or (f"{recipe['per_class']} per class" if recipe.get("per_class") else "?")
        raise StackbenchError(f"dataset folder {ref} is incomplete (generation.json: status {status!r}, {planned} "
                              "images planned): run the same `stackbench generate` command again to finish it (it "
                              "resumes), or pass --allow-incomplete to use what is there")


def check_labels(ds: datasets.Dataset, ref: str) -> None:
    """Every label must name one of the dataset's classes (its ClassLabel)."""
    import numpy as np

    feat = ds.features.get("label")
    n = getattr(feat, "num_classes", None)
    labels = np.asarray(ds.data.column("label").to_numpy(zero_copy_only=False))
    bad = np.flatnonzero((labels < 0) | (labels >= n)) if n is not None else np.flatnonzero(labels < 0)
    if bad.size:
        i = int(bad[0])
        raise StackbenchError(f"dataset {ref}: item {ds.data.column('id')[i].as_py()!r} has label {int(labels[i])}, "
                              f"outside its {n} classes ({bad.size} such items); regenerate the dataset")


def _checked(ds: datasets.Dataset, what: str) -> datasets.Dataset:
    """A STACK dataset has its columns and labels within its classes."""
    missing = {"id", "image", "label", "wall_row"} - set(ds.column_names)
    if missing:
        raise StackbenchError(f"{what} lacks the columns {sorted(missing)}; it was not written by "
                              "`stackbench generate`")
    if len(ds) == 0:
        raise StackbenchError(f"{what} has no rows")
    import pyarrow as pa

    if not pa.types.is_integer(ds.data.schema.field("label").type):
        raise StackbenchError(f"{what}: its label column holds {ds.data.schema.field('label').type}, not class "
                              "indices; it was not written by `stackbench generate`")
    check_labels(ds, what.removeprefix("dataset folder "))
    return ds


def open_dataset(ref, allow_incomplete: bool = False) -> tuple[datasets.Dataset, dict]:
    """Load a dataset folder (or hf:REPO[@REV]) with its features; also return {ref, fingerprint, revision, n,
    generation}. A folder whose generation did not finish is refused unless `allow_incomplete`. A
    `datasets.Dataset` object (a STACK dataset already loaded) is checked the same way and fingerprinted by its
    content, which is the fingerprint of the folder it came from."""
    if isinstance(ref, datasets.Dataset):
        ref = ref.flatten_indices() if ref._indices is not None else ref  # a .select()ion: its own rows only
        return _checked(ref, "datasets.Dataset object"), {
            "ref": "object:datasets.Dataset", "fingerprint": table_digest([ref.with_format(None).data.table]),
            "revision": None, "n": len(ref), "generation": {}, "path": None}
    if isinstance(ref, datasets.DatasetDict):
        raise StackbenchError(f"dataset DatasetDict with splits {sorted(ref)}: give one split, e.g. "
                              f"ds[{next(iter(ref), 'test')!r}]")
    if not isinstance(ref, (str, Path)):
        raise StackbenchError(f"dataset {type(ref).__name__} object: expected a dataset folder, hf:REPO or a "
                              "datasets.Dataset")
    ref = str(ref)
    folder, rev = resolve(ref)
    shards = list_shards(folder)
    if not shards:
        raise StackbenchError(f"dataset folder {ref} has no {DATA_DIR}/{SPLIT}-*.parquet shards; "
                              "run `stackbench generate` into it")
    gen = read_generation(folder)
    if not allow_incomplete:
        check_complete(gen, ref)
    ds = _checked(read_shards(shards), f"dataset folder {ref}")
    info = {"ref": ref, "fingerprint": fingerprint(folder), "revision": rev, "n": len(ds),
            "generation": gen, "path": str(folder)}
    return ds, info
