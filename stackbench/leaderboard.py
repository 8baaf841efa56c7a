"""The leaderboard: a store of result records that anyone can add to (submit) and anyone can re-check (verify).

    leaderboard/
      tracks.json                                        the tracks: datasets (presets + pinned fingerprints), model
      results/<track>/<dataset>/<model>/<method>.json    stackbench.result/1 records, with a `submission` block
      results/<track>/<dataset>/<model>/<method>.parquet their per-image rows
      reported/paper.json                                numbers published elsewhere, not re-run
      README.md, index.html, mu.png                      rendered by `stackbench leaderboard build`

Every row says what produced it and can be recomputed: `verify` checks the schema, the rows file's hash, that
the per-image rows aggregate to the stored numbers, the pinned fingerprints, and re-runs the method when it is
available here.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .datafolder import atomic_write_bytes, atomic_write_json, fingerprint
from .errors import StackbenchError
from .generate.resources import ROOT
from .metrics import mu_cell
from .records import METRICS

STORE = ROOT / "leaderboard"
DATASETS = ("stack-mix", "stack-gen")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
REL_TOL = 1e-6


# ------------------------------------------------------------------------------------------------ tracks

@dataclass
class Track:
    """One leaderboard track: which datasets, which model, which protocol; pins make it exactly reproducible."""

    name: str
    model: str
    datasets: dict  # dataset name -> {"preset": NAME, "fingerprint": sha256 | None} or {"path": DIR}
    model_sha256: str | None = None
    target: str = "predicted"
    postprocess: str = "gradcam-lib"
    seed: int = 0
    batch_size: int = 8
    description: str = ""
    extra: dict = field(default_factory=dict)

    def dataset_folder(self, name: str, cache: Path | None = None, progress: bool = False) -> Path:
        """The track's dataset folder: given, or regenerated deterministically from its preset (once, cached),
        and checked against the pinned fingerprint."""
        spec = self.datasets[name]
        if "path" in spec:
            folder = Path(spec["path"])
        else:
            folder = (cache or cache_dir()) / self.name / f"{name}-{spec['preset']}"
            if not (folder / "generation.json").is_file() or \
                    json.loads((folder / "generation.json").read_text()).get("status") != "complete":
                _generate(name, spec["preset"], folder, progress)
        pin = spec.get("fingerprint")
        if pin and fingerprint(folder) != pin:
            raise StackbenchError(f"track {self.name}: dataset {name} at {folder} has fingerprint "
                                  f"{fingerprint(folder)[:12]}, the track pins {pin[:12]}; delete the folder to "
                                  "regenerate it, or check your library versions (generation.json lists them)")
        return folder


def cache_dir() -> Path:
    return Path(os.environ.get("STACKBENCH_CACHE", Path.home() / ".cache" / "stackbench"))


def _generate(kind: str, preset: str, folder: Path, progress: bool) -> None:
    from .generate import load_preset
    from .generate.stackgen import StackGenRecipe, generate_stack_gen
    from .generate.stackmix import StackMixRecipe, generate_stack_mix

    fields = load_preset(kind, preset)
    if kind == "stack-mix":
        generate_stack_mix(folder, StackMixRecipe.from_fields(fields), progress=progress, overwrite=True)
    else:
        generate_stack_gen(folder, StackGenRecipe.from_fields(fields), progress=progress, overwrite=True)


def load_tracks(store: Path = STORE) -> dict[str, Track]:
    path = Path(store) / "tracks.json"
    if not path.is_file():
        raise StackbenchError(f"{path} is missing: the leaderboard store must define its tracks")
    raw = json.loads(path.read_text())
    return {name: Track(name=name, **spec) for name, spec in raw["tracks"].items()}


def get_track(track: str | Track, store: Path = STORE) -> Track:
    if isinstance(track, Track):
        return track
    tracks = load_tracks(store)
    if track not in tracks:
        from .errors import close_matches

        raise StackbenchError(f"unknown track {track!r}{close_matches(track, tracks)}; tracks: {', '.join(tracks)}")
    return tracks[track]


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


def safe_url(url: str | None) -> str | None:
    """http(s) links only; anything else (javascript:, data:, file:) is refused."""
    if url is None or url == "":
        return None
    if not re.match(r"^https?://[^\s<>\"']+$", url, flags=re.I):
        raise StackbenchError(f"--url {url!r}: only http:// or https:// links are accepted")
    return url


def row_path(store: Path, track: str, dataset: str, model: str, name: str) -> Path:
    base = (Path(store) / "results").resolve()
    path = base / stem_for(track) / stem_for(dataset) / stem_for(re.sub(r"[@/:]", "_", model)) / f"{stem_for(name)}.json"
    if base not in path.resolve().parents:  # belt and braces: never write outside the store
        raise StackbenchError(f"{path} lies outside the store {base}")
    return path


@contextlib.contextmanager
def _locked(store: Path):
    """One writer at a time in a store (concurrent submits both land, one after the other)."""
    Path(store).mkdir(parents=True, exist_ok=True)
    with open(Path(store) / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def stored_rows(store: Path = STORE, track: str | None = None, method: str | None = None) -> list[Path]:
    base = Path(store) / "results"
    pattern = f"{track or '*'}/*/*/{method or '*'}.json"
    return sorted(base.glob(pattern))


# ------------------------------------------------------------------------------------------------ submit

def submit(method: str, track: str | Track = "mini", *, name: str | None = None, author: str | None = None,
           url: str | None = None, description: str | None = None, replace: bool = False, store: Path = STORE,
           device: str = "auto", progress: bool = True, method_config: dict | None = None) -> list[Path]:
    """Run the track's official evaluation of `method` on each of its datasets and write the records into the
    store. Returns the written record paths."""
    from .evaluate import evaluate, resolve_methods

    t = get_track(track, store)
    m = resolve_methods([method], **({method: method_config} if method_config else {}))[0]
    name = name or m.name
    stem_for(name)
    url = safe_url(url)
    paths = {ds: row_path(store, t.name, ds, t.model, name) for ds in t.datasets}
    taken = [p for p in paths.values() if p.exists()]
    if taken and not replace:
        raise StackbenchError(f"{name} is already on the {t.name} board ({taken[0]}); pass --replace to overwrite it")
    staged = {}
    with tempfile.TemporaryDirectory(prefix="stackbench-submit-") as tmp:
        for ds in t.datasets:
            folder = t.dataset_folder(ds, progress=progress)
            out = Path(tmp) / ds
            (run,) = evaluate([m], str(folder), t.model, target=t.target, postprocess=t.postprocess,
                              batch_size=t.batch_size, device=device, out=out, seed=t.seed, progress=progress,
                              figure=False)
            if run.status != "done":
                raise StackbenchError(f"{name} failed on {t.name}/{ds}: {run.error}; nothing was written")
            record = dict(run.record)
            record["dataset"] = {**record["dataset"], "ref": f"{t.name}:{ds}", "name": ds}
            record["track"] = t.name
            record["submission"] = {"name": name, "author": author, "url": url, "description": description,
                                    "method_spec": method, "submitted": record["created"][:10]}
            record["rows"] = {**record["rows"], "file": paths[ds].with_suffix(".parquet").name}
            rows = run.record_path.with_suffix(".parquet").read_bytes()
            check_record(record, rows, t, where=f"{t.name}/{ds}/{name}")
            staged[ds] = (record, rows)
        with _locked(store):
            taken = [p for p in paths.values() if p.exists()]
            if taken and not replace:
                raise StackbenchError(f"{name} was submitted to the {t.name} board meanwhile ({taken[0]}); pass "
                                      "--replace to overwrite it")
            for ds, (record, rows) in staged.items():
                atomic_write_bytes(paths[ds].with_suffix(".parquet"), rows)
                atomic_write_json(paths[ds], record)  # last: a record means its rows are there
    return [paths[ds] for ds in t.datasets]


# ------------------------------------------------------------------------------------------------ verify

def _rows_from(data: bytes) -> list[dict]:
    import io

    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data)).to_pylist()


def _close(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-12)


def check_record(record: dict, rows_bytes: bytes, track: Track, where: str) -> None:
    """Schema, rows hash, rows -> summary, pinned fingerprints. Raises StackbenchError naming the row."""
    from .evaluate import aggregate_rows
    from .records import validate_record

    validate_record(record, where=where)
    for f in ("track", "submission"):
        if f not in record:
            raise StackbenchError(f"{where}: field {f} is missing")
    if hashlib.sha256(rows_bytes).hexdigest() != record["rows"]["sha256"]:
        raise StackbenchError(f"{where}: the per-image rows file does not match rows.sha256 (edited?)")
    rows = _rows_from(rows_bytes)
    if len(rows) != record["items"]["n"]:
        raise StackbenchError(f"{where}: {len(rows)} per-image rows but items.n = {record['items']['n']}")
    again = aggregate_rows(rows, record["seeds"]["bootstrap"])
    for metric, agg in again.items():
        for key, value in agg.items():
            stored = record["metrics"].get(metric, {}).get(key)
            if not _close(value, stored):
                raise StackbenchError(f"{where}: metrics.{metric}.{key} = {stored} but the per-image rows give "
                                      f"{value}")
    name = record["dataset"].get("name")
    pin = track.datasets.get(name, {}).get("fingerprint") if name else None
    if pin and record["dataset"]["fingerprint"] != pin:
        raise StackbenchError(f"{where}: dataset fingerprint {record['dataset']['fingerprint'][:12]} is not the "
                              f"track's official {pin[:12]}")
    if track.model_sha256 and record["model"]["sha256"] != track.model_sha256:
        raise StackbenchError(f"{where}: model sha256 {record['model']['sha256'][:12]} is not the track's official "
                              f"{track.model_sha256[:12]}")


@dataclass
class Verdict:
    row: str
    ok: bool
    rerun: bool
    message: str


def verify(track: str | None = None, method: str | None = None, store: Path = STORE, rerun: bool = True,
           device: str = "auto", progress: bool = False, skip: tuple[str, ...] = ()) -> list[Verdict]:
    """Check every stored row (of a track / method): record, rows, pins; re-run it when its method is here."""
    from .evaluate import evaluate
    from .methods import get_method

    tracks = load_tracks(store)
    out = []
    for path in stored_rows(store, track, method):
        row = path.relative_to(Path(store) / "results").with_suffix("").as_posix()
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            out.append(Verdict(row, False, False, f"not valid JSON ({e})"))
            continue
        t = tracks.get(path.relative_to(Path(store) / "results").parts[0])
        try:
            if t is None:
                raise StackbenchError(f"{row}: no track of that name in tracks.json")
            rows_file = path.with_suffix(".parquet")
            if not rows_file.is_file():
                raise StackbenchError(f"{row}: per-image rows file {rows_file.name} is missing")
            check_record(record, rows_file.read_bytes(), t, where=row)
        except StackbenchError as e:
            out.append(Verdict(row, False, False, str(e)))
            continue
        m = record["method"]
        if not rerun or path.stem in skip or m["name"] in skip:
            out.append(Verdict(row, True, False, "record, rows and pins check; not re-run"))
            continue
        try:
            spec = m["name"] if m["source"] == "stackbench" else m["source"]
            inst = get_method(spec, **m["config"])
        except StackbenchError as e:
            out.append(Verdict(row, True, False, f"record, rows and pins check; method unavailable here ({e})"))
            continue
        with tempfile.TemporaryDirectory(prefix="stackbench-verify-") as tmp:
            folder = t.dataset_folder(record["dataset"]["name"], progress=progress)
            (run,) = evaluate([inst], str(folder), t.model, target=record["target"],
                              postprocess=record["postprocess"]["name"], batch_size=t.batch_size, device=device,
                              out=tmp, seed=record["seeds"]["run"], progress=progress, figure=False)
            if run.status != "done":
                out.append(Verdict(row, False, True, f"{row}: re-run failed: {run.error}"))
                continue
            bad = [f"metrics.{k}.{f}: stored {record['metrics'][k][f]}, recomputed {run.record['metrics'][k][f]}"
                   for k in METRICS for f in ("mean", "std", "n", "n_empty")
                   if not _close(run.record["metrics"][k][f], record["metrics"][k][f])]
            if record["items"]["digest"] != run.record["items"]["digest"]:
                bad.append("items.digest differs (other images were scored)")
            if bad:
                out.append(Verdict(row, False, True, f"{row}: {'; '.join(bad)}"))
            else:
                out.append(Verdict(row, True, True, "record, rows and pins check; re-run reproduces every metric"))
    return out


# ------------------------------------------------------------------------------------------------ render

def board(store: Path = STORE) -> dict:
    """{track: [entry...]} with entry = {name, mu: {dataset: agg}, leak: {dataset: mean}, n, submitted, url,
    author, description, rank_key}, ranked by mean mu over the datasets (lower is better)."""
    tracks = load_tracks(store)
    out = {}
    for t in tracks.values():
        entries: dict[str, dict] = {}
        for path in stored_rows(store, t.name):
            rec = json.loads(path.read_text())
            sub = rec.get("submission", {})
            e = entries.setdefault(path.stem, {"name": sub.get("name", path.stem), "mu": {}, "leak": {}, "n": {},
                                               "submitted": sub.get("submitted"), "url": sub.get("url"),
                                               "author": sub.get("author"), "description": sub.get("description"),
                                               "method": rec["method"]["name"]})
            ds = rec["dataset"].get("name", path.parent.parent.name)
            e["mu"][ds] = rec["metrics"]["mu"]
            e["leak"][ds] = rec["metrics"]["leak_rate"]["mean"]
            e["n"][ds] = rec["items"]["n"]
        for e in entries.values():
            means = [e["mu"][d]["mean"] for d in t.datasets if d in e["mu"] and e["mu"][d]["mean"] is not None]
            e["rank_key"] = sum(means) / len(means) if means else math.inf
        out[t.name] = sorted(entries.values(), key=lambda e: (e["rank_key"], e["name"]))
    return out


def reported(store: Path = STORE) -> list[dict]:
    out = []
    for path in sorted((Path(store) / "reported").glob("*.json")):
        out.append(json.loads(path.read_text()))
    return out


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~-])")


def md_text(s) -> str:
    """Untrusted text for a Markdown table cell: HTML-escaped, Markdown punctuation backslash-escaped."""
    import html

    s = " ".join(str(s or "").split())  # no newlines: they would break the table
    return _MD_SPECIAL.sub(r"\\\1", html.escape(s, quote=True))


def _md_link(text: str, url: str | None) -> str:
    if not url or not re.match(r"^https?://[^\s<>\"'()]+$", url, flags=re.I):
        return md_text(text)
    return f"[{md_text(text)}]({url})"


def table_rows(track: Track, entries: list[dict]) -> list[list[str]]:
    rows = []
    for i, e in enumerate(entries, 1):
        leaks = [e["leak"][d] for d in track.datasets if e["leak"].get(d) is not None]
        n = "/".join(str(e["n"].get(d, "-")) for d in track.datasets)
        rows.append([str(i), e["name"], *[mu_cell(e["mu"].get(d)) for d in track.datasets],
                     f"{100 * sum(leaks) / len(leaks):.1f}" if leaks else "-", n, e["submitted"] or "-", e["url"] or ""])
    return rows


def _view(store: Path, view: tuple | None) -> tuple[dict, dict]:
    """(tracks, boards): the given snapshot, or read from the store."""
    return view if view is not None else (load_tracks(store), board(store))


def render_markdown(store: Path = STORE, view: tuple | None = None) -> str:
    tracks, boards = _view(store, view)
    lines = ["# stackbench leaderboard", "",
             "mu x100 (mean ± std over images): the share of a saliency map's L2 norm that falls behind the wall, "
             "where the model provably cannot see (paper eq. 1). Lower is better; rank = mean over the track's "
             "datasets. Every row is a `stackbench.result/1` record under `results/` with its per-image rows; "
             "`stackbench leaderboard verify` recomputes it.", ""]
    for t in tracks.values():
        lines += [f"## Track `{t.name}`", "", md_text(t.description), "",
                  f"Model `{t.model}`" + (f" (sha256 `{t.model_sha256[:12]}`)" if t.model_sha256 else "") +
                  f"; target: {t.target}; post-processing: {t.postprocess}.", ""]
        header = ["#", "method", *[f"{d.upper()} mu x100" for d in t.datasets], "leak rate x100", "n", "submitted",
                  "source"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        entries = boards[t.name]
        for row, e in zip(table_rows(t, entries), entries):
            row[1] = md_text(row[1])
            row[-1] = _md_link("link", e["url"]) if e["url"] else "-"
            lines.append("| " + " | ".join(row) + " |")
        if not entries:
            lines.append("| - | (no submissions yet) |" + " |" * (len(header) - 2))
        lines.append("")
    for rep in reported(store):
        lines += [f"## Reported: {md_text(rep['title'])}", "", f"*Reported, not re-run here.* {md_text(rep['note'])}", "",
                  "| method | " + " | ".join(f"{d.upper()} mu x100" for d in rep["datasets"]) + " |",
                  "|---|" + "---|" * len(rep["datasets"])]
        for r in rep["rows"]:
            lines.append(f"| {md_text(r['method'])} | " + " | ".join(
                f"{r[d][0]:.1f} ± {r[d][1]:.1f}" for d in rep["datasets"]) + " |")
        lines.append("")
    lines += ["![mu per method](mu.png)", ""]
    return "\n".join(lines)


def render_chart(path: Path, store: Path = STORE, view: tuple | None = None) -> Path:
    """mu x100 per method and dataset with std error bars, one panel per track that has rows."""
    from .figures import _plt, mu_bars_ax, save_figure

    tracks, boards = _view(store, view)
    shown = [t for t in tracks.values() if boards[t.name]] or list(tracks.values())[:1]
    fig, axes = _plt().subplots(len(shown), 1, figsize=(9, 3.4 * len(shown)), squeeze=False)
    for ax, t in zip(axes[:, 0], shown):
        mu_bars_ax(ax, {e["name"]: e["mu"] for e in boards[t.name]}, list(t.datasets), f"track {t.name}: model {t.model}")
    return save_figure(fig, path)


def render_html(store: Path = STORE, chart: bytes | None = None, view: tuple | None = None) -> str:
    import base64
    import html

    esc = lambda s: html.escape(str(s if s is not None else ""), quote=True)  # noqa: E731
    tracks, boards = _view(store, view)
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'><title>stackbench leaderboard</title>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;width:100%}th,td{border:1px solid #ccc;padding:4px 8px;"
             "text-align:left;font-size:14px}th{background:#f3f3f3;cursor:pointer}td.num{text-align:right;"
             "font-variant-numeric:tabular-nums}.reported{background:#fffbea}.tag{font-size:12px;color:#8a6d00}"
             "img{max-width:100%}</style></head><body>",
             "<h1>stackbench leaderboard</h1>",
             "<p>mu &times;100 (mean &plusmn; std over images): the share of a saliency map's L2 norm behind the wall, "
             "where the model provably cannot see. Lower is better. Click a column header to sort.</p>"]
    for t in tracks.values():
        entries = boards[t.name]
        parts.append(f"<h2>Track <code>{esc(t.name)}</code></h2><p>{esc(t.description.rstrip('.'))}. Model "
                     f"<code>{esc(t.model)}</code>.</p>")
        header = ["#", "method", *[f"{d.upper()} mu x100" for d in t.datasets], "leak rate x100", "n", "submitted",
                  "author", "source"]
        parts.append(f"<table class='board' id='track-{esc(t.name)}'><thead><tr>" +
                     "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>")
        for row, e in zip(table_rows(t, entries), entries):
            link = (f"<a href='{esc(e['url'])}' rel='noopener noreferrer nofollow'>link</a>"
                    if e["url"] and re.match(r"^https?://", e["url"], flags=re.I) else "")
            cells = [f"<td class='num'>{esc(row[0])}</td>", f"<td title='{esc(e['description'])}'>{esc(row[1])}</td>"]
            cells += [f"<td class='num' data-v='{esc(v)}'>{esc(v)}</td>" for v in row[2:-3]]
            cells += [f"<td class='num'>{esc(row[-3])}</td>", f"<td>{esc(row[-2])}</td>", f"<td>{esc(e['author'])}</td>",
                      f"<td>{link}</td>"]
            parts.append("<tr class='row'>" + "".join(cells) + "</tr>")
        parts.append("</tbody></table>")
    if chart:
        parts.append(f"<img alt='mu per method' src='data:image/png;base64,{base64.b64encode(chart).decode()}'>")
    for rep in reported(store):
        parts.append(f"<h2>Reported: {esc(rep['title'])} <span class='tag'>reported, not re-run</span></h2>"
                     f"<p>{esc(rep['note'])}</p><table class='reported'><thead><tr><th>method</th>" +
                     "".join(f"<th>{esc(d.upper())} mu x100</th>" for d in rep["datasets"]) + "</tr></thead><tbody>")
        for r in rep["rows"]:
            parts.append(f"<tr class='reported-row'><td>{esc(r['method'])}</td>" + "".join(
                f"<td class='num'>{r[d][0]:.1f} &plusmn; {r[d][1]:.1f}</td>" for d in rep["datasets"]) + "</tr>")
        parts.append("</tbody></table>")
    parts.append("""<script>
for (const table of document.querySelectorAll('table')) {
  table.querySelectorAll('th').forEach((th, col) => th.addEventListener('click', () => {
    const body = table.tBodies[0], rows = Array.from(body.rows);
    const key = r => { const t = r.cells[col].textContent.trim(); const v = parseFloat(t); return isNaN(v) ? t : v; };
    const dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
    rows.sort((a, b) => { const x = key(a), y = key(b); return (x > y ? 1 : x < y ? -1 : 0) * dir; });
    rows.forEach(r => body.appendChild(r));
  }));
}
</script></body></html>
""")
    return "\n".join(parts)


def build(store: Path = STORE) -> list[Path]:
    """Render README.md, mu.png and index.html (deterministic: the same store gives the same bytes)."""
    store = Path(store)
    view = (load_tracks(store), board(store))  # one reading of the store: the three files show the same rows
    chart = render_chart(store / "mu.png", store, view)
    atomic_write_bytes(store / "README.md", render_markdown(store, view).encode())
    atomic_write_bytes(store / "index.html", render_html(store, chart.read_bytes(), view).encode())
    return [store / "README.md", store / "index.html", store / "mu.png"]
