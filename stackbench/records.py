"""Result records (`stackbench.result/2`; `/1` is still read): their shape, building, reading and validating them.

A record holds everything needed to reproduce its number (DESIGN.md "Result record"); the per-image rows
live in a Parquet file beside it, whose sha256 the record carries. The shape is typed once, as `Record` and its
parts (TypedDicts); the builders return it and the validation spec `SCHEMA_FIELDS` is derived from it, so the two
cannot drift apart. `validate_record` names the first missing or malformed field, so a tampered or truncated
record is refused with one clear line."""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import types
import typing
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, TypedDict, get_args, get_origin

from . import metrics as M
from .errors import StackbenchError
from .refs import HTTP_URL

try:
    from typing import NotRequired
except ImportError:  # Python 3.10: the same meaning, spelled as a marker that `_fields` reads
    class _NotRequired:
        def __getitem__(self, tp):
            return Annotated[tp, _OPTIONAL]

    NotRequired = _NotRequired()

SCHEMA = "stackbench.result/3"
SCHEMA_2 = "stackbench.result/2"  # before MoRF/LeRF with ROAD's fill and the SSIM check: read and shown, not re-run
SCHEMA_1 = "stackbench.result/1"  # before the board's axes: read and shown, never re-run by verify
SCHEMAS = (SCHEMA, SCHEMA_2, SCHEMA_1)
# The metric table (names, labels, directions, formats) is metrics.METRICS; a record's metrics follow its order.
METRICS = tuple(M.METRICS)
METRICS_1 = tuple(name for name, m in M.METRICS.items() if not m.axis)  # schema 1: mu and friends, no axes
METRICS_2 = (*METRICS_1, "mu_hidden", "deletion_auc", "rand_corr")        # schema 2: the first three axes
METRICS_OF = {SCHEMA: METRICS, SCHEMA_2: METRICS_2, SCHEMA_1: METRICS_1}


def schema_number(schema: str) -> int:
    """3 for "stackbench.result/3"."""
    return int(str(schema).rsplit("/", 1)[1])
# Fields that change from run to run; everything else is a pure function of the inputs and the seed.
VOLATILE = ("timing", "created")
PREPROCESS = "RGB, ToTensor, ImageNet mean/std; images used at their stored size"

# ------------------------------------------------------------------------------------------ leaf kinds
# What the validator checks a leaf against: a type or tuple of types; "sha256": 64 lowercase hex digits; "url":
# null or an http(s) link; ANY: any JSON value. In the typed shape they are spelled as types (float: any number)
# and Annotated markers.
_num = (int, float)
_opt_num = (int, float, type(None))
_opt_str = (str, type(None))
_sha = "sha256"
_url = "url"
ANY = object()  # any JSON value (a method's own config)
_OPTIONAL = "optional"       # Python 3.10's NotRequired (see above)
SINCE_2 = "since schema 2"   # a field that /2 requires and /1 lacks

Sha256 = Annotated[str, _sha]
Url = Annotated[str | None, _url]


# ------------------------------------------------------------------------------------------ the shape
# A field that is not listed fails validation: a record carries what reproduces it and nothing else.

class Code(TypedDict):
    file: str
    sha256: Sha256


class Package(TypedDict):
    name: str
    version: str


class MethodInfo(TypedDict):
    """Enough to re-create this exact method (`SaliencyMethod.describe`)."""
    name: str
    source: str
    version: str
    config: Any                          # the method's own options
    needs: NotRequired[list[str]]
    reference: NotRequired[str | None]
    family: NotRequired[str]
    code: NotRequired[Code]              # a plugin file: the exact code that ran
    package: NotRequired[Package]        # an installed distribution: what to install


class DatasetInfo(TypedDict):
    ref: str
    fingerprint: Sha256
    n: int
    revision: NotRequired[str | None]
    kind: NotRequired[str | None]
    name: NotRequired[str]


class WallInfo(TypedDict):
    """`Wall.to_dict`."""
    dead_from: int
    grid: list[int]
    input_size: list[int]
    masked_rows: int
    side: str
    orientation: NotRequired[str]


class ModelInfo(TypedDict):
    """Exactly one of fingerprint and sha256 (`validate_record`): the weights' content fingerprint
    (`models.weights_fingerprint`); records before 0.1 called it sha256."""
    ref: str
    name: NotRequired[str]
    fingerprint: NotRequired[Sha256]
    sha256: NotRequired[Sha256]
    revision: NotRequired[str | None]
    wall: WallInfo
    arch: NotRequired[str]               # vgg | vit (records before the ViTs: vgg)
    wall_kind: NotRequired[str]          # how the wall is built: dense (the VGGs' first dense layer), attention, pixel


