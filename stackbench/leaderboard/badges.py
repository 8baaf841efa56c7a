"""The board's "verified" badge: verified.json, written by a full `verify` alone, read by the board.

A badge says that the board's last verify of every stored row re-ran a row and reproduced it. The file records
that run: its environment (library versions: a re-run elsewhere may differ within tolerance, or not re-run at all)
and a digest of the whole store as it ran (tracks.json, every row's record and rows hashes). The board shows badges
only while the store is that store; any row or track changed since turns every badge off until the next full verify. A
partial verify, or one in another environment, reports its verdicts and leaves the file alone. A full verify in
the file's environment rewrites it with exactly the rows it reproduced, and refuses a file that named a row as
reproduced which this run, re-running that very row, did not reproduce (a pull request cannot bring its own badge).
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..datafolder import atomic_write_json
from ..errors import Refused, first_line
from ..models import file_sha256
from .store import VERIFIED, locked, row_key, stored_rows

FORMAT = "stackbench.verified/2"
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def badge_environment() -> dict[str, str]:
    """The library versions a row's re-run depends on."""
    from ..versions import versions

    return versions("torch", "numpy", "grad-cam")


def store_digest(store: Path) -> str:
    """sha256 over tracks.json (a track's seed or limits decide what a re-run means) and every stored row's key and
    the sha256 of its record and rows file, in key order."""
    h = hashlib.sha256()
    tracks = Path(store) / "tracks.json"
    h.update(f"tracks.json {file_sha256(tracks) if tracks.is_file() else '-'}\n".encode())
    for path in sorted(stored_rows(store), key=lambda p: row_key(store, p)):
        rows = path.with_suffix(".parquet")
        h.update(f"{row_key(store, path)} {file_sha256(path)} "
                 f"{file_sha256(rows) if rows.is_file() else '-'}\n".encode())
    return h.hexdigest()


def _entry_matches(store: Path, row: str, entry: dict) -> bool:
    path = Path(store) / "results" / f"{row}.json"
    return path.is_file() and entry.get("record_sha256") == file_sha256(path) \
        and entry.get("rows_sha256") == file_sha256(path.with_suffix(".parquet"))


def read_file(store: Path, strict: bool = True) -> dict | None:
    """verified.json as {"run": {...} or None, "rows": {row: entry}}; None when absent. An unreadable file is
    refused (strict) or taken as absent."""
    path = Path(store) / VERIFIED
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        rows, run = data["rows"], data.get("run")
        if not isinstance(rows, dict) or not (run is None or isinstance(run, dict)):
            raise TypeError("rows or run is not an object")
        return {"run": run, "rows": {k: v for k, v in rows.items() if isinstance(v, dict)}}
    except (OSError, ValueError, KeyError, TypeError) as e:
        if not strict:
            return None
        raise Refused([f"{VERIFIED}: not a verify record ({first_line(e, 80)}); delete it and run `stackbench "
                       "leaderboard verify` to write it again"]) from None


def read_verified(store: Path, strict: bool = True) -> dict:
    """{row: entry} of the badges the board shows: those of a verified.json written by a full verify of the store
    as it is now ({} when absent, written by an older verify, or the store changed since)."""
    data = read_file(store, strict)
    if not data or not data["run"] or data["run"].get("store") != store_digest(store):
        return {}
    return data["rows"]


def reproduced(store: Path, path: Path, entries: dict, submitted: str | None) -> str | None:
    """The date the board's last verify reproduced this row, if it did and the row is unchanged since (and that
    date is not before the row's submission); else None."""
    e = entries.get(row_key(store, path))
    if not e or not _entry_matches(store, row_key(store, path), e):
        return None
    date = e.get("date")
    if not (isinstance(date, str) and DATE.fullmatch(date)):  # a date is all a badge shows: nothing else gets in
        return None
    return date if date >= str(submitted or "") else None


@dataclass
class Badges:
    """What a verify did with verified.json: `written` or not (`message` says why), and the rows the old file named
    as reproduced that this run re-ran and did not reproduce (`forged`: the run is refused)."""

    written: bool
    message: str
    forged: list[str] = field(default_factory=list)


def record_verdicts(store: Path, verdicts: list, full: bool) -> Badges:
    """Keep verified.json as the badges of this run (see the module's docstring); `full`: every stored row was
    re-run (no --track, --method, --skip or --dataset narrowing it)."""
    from .. import __version__

    store = Path(store)
    env = badge_environment()
    with locked(store):
        old = read_file(store, strict=False)
        if not full:
            return Badges(False, f"{VERIFIED} left as it was: only a verify of every stored row writes it")
        was = (old or {}).get("run") or {}
        if was.get("environment") not in (None, env):
            other = ", ".join(f"{k} {v}" for k, v in was["environment"].items() if env.get(k) != v) \
                if isinstance(was["environment"], dict) else "another"
            return Badges(False, f"{VERIFIED} left as it was: it was written in another environment ({other}); "
                                 "delete it to let this one write the badges")
        by = {v.row: v for v in verdicts}
        forged = sorted(row for row, e in ((old or {}).get("rows") or {}).items()
                        if row in by and not by[row].passed and _entry_matches(store, row, e))
        date = time.strftime("%Y-%m-%d", time.gmtime())
        rows = {v.row: {"record_sha256": file_sha256(store / "results" / f"{v.row}.json"),
                        "rows_sha256": file_sha256(store / "results" / f"{v.row}.parquet"),
                        "date": date, "stackbench": __version__} for v in verdicts if v.passed}
        atomic_write_json(store / VERIFIED, {"schema": FORMAT, "run": {"date": date, "environment": env,
                                                                       "store": store_digest(store)},
                                             "rows": dict(sorted(rows.items()))})
    return Badges(True, f"{VERIFIED} written: {len(rows)} of {len(verdicts)} rows reproduced", forged)
