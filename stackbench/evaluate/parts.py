"""An evaluation in parts: the scored images cut into chunks of whole batches, and each chunk's per-image rows
written per method as soon as the chunk is done (`<out>/.stackbench-parts/<key>/`). A killed run resumes at its
last finished chunk; several processes (`--num-proc`, `accelerate launch`) share the chunks, process p taking
chunks c with c % processes == p; the main process merges every chunk in dataset order into the one record and
rows file a single process writes. A batch is the same images whichever process runs it, so a deterministic
method's rows are the same bytes.

    <key>/chunk-00003.json              the chunk's images: ids, pixel shas, skipped items, shared-pass clock
    <key>/<method>-<code>/00003.npz     its maps kept for the record (overlay grid, --save-maps), when any
    <key>/<method>-<code>/00003.parquet its per-image rows
    <key>/<method>-<code>/00003.json    seconds and the rows' sha256: written last, the part's completion mark
    <key>/<method>-<code>/failed-*.json where a method failed (the first in dataset order is its error)
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..datafolder import atomic_write_bytes, atomic_write_json
from ..errors import StackbenchError
from .loop import GRID_ITEMS
from .state import MethodRun

PARTS = ".stackbench-parts"
MAX_CHUNKS = 64   # a chunk holds at least one batch; past 64 batches, several (a resume loses at most 1/64 of a run)


@dataclass(frozen=True)
class Layout:
    """The chunks of `n` scored items in batches of `batch_size`: chunk c is items [start, stop) of the scored set.
    It depends on these two alone, not on the number of processes, so a resume may use another."""

    n: int
    batch_size: int

    @property
    def per_chunk(self) -> int:
        batches = math.ceil(self.n / self.batch_size)
        return self.batch_size * max(1, math.ceil(batches / MAX_CHUNKS))

    @property
    def count(self) -> int:
        return math.ceil(self.n / self.per_chunk)

    def span(self, c: int) -> tuple[int, int]:
        return c * self.per_chunk, min(self.n, (c + 1) * self.per_chunk)

    def mine(self, rank: int, world: int) -> list[int]:
        return [c for c in range(self.count) if c % world == rank]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class Parts:
    """The parts folder of one evaluation (its identity: `base`, the record every method shares, and the layout)."""

    def __init__(self, out: Path, base: dict, layout: Layout):
        from ..records import identity

        self.layout = layout
        probe = identity({**base, "method": {}})
        probe.pop("method")
        self.root = Path(out) / PARTS
        self.dir = self.root / _digest({"identity": probe, "n": layout.n, "batch_size": layout.batch_size})[:16]

    def method_dir(self, r: MethodRun) -> Path:
        from .storage import file_stem

        return self.dir / f"{file_stem(r.name)}-{_digest(r.method.describe())[:12]}"

    # ---------------------------------------------------------------------------------------------- writing
    def start(self) -> None:
        """The main process, before any other starts: the folder made, failures of an earlier run forgotten (a
        method that failed is run again, as before parts)."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise StackbenchError(f"{self.root} is not a folder: remove it (stackbench evaluate keeps the chunks of "
                                  "an unfinished run there)") from None
        for p in [*self.dir.glob("*/failed-*.json"), *self.dir.glob("progress-*")]:
            p.unlink()

    def write_chunk(self, c: int, ids: list, shas: list, skipped: list, clock: dict) -> None:
        atomic_write_json(self.dir / f"chunk-{c:05d}.json", {"chunk": c, "span": list(self.layout.span(c)),
                                                             "ids": ids, "shas": shas, "skipped": skipped,
                                                             "clock": clock})

    def write_part(self, r: MethodRun, c: int) -> None:
        """A method's rows of chunk c (and its maps kept for the record), then the mark that they are complete."""
        from .storage import rows_table

        d = self.method_dir(r)
        d.mkdir(parents=True, exist_ok=True)
        maps = {}
        if r.grid_maps and self.layout.span(c)[0] < GRID_ITEMS:  # the overlay grid's images are the first ones
            maps["grid"] = np.stack(r.grid_maps)
        if r.maps:
            maps["saved"] = np.concatenate(r.maps)
        kept = None
        if maps:
            buf = io.BytesIO()
            np.savez(buf, **maps)
            kept = buf.getvalue()
            atomic_write_bytes(d / f"{c:05d}.npz", kept)
        data = rows_table(r.rows)
        atomic_write_bytes(d / f"{c:05d}.parquet", data)
        atomic_write_json(d / f"{c:05d}.json", {"seconds": r.seconds, "n": len(r.rows), "sha256": _sha(data),
                                                "maps": sorted(maps), "maps_sha256": kept and _sha(kept)})

    def write_failure(self, r: MethodRun, c: int, rank: int) -> None:
        d = self.method_dir(r)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(d / f"failed-{c:05d}-{rank}.json", {"chunk": c, "error": r.error})

    # ---------------------------------------------------------------------------------------------- reading
    def has(self, r: MethodRun, c: int) -> bool:
        """Whether chunk c's part of method r is complete and intact: its mark (written last) names the hashes of
        the rows and maps beside it, and the chunk's own file reads. Anything else is computed again."""
        d = self.method_dir(r)
        try:
            mark = json.loads((d / f"{c:05d}.json").read_text())
            rows_ok = _sha((d / f"{c:05d}.parquet").read_bytes()) == mark["sha256"]
            maps_ok = not mark["maps"] or _sha((d / f"{c:05d}.npz").read_bytes()) == mark["maps_sha256"]
            chunk = json.loads((self.dir / f"chunk-{c:05d}.json").read_text())
            return rows_ok and maps_ok and chunk["chunk"] == c and len(chunk["ids"]) == mark["n"]
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def failure(self, r: MethodRun) -> str | None:
        """The error of the method's first failure in dataset order (a teardown's after every chunk), if any."""
        found = []
        for p in self.method_dir(r).glob("failed-*.json"):
            try:
                f = json.loads(p.read_text())
                found.append((int(f["chunk"]), str(f["error"])))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return min(found)[1] if found else None

    def chunk(self, c: int) -> dict:
        try:
            return json.loads((self.dir / f"chunk-{c:05d}.json").read_text())
        except (OSError, ValueError):
            raise StackbenchError(self.missing(c)) from None

    def missing(self, c: int) -> str:
        start, stop = self.layout.span(c)
        return (f"the rows of scored images {start}-{stop - 1} are missing from {self.dir} (a process stopped before "
                "writing them); run the same command again: it resumes from the finished chunks")

    def merge(self, r: MethodRun) -> None:
        """Method r's rows, maps and seconds from every chunk, in dataset order."""
        import pyarrow.parquet as pq

        d = self.method_dir(r)
        r.rows, r.maps, r.grid_maps, r.seconds = [], [], [], 0.0
        for c in range(self.layout.count):
            if not self.has(r, c):
                raise StackbenchError(self.missing(c))
            mark = json.loads((d / f"{c:05d}.json").read_text())
            r.rows += pq.read_table(d / f"{c:05d}.parquet").to_pylist()
            r.seconds += float(mark["seconds"])
            if mark["maps"]:
                with np.load(d / f"{c:05d}.npz") as z:
                    if "grid" in z:
                        r.grid_maps += list(z["grid"])[:GRID_ITEMS - len(r.grid_maps)]
                    if "saved" in z:
                        r.maps.append(z["saved"])

    def items(self) -> tuple[list, list, list, dict]:
        """(ids, pixel shas, skipped items, shared-pass clock) of every chunk, in dataset order."""
        ids, shas, skipped, clock = [], [], [], {"forward": 0.0, "backward": 0.0}
        for c in range(self.layout.count):
            meta = self.chunk(c)
            ids += meta["ids"]
            shas += meta["shas"]
            skipped += meta["skipped"]
            for k in clock:
                clock[k] += float(meta["clock"].get(k, 0.0))
        return ids, shas, skipped, clock

    def remove(self, r: MethodRun) -> None:
        shutil.rmtree(self.method_dir(r), ignore_errors=True)

    def tidy(self) -> None:
        """The parts folder gone once no method's parts are left in it (the chunk files serve only those)."""
        if self.dir.is_dir() and not any(p.is_dir() for p in self.dir.iterdir()):  # chunk and progress files only
            shutil.rmtree(self.dir, ignore_errors=True)
        if self.root.is_dir() and not any(self.root.iterdir()):
            self.root.rmdir()