class Band(TypedDict):
    """The input lines mu is scored on: the dataset's band (its `wall_row` down), which lies inside the model's dead
    zone (`model.wall`). For the VGGs the two coincide; a ViT's dead zone is whole patch rows, so it starts higher
    and a correct map's spill at the zone's edge is not counted."""
    axis: str
    first: int
    last: int


class Postprocess(TypedDict):
    name: str
    definition: str


class Aggregate(TypedDict):
    """`metrics.aggregate`: mean, std and bootstrap CI over the scored maps."""
    mean: float | None
    std: float | None
    ci95: list[float] | None             # [low, high] (checked by `validate_record`)
    n: int
    n_empty: int


class Metrics(TypedDict):
    """One aggregate per metric, in METRICS' order; which are required depends on the schema."""
    mu: NotRequired[Aggregate]
    dead_mass: NotRequired[Aggregate]
    leak_rate: NotRequired[Aggregate]
    mu_hidden: NotRequired[Aggregate]
    deletion_auc: NotRequired[Aggregate]
    morf_auc: NotRequired[Aggregate]
    lerf_auc: NotRequired[Aggregate]
    srg: NotRequired[Aggregate]
    rand_corr: NotRequired[Aggregate]
    rand_ssim: NotRequired[Aggregate]


class AxesSample(TypedDict):
    images: int
    seed: int
    choice: str


class HiddenAxis(TypedDict):
    orientations: list[str]
    choice: str
    seed: int
    tolerance: float
    reparametrised: NotRequired[str]     # since schema 3 (`_check_schema_parts`)


class DeletionAxis(TypedDict):
    steps: int
    fill: str
    order: str
    seed: int
    score: str


class RoadAxis(TypedDict):
    steps: int
    seed: int
    fill: str
    order: str


class RandomisationAxis(TypedDict):
    init: str
    seed: int
    cells: str
    threshold: float
    ssim_threshold: NotRequired[float]   # since schema 3 (`_check_schema_parts`)
    ssim: NotRequired[str]


class AxesInfo(TypedDict):
    """`Axes.describe`: every parameter that reproduces the board's axes; with none measured (`--axes none`, the
    paper's protocol) only `measured: "none"` and the empty rule (`_check_schema_parts`)."""
    measured: NotRequired[str]
    empty_rule: str
    sample: NotRequired[AxesSample]
    hidden: NotRequired[HiddenAxis]
    deletion: NotRequired[DeletionAxis]
    road: NotRequired[RoadAxis]          # since schema 3 (`_check_schema_parts`)
    randomisation: NotRequired[RandomisationAxis]


class Flags(TypedDict):
    orientation_dependent: bool | None   # null: the axes were not measured
    model_insensitive: bool | None


class MapsInfo(TypedDict):
    digest: Sha256                       # `maps_digest`


class Skipped(TypedDict):
    id: str
    reason: str


class Items(TypedDict):
    n: int
    digest: Sha256                       # `items_digest`
    skipped: list[Skipped]


class RowsInfo(TypedDict):
    file: str
    sha256: Sha256
    columns: NotRequired[list[str]]


class Accuracy(TypedDict):
    """The model's top-1 on the scored images (null when the dataset's labels name other classes)."""
    top1: float | None
    n: int
    chance: float
    classes: str


class RunInfo(TypedDict):
    limit: int | None
    batch_size: int
    preprocess: str


class Timing(TypedDict):
    seconds: float                       # the method's own, summed over the processes
    images_per_s: float | None
    processes: NotRequired[int]          # that shared the images (the rows do not depend on it)


class Submission(TypedDict):
    name: str
    author: str | None
    url: Url
    description: str | None
    method_spec: str
    submitted: str


class Record(TypedDict):
    """A `stackbench.result/2` record (or a /1 one: no axes, flags, maps; three metrics). Fields are listed in the
    order validation checks them, which decides the field a record with several faults is refused for."""
    schema: str
    method: MethodInfo
    dataset: DatasetInfo
    model: ModelInfo
    band: NotRequired[Band]              # records made before ViTs scored the model's own dead zone
    target: str
    postprocess: Postprocess
    metrics: Metrics
    axes: NotRequired[Annotated[AxesInfo, SINCE_2]]
    flags: NotRequired[Annotated[Flags, SINCE_2]]
    maps: NotRequired[Annotated[MapsInfo, SINCE_2]]
    tolerances: NotRequired[dict[str, float]]  # {metric: absolute tolerance a re-run must meet} (`rerun_tolerances`)
    items: Items
    rows: RowsInfo
    accuracy: NotRequired[Accuracy]      # optional: the records made before it was measured still validate
    env: dict[str, str]
    seeds: dict[str, int]
    run: NotRequired[RunInfo]
    timing: Timing
    created: str
    track: NotRequired[str]
    submission: NotRequired[Submission]


