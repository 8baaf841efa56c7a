"""The Table-1 report of one evaluation over STACK-MIX and STACK-GEN: Markdown table, findings stated from the
measured numbers, the mu bar chart, the overlay grids and one self-contained HTML page tying them together.
Used by `stackbench demo` and `stackbench reproduce`."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from .datafolder import atomic_write_bytes, atomic_write_json
from .methods import CONTROLS, PAPER_METHODS
from .metrics import images_phrase, mu_cell, uniform_mu
from .records import axes_sample as records_sample, portable, sampled_mu
from .standings import AXES_SHOWN, standings

CONTROL = "RandomCAM"
DATASETS = ("stack-mix", "stack-gen")


def _rows(results_dir: Path, record: dict) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(results_dir / record["rows"]["file"]).to_pylist()


def collect(results: dict[str, Path], methods) -> dict[str, dict[str, dict]]:
    """{method: {dataset: {"record": ..., "rows": [...]}}} from evaluate's output folders."""
    from .evaluate import file_stem
    from .records import read_record

    out: dict[str, dict[str, dict]] = {}
    for ds, folder in results.items():
        for m in methods:
            path = Path(folder) / f"{file_stem(m)}.json"
            if path.is_file():
                rec = read_record(path)
                out.setdefault(m, {})[ds] = {"record": rec, "rows": _rows(Path(folder), rec)}
    return out


def axes_table(found: dict, datasets) -> str:
    """The board's axes per method (mean over the sets): mu behind a hidden wall, deletion AUC, randomisation."""
    k = axes_sample(found)
    lines = ([f"The board's axes on a seeded sample of {images_phrase(k)} per set (mu is on the same images); a "
              "board row measures them on every image.", ""] if k else [])
    lines += ["Numbers are means over the sets; a flag raised on one set only names it.", "",
              "| method | mu x100 | mu hidden x100 | deletion AUC | rand. corr | flags |", "|---|---|---|---|---|---|"]
    for m, per in found.items():
        if not all("flags" in p["record"] for p in per.values()):
            continue
        f = lambda k, x100=True: "-" if _mean(found, m, k, datasets) is None else (  # noqa: E731
            f"{100 * _mean(found, m, k, datasets):.1f}" if x100 else f"{_mean(found, m, k, datasets):.3f}")
        named = (("orientation-dependent", "orientation_dependent"), ("model-insensitive", "model_insensitive"))
        flags = [w + _which(found, m, k) for w, k in named if _flagged(found, m, k)]
        lines.append(f"| {m}{' (control)' if m in CONTROLS else ''} | {f('mu_axes')} | {f('mu_hidden')} | "
                     f"{f('deletion_auc', False)} | {f('rand_corr', False)} | {', '.join(flags) or '-'} |")
    return "\n".join(lines)


