"""Result records (`stackbench.result/1`): building, reading and validating them.

A record holds everything needed to reproduce its number (DESIGN.md "Result record"); the per-image rows
live in a Parquet file beside it, whose sha256 the record carries. `validate_record` names the first missing
or malformed field, so a tampered or truncated record is refused with one clear line."""
from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import StackbenchError

SCHEMA = "stackbench.result/1"
METRICS = ("mu", "dead_mass", "leak_rate")
# Fields that change from run to run; everything else is a pure function of the inputs and the seed.
VOLATILE = ("timing", "created")

_num = (int, float)
_opt_num = (int, float, type(None))
_sha = "sha256"

# dotted field -> accepted types (a string check "sha256" means 64 lowercase hex digits).
FIELDS = {
    "schema": str,
    "method": dict, "method.name": str, "method.source": str, "method.version": str, "method.config": dict,
    "dataset": dict, "dataset.ref": str, "dataset.fingerprint": _sha, "dataset.n": int,
    "model": dict, "model.ref": str, "model.sha256": _sha, "model.wall": dict, "model.wall.dead_from": int,
    "target": str,
    "postprocess": dict, "postprocess.name": str, "postprocess.definition": str,
    "metrics": dict,
    "items": dict, "items.n": int, "items.digest": _sha, "items.skipped": list,
    "rows": dict, "rows.file": str, "rows.sha256": _sha,
    "env": dict, "env.stackbench": str, "env.torch": str, "env.grad-cam": str, "env.device": str, "env.dtype": str,
    "seeds": dict,
    "timing": dict, "timing.seconds": _num, "timing.images_per_s": _opt_num,
    "created": str,
}
AGG_FIELDS = {"mean": _opt_num, "std": _opt_num, "ci95": (list, type(None)), "n": int, "n_empty": int}


def _get(d: dict, dotted: str):
    cur = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise KeyError(dotted)
        cur = cur[part]
    return cur


def _is_sha(v) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def _check(name: str, value, kind, where: str) -> None:
    if kind == _sha:
        if not _is_sha(value):
            raise StackbenchError(f"{where}: field {name} must be a sha256 hex digest, got {value!r:.80}")
        return
    if isinstance(value, bool) and kind in (int, _num, _opt_num):
        raise StackbenchError(f"{where}: field {name} must be a number, got a boolean")
    if not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise StackbenchError(f"{where}: field {name} must be {want}, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise StackbenchError(f"{where}: field {name} is not finite ({value})")


def validate_record(record: dict, where: str = "result record") -> dict:
    """Check a record against `stackbench.result/1`; raise StackbenchError naming the first bad field."""
    if not isinstance(record, dict):
        raise StackbenchError(f"{where}: not a JSON object")
    if record.get("schema") != SCHEMA:
        raise StackbenchError(f"{where}: field schema is {record.get('schema')!r}, expected {SCHEMA!r}")
    for name, kind in FIELDS.items():
        try:
            value = _get(record, name)
        except KeyError:
            raise StackbenchError(f"{where}: field {name} is missing") from None
        _check(name, value, kind, where)
    if "mu" not in record["metrics"]:
        raise StackbenchError(f"{where}: field metrics.mu is missing")
    for metric, agg in record["metrics"].items():
        if not isinstance(agg, dict):
            raise StackbenchError(f"{where}: field metrics.{metric} must be an object")
        for f, kind in AGG_FIELDS.items():
            if f not in agg:
                raise StackbenchError(f"{where}: field metrics.{metric}.{f} is missing")
            _check(f"metrics.{metric}.{f}", agg[f], kind, where)
        ci = agg["ci95"]
        if ci is not None and (len(ci) != 2 or not all(isinstance(v, _num) for v in ci) or ci[0] > ci[1]):
            raise StackbenchError(f"{where}: field metrics.{metric}.ci95 must be [low, high], got {ci!r}")
        if agg["n"] + agg["n_empty"] > record["items"]["n"]:
            raise StackbenchError(f"{where}: metrics.{metric} counts {agg['n'] + agg['n_empty']} maps but items.n is "
                                  f"{record['items']['n']}")
        if agg["n"] and agg["mean"] is None:
            raise StackbenchError(f"{where}: field metrics.{metric}.mean is null although n = {agg['n']}")
    if record["items"]["n"] + len(record["items"]["skipped"]) > record["dataset"]["n"]:
        raise StackbenchError(f"{where}: items.n exceeds dataset.n")
    return record


def read_record(path: str | Path) -> dict:
    """Load and validate a record file."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise StackbenchError(f"result record {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StackbenchError(f"result record {path} is not valid JSON ({e}); re-run stackbench evaluate") from None
    return validate_record(record, where=f"result record {path}")


def identity(record: dict) -> dict:
    """The part of a record that must match for a finished result to be reused (resume)."""
    return {"method": {k: record["method"].get(k) for k in ("name", "source", "version", "config")},
            "dataset": {k: record["dataset"].get(k) for k in ("fingerprint", "n")},
            "model": {k: record["model"].get(k) for k in ("sha256", "wall")},
            "target": record["target"], "postprocess": record["postprocess"]["name"],
            "limit": record.get("run", {}).get("limit"), "seeds": record["seeds"]}


def stable(record: dict) -> dict:
    """The record without its volatile fields (timing, created): equal across identical runs."""
    return {k: v for k, v in record.items() if k not in VOLATILE}