class BaseRecord(TypedDict):
    """The fields every method's record of one evaluation shares, typed as in `Record` (checked at import). Not a
    base class of Record: Record keeps its fields in validation order."""
    schema: str
    dataset: DatasetInfo
    model: ModelInfo
    band: NotRequired[Band]
    target: str
    postprocess: Postprocess
    axes: AxesInfo
    env: dict[str, str]
    seeds: dict[str, int]
    run: RunInfo


# ------------------------------------------------------------------------------------------ the validation spec

@functools.cache
def _fields(shape) -> dict[str, tuple[bool, bool, Any]]:
    """A TypedDict's fields: name -> (optional, since schema 2, type without those markers)."""
    out = {}
    for name, tp in typing.get_type_hints(shape, include_extras=True).items():
        optional = get_origin(tp) is NotRequired
        tp = get_args(tp)[0] if optional else tp
        meta = tp.__metadata__ if get_origin(tp) is Annotated else ()
        out[name] = (optional or _OPTIONAL in meta, SINCE_2 in meta, tp)
    return out


def _kinds(tp) -> tuple:
    """The types one member of a union admits (float: any number; list[X]: a list, its items unchecked)."""
    return _num if tp is float else (get_origin(tp) or tp,)


def _spec(tp):
    """The validation spec of a typed shape: a dict is an object whose keys are exactly these (a key ending in "?"
    may be absent); a list holds items of its one spec; {str: spec} maps any key to values of one spec; anything
    else is a leaf kind (see above)."""
    origin, args = get_origin(tp), get_args(tp)
    if typing.is_typeddict(tp):
        return {name + "?" * optional: _spec(t) for name, (optional, _, t) in _fields(tp).items()}
    if origin is Annotated:
        return next((m for m in tp.__metadata__ if m in (_sha, _url)), None) or _spec(args[0])
    if tp is Any:
        return ANY
    if origin is list:
        return [_spec(args[0])]
    if origin is dict:
        return {str: _spec(args[1])}
    if origin in (typing.Union, types.UnionType):
        return tuple(k for a in args for k in _kinds(a))
    return _num if tp is float else tp


SCHEMA_FIELDS = _spec(Record)
AGG = _spec(Aggregate)
_SINCE_2 = tuple(k for k, (_, since_2, _) in _fields(Record).items() if since_2)  # axes, flags, maps


def _check_shapes() -> None:
    """The typed shapes agree with each other: Metrics names METRICS, BaseRecord's fields are Record's."""
    if tuple(_fields(Metrics)) != METRICS:
        raise TypeError(f"records.Metrics names {tuple(_fields(Metrics))}, METRICS {METRICS}")
    whole = _fields(Record)
    for name, (_, _, tp) in _fields(BaseRecord).items():
        if name not in whole or _spec(whole[name][2]) != _spec(tp):
            raise TypeError(f"records.BaseRecord.{name} is not typed as records.Record.{name}")


_check_shapes()


# ------------------------------------------------------------------------------------------ validating

URL_RE = HTTP_URL


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
    """Check `value` against `spec` (see `_spec`), naming the first bad field."""
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
    _check_schema_parts(record, where)
    for metric, agg in record["metrics"].items():
        _check_aggregate(record, metric, agg, where)
    if record["items"]["n"] + len(record["items"]["skipped"]) > record["dataset"]["n"]:
        raise StackbenchError(f"{where}: items.n exceeds dataset.n")
    acc = record.get("accuracy")
    if acc is not None and (acc["n"] != record["items"]["n"] or not (acc["top1"] is None or 0 <= acc["top1"] <= 1)):
        raise StackbenchError(f"{where}: field accuracy must be a top-1 in [0, 1] over the items.n = "
                              f"{record['items']['n']} scored images, got {acc!r:.120}")
    return record


