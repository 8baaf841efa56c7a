"""Result records (`stackbench.result/2`; `/1` is still read): building, reading and validating them.

A record holds everything needed to reproduce its number (DESIGN.md "Result record"); the per-image rows
live in a Parquet file beside it, whose sha256 the record carries. `validate_record` names the first missing
or malformed field, so a tampered or truncated record is refused with one clear line."""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from .errors import StackbenchError

SCHEMA = "stackbench.result/2"
SCHEMA_1 = "stackbench.result/1"  # before the board's axes: read and shown, never re-run by verify
SCHEMAS = (SCHEMA, SCHEMA_1)
METRICS_1 = ("mu", "dead_mass", "leak_rate")
METRICS = METRICS_1 + ("mu_hidden", "deletion_auc", "rand_corr")
# Fields that change from run to run; everything else is a pure function of the inputs and the seed.
VOLATILE = ("timing", "created")

_num = (int, float)
_opt_num = (int, float, type(None))
_opt_str = (str, type(None))
_sha = "sha256"
_url = "url"
ANY = object()  # any JSON value (a method's own config)

# The whole schema: a dict is an object whose keys are exactly these (a key ending in "?" may be absent); a type
# or tuple of types is a leaf; "sha256" is 64 lowercase hex digits; "url" is null or an http(s) link. A field
# that is not listed fails validation: a record carries what reproduces it and nothing else.
AGG = {"mean": _opt_num, "std": _opt_num, "ci95": (list, type(None)), "n": int, "n_empty": int}
SCHEMA_FIELDS = {
    "schema": str,
    "method": {"name": str, "source": str, "version": str, "config": ANY, "needs?": [str], "reference?": _opt_str,
               "family?": str,
               "code?": {"file": str, "sha256": _sha},          # a plugin file: the exact code that ran
               "package?": {"name": str, "version": str}},     # an installed distribution: what to install
    "dataset": {"ref": str, "fingerprint": _sha, "n": int, "revision?": _opt_str, "kind?": _opt_str,
                "name?": str},
    # the weights' content fingerprint (`models.weights_fingerprint`; records before 0.1 called it sha256)
    "model": {"ref": str, "name?": str, "fingerprint?": _sha, "sha256?": _sha, "revision?": _opt_str,
              "wall": {"dead_from": int, "grid": [int], "input_size": [int], "masked_rows": int, "side": str,
                       "orientation?": str}},
    "target": str,
    "postprocess": {"name": str, "definition": str},
    "metrics": "metrics",
    "axes?": {"empty_rule": str,
              "sample?": {"images": int, "seed": int, "choice": str},
              "hidden": {"orientations": [str], "choice": str, "seed": int, "tolerance": _num},
              "deletion": {"steps": int, "fill": str, "order": str, "seed": int, "score": str},
              "randomisation": {"init": str, "seed": int, "cells": str, "threshold": _num}},
    "flags?": {"orientation_dependent": bool, "model_insensitive": bool},
    "maps?": {"digest": _sha},
    "items": {"n": int, "digest": _sha, "skipped": [{"id": str, "reason": str}]},
    "rows": {"file": str, "sha256": _sha, "columns?": [str]},
    # The model's top-1 on the scored images (null when the dataset's labels name other classes); optional: the
    # records made before it was measured still validate.
    "accuracy?": {"top1": _opt_num, "n": int, "chance": _num, "classes": str},
    "env": {str: str},
    "seeds": {str: int},
    "run?": {"limit": (int, type(None)), "batch_size": int, "preprocess": str},
    "timing": {"seconds": _num, "images_per_s": _opt_num},
    "created": str,
    "track?": str,
    "submission?": {"name": str, "author": _opt_str, "url": _url, "description": _opt_str, "method_spec": str,
                    "submitted": str},
}
URL_RE = re.compile(r"^https?://[^\s<>\"'()]+$", flags=re.I)


def safe_url(url, what: str = "--url") -> str | None:
    """http(s) links only (no spaces, quotes, brackets or parentheses); anything else (javascript:, data:, file:)
    is refused."""
    if url is None or url == "":
        return None
    if not isinstance(url, str) or not URL_RE.match(url):
        if isinstance(url, str) and re.match(r"^https?://", url, flags=re.I):
            raise StackbenchError(f"{what} {url!r:.80}: a link may not contain spaces, quotes, angle brackets or "
                                  "parentheses; percent-encode them (a space is %20)")
        raise StackbenchError(f"{what} {url!r:.80}: only http:// or https:// links are accepted")
    return url