def table(found: dict, datasets, reported: dict | None = None) -> str:
    """Table 1 of the paper, measured here (mu x100, mean ± std), beside the paper's numbers when given."""
    head = ["method", *[f"{d.upper()} mu x100" for d in datasets]]
    if reported:
        head += [f"paper {d.upper()}" for d in datasets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, per in found.items():
        cells = [m, *[mu_cell(per[d]["record"]["metrics"]["mu"] if d in per else None) for d in datasets]]
        if reported:
            rep = reported.get(m)
            cells += [f"{rep[d][0]:.1f} ± {rep[d][1]:.1f}" if rep else "-" for d in datasets]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def findings(found: dict, datasets) -> list[str]:
    """The paper's qualitative claims, checked against the measured numbers (honest when one fails)."""
    out = []
    hi = found.get("HiResCAM", {})
    if hi:
        per = []
        for d in datasets:
            rows = hi.get(d, {}).get("rows", [])
            scored = [r["mu"] for r in rows if r["mu"] is not None]
            per.append((d, len(scored), sum(1 for v in scored if v == 0.0), len(rows) - len(scored)))
        if all(n and zeros == n for _, n, zeros, _ in per):
            out.append("HiResCAM: mu = 0 exactly on every scored image of both sets (" +
                       ", ".join(f"{d}: {n} images" + (f", {e} all-zero maps" if e else "") for d, n, _, e in per) +
                       "), as the paper reports: it is blind to the dead zone.")
        else:
            out.append("NOT reproduced: HiResCAM has mu > 0 on some images (" +
                       ", ".join(f"{d}: {n - z} of {n}" for d, n, z, _ in per) + ").")
    others = [m for m in PAPER_METHODS if m != "HiResCAM" and m in found]
    positive = [m for m in others if all(d in found[m] and (found[m][d]["record"]["metrics"]["mu"]["mean"] or 0) > 0
                                         for d in datasets)]
    if others:
        if positive == others:
            out.append(f"Every other method of the paper ({', '.join(others)}) has mean mu > 0 on both sets: it puts "
                       "saliency where the model cannot see.")
        else:
            missing = [m for m in others if m not in positive]
            out.append(f"NOT reproduced for {', '.join(missing)}: mean mu is 0 on at least one set; the others "
                       f"({', '.join(positive) or 'none'}) have mean mu > 0.")

    def mean_mu(m):
        v = _mean(found, m, "mu", datasets)
        return -1 if v is None else v

    if others:
        worst = max(others, key=mean_mu)
        out.append(f"{worst} leaks most: mean mu x100 = {100 * mean_mu(worst):.1f} over the two sets "
                   "(the paper found EigenCAM).")
    if CONTROL in found:
        wall = next(iter(found[CONTROL].values()))["record"]["model"]["wall"]
        uniform = uniform_mu(wall["dead_from"], wall["input_size"][0])
        c = mean_mu(CONTROL)
        out.append(f"Control: {CONTROL} (random channel weights) gives mu x100 = {100 * c:.1f}, against "
                   f"{100 * uniform:.1f} for a uniform map (no information: mu is a ratio of L2 norms, sqrt of the "
                   f"{wall['input_size'][0] - wall['dead_from']} dead rows over {wall['input_size'][0]}); mu = {c:.2f} "
                   f"means {100 * c * c:.0f}% of the map's energy (mu squared) behind the wall.")
    return out + axes_findings(found, datasets)


def _mean(found, m, metric, datasets):
    """Mean over the sets of a metric's mean; "mu_axes" is mu on the images that got the axes (all of them unless
    the axes ran on a sample), the mu to set beside mu_hidden."""
    per = [found[m][d] for d in datasets if d in found[m]]
    vals = [sampled_mu(p["rows"]) if metric == "mu_axes" else p["record"]["metrics"].get(metric, {}).get("mean")
            for p in per]
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def axes_sample(found: dict) -> int | None:
    """The images per set that got the axes, when they were a sample (the demo's default), else None."""
    return records_sample(p["record"] for per in found.values() for p in per.values())


def _flagged(found, m, flag) -> bool:
    return any(per["record"].get("flags", {}).get(flag) for per in found[m].values())


def _which(found, m, flag) -> str:
    """' (STACK-MIX)' when a flag is raised on some sets only: the table's numbers are means over the sets, so a
    flag from one set can sit beside a mean under its threshold."""
    on = [d for d, per in found[m].items() if per["record"].get("flags", {}).get(flag)]
    return "" if len(on) == len(found[m]) else f" ({', '.join(d.upper() for d in on)})"


def axes_findings(found: dict, datasets) -> list[str]:
    """The board's axes, stated from the measured numbers: hidden walls, deletion, randomisation, the controls."""
    v2 = {m: per for m, per in found.items() if all("flags" in p["record"] for p in per.values())}
    if not v2:
        return []
    methods = [m for m in v2 if m not in CONTROLS]
    moving = [m for m in methods if _flagged(v2, m, "orientation_dependent")]
    fixed = [m for m in methods if m not in moving]
    shifts = [f"{m} ({100 * _mean(v2, m, 'mu_axes', datasets):.1f} -> {100 * _mean(v2, m, 'mu_hidden', datasets):.1f})"
              for m in moving]
    k = axes_sample(v2)
    out = [(f"The board's axes below are measured on a seeded sample of {images_phrase(k)} per set (the board: every "
            "image). " if k else "")
           + f"Hidden walls (the model re-oriented by its weights so the wall sits at the top, left or right, unknown "
           f"to the method): {', '.join(fixed) or 'none'} give the same mu behind the moved wall as behind the bottom "
           "one" + (f"; {', '.join(shifts)} {'does' if len(moving) == 1 else 'do'} not (orientation-dependent)."
                    if moving else ".")]
    auc = sorted((m for m in methods if _mean(v2, m, "deletion_auc", datasets) is not None),
                 key=lambda m: _mean(v2, m, "deletion_auc", datasets))
    if auc:
        out.append("Deletion in the seen part (AUC of the target probability, lower finds more of what the model "
                   "uses): " + ", ".join(f"{m} {_mean(v2, m, 'deletion_auc', datasets):.3f}" for m in auc) + ".")
    insensitive = [m for m in v2 if _flagged(v2, m, "model_insensitive")]
    out.append("Randomisation check (same map on a re-initialised model): "
               + (f"{', '.join(insensitive)} flagged model-insensitive" if insensitive else "no method flagged")
               + "; " + ", ".join(f"{m} {_mean(v2, m, 'rand_corr', datasets):.2f}" for m in v2) + " (Spearman).")
    caught = _caught_by(v2, datasets)
    for c in (c for c in CONTROLS if c in v2):
        by = [AXES_SHOWN[a] for a in caught.get(c, [])]
        out.append(f"Control {c}: mu x100 {100 * _mean(v2, c, 'mu_axes', datasets):.1f}"
                   f"{' on the sampled images' if k else ''}, behind a hidden wall "
                   f"{100 * _mean(v2, c, 'mu_hidden', datasets):.1f}, deletion AUC {_mean(v2, c, 'deletion_auc', datasets):.3f}"
                   + (f"; caught by {', '.join(by)}." if by else "; caught by no axis."))
    return out


def _caught_by(found: dict, datasets) -> dict[str, list[str]]:
    """Which axes catch each control, by the board's own rule (`standings`): its flags, and each metric on which it
    is worse than the median ranked method."""
    entries = [{"name": m, "family": next(iter(per.values()))["record"]["method"].get("family"), "schema": 2,
                "metrics": {d: p["record"]["metrics"] for d, p in per.items()},
                "flags": {d: p["record"]["flags"] for d, p in per.items()},
                "maps": {d: p["record"].get("maps", {}).get("digest") for d, p in per.items()}}
               for m, per in found.items()]
    return {s.name: s.caught_by for s in standings(entries, datasets) if s.section == "control"}


def write(out: Path, found: dict, datasets, results: dict[str, Path], title: str, context: dict,
          reported: dict | None = None) -> dict[str, Path]:
    """table.md (Table 1), axes.md (the board's axes), mu.png, overlays-<dataset>.png, report.html and report.json in `out`."""
    from .figures import mu_bars

    out = Path(out)
    paths = {"table": out / "table.md", "axes": out / "axes.md", "chart": out / "mu.png", "html": out / "report.html",
             "json": out / "report.json"}
    md = table(found, datasets, reported)
    axes_md = axes_table(found, datasets)
    facts = findings(found, datasets)
    mu = {m: {d: per[d]["record"]["metrics"]["mu"] for d in per} for m, per in found.items()}
    atomic_write_bytes(paths["table"], (md + "\n").encode())
    atomic_write_bytes(paths["axes"], (axes_md + "\n").encode())
    mu_bars(mu, paths["chart"], datasets)
    for d in datasets:
        grid = Path(results[d]) / "overlays.png"
        if grid.is_file():
            paths[f"overlays-{d}"] = out / f"overlays-{d}.png"
            atomic_write_bytes(paths[f"overlays-{d}"], grid.read_bytes())
    summary = {"title": title, "context": context, "findings": facts,
               "mu": mu,
               "records": {m: {d: portable(str((Path(results[d]) / per[d]["record"]["rows"]["file"]).with_suffix(".json")),
                                           out) for d in per} for m, per in found.items()}}
    atomic_write_json(paths["json"], summary)
    atomic_write_bytes(paths["html"], _html(title, context, md, facts, paths, datasets, axes_md).encode())
    return paths


def _img(path: Path) -> str:
    return f"<img alt='{html.escape(path.name)}' src='data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}'>"


def _md_table_html(md: str) -> str:
    esc = html.escape
    rows = [line.strip("|").split("|") for line in md.splitlines() if not line.startswith("|---")]
    out = "<table><thead><tr>" + "".join(f"<th>{esc(c.strip())}</th>" for c in rows[0]) + "</tr></thead><tbody>"
    out += "".join("<tr>" + "".join(f"<td>{esc(c.strip())}</td>" for c in r) + "</tr>" for r in rows[1:])
    return out + "</tbody></table>"


def _html(title: str, context: dict, md: str, facts: list[str], paths: dict, datasets, axes_md: str = "") -> str:
    esc = html.escape
    table_html = _md_table_html(md)
    ctx = "".join(f"<li><b>{esc(str(k))}</b>: {esc(str(v))}</li>" for k, v in context.items())
    grids = "".join(f"<h3>{esc(d.upper())}: saliency maps, the wall hatched</h3>{_img(paths[f'overlays-{d}'])}"
                    for d in datasets if f"overlays-{d}" in paths)
    buf = io.StringIO()
    buf.write("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
              f"<title>{esc(title)}</title><style>body{{font-family:system-ui,sans-serif;max-width:1100px;"
              "margin:2em auto;padding:0 1em;color:#222}table{border-collapse:collapse}th,td{border:1px solid #ccc;"
              "padding:4px 10px;font-size:14px}th{background:#f3f3f3}img{max-width:100%}li{margin:.3em 0}</style>"
              f"</head><body><h1>{esc(title)}</h1>")
    buf.write("<p>mu = ||map[dead rows]||<sub>2</sub> / ||map||<sub>2</sub>: the share of a saliency map that falls "
              "behind the wall (the bottom 54 px that provably cannot change any logit). Lower is better.</p>")
    buf.write(f"<h2>Findings</h2><ul>{''.join(f'<li>{esc(f)}</li>' for f in facts)}</ul>")
    buf.write(f"<h2>mu x100 (mean &plusmn; std over images)</h2>{table_html}{_img(paths['chart'])}")
    if axes_md.count("\n") > 1:
        buf.write(f"<h2>The board's axes (mean over the sets)</h2>{_md_table_html(axes_md)}")
    buf.write(f"{grids}<h2>Setting</h2><ul>{ctx}</ul></body></html>\n")
    return buf.getvalue()