def _check_schema_parts(record: dict, where: str) -> None:
    """What each schema requires: its metrics (/1: mu at least); since /2 the axes, flags and maps digest; since /3
    the ROAD curves' parameters and the SSIM check's."""
    schema = record["schema"]
    axes = schema != SCHEMA_1
    for metric in METRICS_OF[schema] if axes else ("mu",):
        if metric not in record["metrics"]:
            raise StackbenchError(f"{where}: field metrics.{metric} is missing")
    extra = [k for k in _SINCE_2 if (k in record) != axes]
    if extra:
        raise StackbenchError(f"{where}: field {extra[0]} is {'missing' if axes else 'not part of ' + SCHEMA_1}")
    if axes and _axes_none(record, where):
        return
    if axes:
        for name in ("hidden", "deletion", "randomisation"):
            if name not in record["axes"]:
                raise StackbenchError(f"{where}: field axes.{name} is missing")
        since_3 = {"axes.road": "road" in record["axes"],
                   "axes.hidden.reparametrised": "reparametrised" in record["axes"]["hidden"],
                   "axes.randomisation.ssim_threshold": "ssim_threshold" in record["axes"]["randomisation"],
                   "axes.randomisation.ssim": "ssim" in record["axes"]["randomisation"]}
        for name, present in since_3.items():
            if present != (schema == SCHEMA):
                raise StackbenchError(f"{where}: field {name} is "
                                      f"{'missing' if schema == SCHEMA else 'not part of ' + schema}")


def axes_measured(record: dict) -> bool:
    """Whether a /2+ record measured the board's axes (`--axes none` records did not)."""
    return (record.get("axes") or {}).get("measured") != "none"


def _axes_none(record: dict, where: str) -> bool:
    """A record of the paper's protocol (`axes.measured` "none"): no axis parameters, metric or flag. True when it
    is one; refused when `measured` says anything else or the record carries what was not measured."""
    axes = record["axes"]
    if "measured" not in axes:
        return False
    if axes["measured"] != "none":
        raise StackbenchError(f"{where}: field axes.measured is {axes['measured']!r:.40}; only 'none' is written "
                              "(a record that measured the axes has no such field)")
    extra = [k for k in axes if k not in ("measured", "empty_rule")]
    counted = [m for m in AXES_METRICS if record["metrics"].get(m, {}).get("n")]
    flagged = [f for f, v in record["flags"].items() if v is not None]
    if extra or counted or flagged:
        what = f"axes.{extra[0]}" if extra else f"metrics.{counted[0]}" if counted else f"flags.{flagged[0]}"
        raise StackbenchError(f"{where}: field {what} is given although axes.measured is 'none'")
    return True


def _check_aggregate(record: dict, metric: str, agg: dict, where: str) -> None:
    """One metric's aggregate: a metric of its schema, an ordered CI, counts within items.n, a mean when n > 0."""
    schema = record["schema"]
    v2 = schema != SCHEMA_1
    if metric not in METRICS_OF[schema]:
        raise StackbenchError(f"{where}: field metrics.{metric} is not part of {schema}; remove it")
    ci = agg["ci95"]
    if ci is not None and (len(ci) != 2 or not all(isinstance(v, _num) for v in ci) or ci[0] > ci[1]):
        raise StackbenchError(f"{where}: field metrics.{metric}.ci95 must be [low, high], got {ci!r}")
    counted = agg["n"] if v2 else agg["n"] + agg["n_empty"]  # /2 on scores empty maps (in n and n_empty)
    if counted > record["items"]["n"] or (v2 and agg["n_empty"] > agg["n"]):
        raise StackbenchError(f"{where}: metrics.{metric} counts {counted} maps ({agg['n_empty']} empty) but items.n "
                              f"is {record['items']['n']}")
    if agg["n"] and agg["mean"] is None:
        raise StackbenchError(f"{where}: field metrics.{metric}.mean is null although n = {agg['n']}")


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


# ------------------------------------------------------------------------------------------ building

def dataset_info(info: dict, holder: str | Path) -> DatasetInfo:
    """The record's dataset from `datafolder.open_dataset`'s info; a local path relative to `holder`."""
    return {"ref": portable(info["ref"], holder), "fingerprint": info["fingerprint"], "n": info["n"],
            "revision": info.get("revision"), "kind": (info.get("generation") or {}).get("kind")}


def band_first(record: dict) -> int:
    """The first row of the band a record's mu is scored on: its `band`, else (records before the ViTs, where the
    band and the dead zone are the same) the model's first dead row."""
    return (record.get("band") or {}).get("first", record["model"]["wall"]["dead_from"])


def model_info(net, fingerprint: str, holder: str | Path) -> ModelInfo:
    """The record's model: a walled model and its weights' fingerprint; a local path relative to `holder`."""
    return {"ref": portable(net.ref, holder), "name": getattr(net, "name", type(net).__name__),
            "fingerprint": fingerprint, "wall": net.wall.to_dict(), "arch": getattr(net, "arch", "vgg"),
            "wall_kind": getattr(net, "wall_kind", "dense")}