def _is_sha(v) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def _leaf(name: str, value, kind, where: str) -> None:
    if kind is ANY:
        return
    if kind == _sha:
        if not _is_sha(value):
            raise StackbenchError(f"{where}: field {name} must be a sha256 hex digest, got {value!r:.80}")
        return
    if kind == _url:
        safe_url(value, what=f"{where}: field {name}")
        return
    if isinstance(value, bool) and kind is not bool and kind in (int, _num, _opt_num):
        raise StackbenchError(f"{where}: field {name} must be a number, got a boolean")
    if not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise StackbenchError(f"{where}: field {name} must be {want}, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise StackbenchError(f"{where}: field {name} is not finite ({value})")


def _walk(name: str, value, spec, where: str, schema: str = SCHEMA) -> None:
    """Check `value` against `spec` (see SCHEMA_FIELDS), naming the first bad field."""
    if spec == "metrics":
        spec = {f"{m}?": AGG for m in METRICS}
    if isinstance(spec, list):
        if not isinstance(value, list):
            raise StackbenchError(f"{where}: field {name} must be a list, got {type(value).__name__}")
        for i, v in enumerate(value):
            _walk(f"{name}[{i}]", v, spec[0], where, schema)
        return
    if not isinstance(spec, dict):
        _leaf(name, value, spec, where)
        return
    if not isinstance(value, dict):
        raise StackbenchError(f"{where}: field {name} must be an object, got {type(value).__name__}")
    prefix = f"{name}." if name else ""
    if str in spec:  # a map: any string key, values of one kind
        for k, v in value.items():
            _walk(prefix + str(k), v, spec[str], where, schema)
        return
    known = {k.rstrip("?"): (k.endswith("?"), s) for k, s in spec.items()}
    for key in value:
        if key not in known:
            raise StackbenchError(f"{where}: field {prefix}{key} is not part of {schema}; remove it")
    for key, (optional, sub) in known.items():
        if key not in value:
            if optional:
                continue
            raise StackbenchError(f"{where}: field {prefix}{key} is missing")
        _walk(prefix + key, value[key], sub, where, schema)


def validate_record(record: dict, where: str = "result record") -> dict:
    """Check a record against `stackbench.result/2` (or `/1`); raise StackbenchError naming the first bad field
    (missing, of the wrong type, or not part of the schema)."""
    if not isinstance(record, dict):
        raise StackbenchError(f"{where}: not a JSON object")
    if record.get("schema") not in SCHEMAS:
        raise StackbenchError(f"{where}: field schema is {record.get('schema')!r}, expected {SCHEMA!r}")
    _walk("", record, SCHEMA_FIELDS, where, record["schema"])
    named = [k for k in ("fingerprint", "sha256") if k in record["model"]]
    if len(named) != 1:
        raise StackbenchError(f"{where}: field model.fingerprint is "
                              f"{'missing' if not named else 'given twice (also as model.sha256)'}")
    v2 = record["schema"] == SCHEMA
    need = METRICS if v2 else ("mu",)
    for metric in need:
        if metric not in record["metrics"]:
            raise StackbenchError(f"{where}: field metrics.{metric} is missing")
    extra = [k for k in ("axes", "flags", "maps") if (k in record) != v2]
    if extra:
        raise StackbenchError(f"{where}: field {extra[0]} is {'missing' if v2 else 'not part of ' + SCHEMA_1}")
    for metric, agg in record["metrics"].items():
        if not v2 and metric not in METRICS_1:
            raise StackbenchError(f"{where}: field metrics.{metric} is not part of {SCHEMA_1}; remove it")
        ci = agg["ci95"]
        if ci is not None and (len(ci) != 2 or not all(isinstance(v, _num) for v in ci) or ci[0] > ci[1]):
            raise StackbenchError(f"{where}: field metrics.{metric}.ci95 must be [low, high], got {ci!r}")
        counted = agg["n"] if v2 else agg["n"] + agg["n_empty"]  # /2 scores empty maps (in n and n_empty)
        if counted > record["items"]["n"] or (v2 and agg["n_empty"] > agg["n"]):
            raise StackbenchError(f"{where}: metrics.{metric} counts {counted} maps ({agg['n_empty']} empty) but items.n "
                                  f"is {record['items']['n']}")
        if agg["n"] and agg["mean"] is None:
            raise StackbenchError(f"{where}: field metrics.{metric}.mean is null although n = {agg['n']}")
    if record["items"]["n"] + len(record["items"]["skipped"]) > record["dataset"]["n"]:
        raise StackbenchError(f"{where}: items.n exceeds dataset.n")
    acc = record.get("accuracy")
    if acc is not None and (acc["n"] != record["items"]["n"] or not (acc["top1"] is None or 0 <= acc["top1"] <= 1)):
        raise StackbenchError(f"{where}: field accuracy must be a top-1 in [0, 1] over the items.n = "
                              f"{record['items']['n']} scored images, got {acc!r:.120}")
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
    return {"schema": record["schema"], "axes": record.get("axes"),
            "method": {k: record["method"].get(k) for k in ("name", "source", "version", "config", "code", "package")},
            "dataset": {k: record["dataset"].get(k) for k in ("fingerprint", "n")},
            "model": {"fingerprint": weights_fingerprint_of(record), "wall": record["model"].get("wall")},
            "target": record["target"], "postprocess": record["postprocess"]["name"],
            "limit": record.get("run", {}).get("limit"), "seeds": record["seeds"]}


def portable(ref: str, holder: str | Path) -> str:
    """A reference as a file stores it: a local path relative to the folder `holder` of that file (POSIX
    separators), so a results folder moved or shared with its inputs still points at them; anything else (a zoo
    name, NAME@random, hf:REPO, object:...) as given. `paper:PATH` keeps its scheme."""
    scheme, path = ("paper:", ref[6:]) if ref.startswith("paper:") else ("", ref)
    if not path or ":" in path.split("/", 1)[0] or "@" in path or not Path(path).exists():
        return ref
    return scheme + Path(os.path.relpath(Path(path).resolve(), Path(holder).resolve())).as_posix()


def weights_fingerprint_of(record: dict) -> str:
    """The model's weights fingerprint a record names (`model.fingerprint`; `model.sha256` in older records)."""
    return record["model"].get("fingerprint") or record["model"]["sha256"]


def stable(record: dict) -> dict:
    """The record without its volatile fields (timing, created): equal across identical runs."""
    return {k: v for k, v in record.items() if k not in VOLATILE}


def sampled_mu(rows: list[dict]) -> float | None:
    """Mean mu over the rows that got the axes (the images mu_hidden is measured on)."""
    v = [float(r["mu"]) for r in rows if r["orientation"] is not None]
    return math.fsum(v) / len(v) if v else None


def axes_sample(records) -> int | None:
    """The largest axes sample among `records` (images per set), or None when every record measured every image."""
    sizes = {(rec.get("axes") or {}).get("sample", {}).get("images") for rec in records}
    sizes.discard(None)
    return max(sizes) if sizes else None