def base_record(dataset: DatasetInfo, model: ModelInfo, *, band: Band, target: str, postprocess: str,
                axes: AxesInfo, env: dict[str, str], seed: int, limit: int | None, batch_size: int) -> BaseRecord:
    """What every method's record of one evaluation shares."""
    return {"schema": SCHEMA, "dataset": dataset, "model": model, "band": band, "target": target,
            "postprocess": {"name": postprocess, "definition": M.POSTPROCESS[postprocess]}, "axes": axes,
            "env": env, "seeds": {"run": seed, "bootstrap": seed},
            "run": {"limit": limit, "batch_size": batch_size, "preprocess": PREPROCESS}}


def method_record(base: BaseRecord, method: MethodInfo, rows: list[dict], *, metrics: Metrics, flags: Flags,
                  ids: list[str], shas: list[str], skipped: list[Skipped], rows_file: str, rows_sha256: str,
                  classes: dict | None, seconds: float, tolerances: dict[str, float] | None = None,
                  processes: int = 1) -> Record:
    """One method's finished record: `base` with the method, its metrics (`aggregate_rows`) and flags, and what
    pins its rows (the images scored, their maps, the Parquet file)."""
    n = len(rows)
    return {
        **base,
        "method": method,
        "metrics": metrics,
        "flags": flags,
        "maps": {"digest": maps_digest(rows)},
        **({"tolerances": tolerances} if tolerances else {}),
        "items": {"n": n, "digest": items_digest(ids, shas), "skipped": skipped},
        "rows": {"file": rows_file, "sha256": rows_sha256, "columns": list(rows[0])},
        **({"accuracy": acc} if (acc := accuracy(rows, classes)) else {}),
        "timing": {"seconds": round(seconds, 4), "images_per_s": round(n / seconds, 3) if seconds > 0 else None,
                   "processes": processes},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def items_digest(ids, shas) -> str:
    """sha256 over 'id pixel-sha256' lines in evaluation order: which exact images were scored (their pixels, not
    their encoding)."""
    h = hashlib.sha256()
    for i, s in zip(ids, shas, strict=True):
        h.update(f"{i} {s}\n".encode())
    return h.hexdigest()


def maps_digest(rows) -> str:
    """sha256 over the per-image map digests in evaluation order: equal for two methods whose scored maps are
    bitwise identical on every image."""
    return hashlib.sha256("".join(f"{r['map_sha256']}\n" for r in rows).encode()).hexdigest()


# Which empty-map column counts an empty map for each metric (schema 2: empty maps are scored, EMPTY_RULE).
EMPTY_COLUMN = {"mu": "map_empty", "dead_mass": "map_empty", "leak_rate": "map_empty", "mu_hidden": "hidden_empty",
                "deletion_auc": "map_empty", "morf_auc": "map_empty", "lerf_auc": "map_empty", "srg": "map_empty",
                "rand_corr": "map_empty", "rand_ssim": "map_empty"}

# measured on the images that have an orientation
AXES_METRICS = tuple(name for name, m in M.METRICS.items() if m.axis)


def aggregate_rows(rows: list[dict], seed: int) -> Metrics:
    """The record's metrics from its per-image rows (schema 1 rows: the three mu metrics, NaN for an empty map).
    The axes' metrics count only the rows that got the axes (all of them, unless the axes ran on a sample)."""
    def values(rs, m):
        return [math.nan if r[m] is None else r[m] for r in rs]

    if not (rows and "map_empty" in rows[0]):
        return {m: M.aggregate(values(rows, m), seed=seed) for m in M.PER_IMAGE}
    out = {}
    for m, empty in EMPTY_COLUMN.items():
        if m not in rows[0]:  # schema 2 rows: the metrics of their schema
            continue
        rs = [r for r in rows if r["orientation"] is not None] if m in AXES_METRICS else rows
        out[m] = M.aggregate(values(rs, m), seed=seed, empty=[bool(r[empty]) for r in rs])
    return out


def accuracy(rows: list[dict], space: dict | None) -> Accuracy | None:
    """The model's top-1 on the scored images against the dataset's labels (null when they name other classes);
    `space`: `evaluate.label_space`."""
    if space is None or not rows:
        return None
    hit = sum(int(r["predicted"]) == int(r["label"]) for r in rows)
    k = space["num_classes"]
    return {"top1": hit / len(rows) if space["aligned"] else None, "n": len(rows), "chance": 1.0 / k,
            "classes": space["basis"] if space["aligned"] else "differ"}


# ------------------------------------------------------------------------------------------ reading

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
