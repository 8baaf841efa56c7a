"""The Table-1 report of one evaluation over STACK-MIX and STACK-GEN: Markdown table, findings stated from the
measured numbers, the mu bar chart, the overlay grids and one self-contained HTML page tying them together.
Used by `stackbench demo` and `stackbench reproduce`."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from .datafolder import atomic_write_bytes, atomic_write_json
from .methods import PAPER_METHODS
from .metrics import mu_cell
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
        vals = [found[m][d]["record"]["metrics"]["mu"]["mean"] for d in datasets if d in found[m]
                and found[m][d]["record"]["metrics"]["mu"]["mean"] is not None]
        return sum(vals) / len(vals) if vals else -1

    if others:
        worst = max(others, key=mean_mu)
        out.append(f"{worst} leaks most: mean mu x100 = {100 * mean_mu(worst):.1f} over the two sets "
                   "(the paper found EigenCAM).")
    if CONTROL in found:
        out.append(f"Control: {CONTROL} (random channel weights) gives mu x100 = {100 * mean_mu(CONTROL):.1f}; the share of "
                   f"the image behind the wall is 24.1% of its area.")
    return out


def write(out: Path, found: dict, datasets, results: dict[str, Path], title: str, context: dict,
          reported: dict | None = None) -> dict[str, Path]:
    """table.md, mu.png, overlays-<dataset>.png, report.html and report.json in `out`."""
    from .figures import mu_bars

    out = Path(out)
    paths = {"table": out / "table.md", "chart": out / "mu.png", "html": out / "report.html",
             "json": out / "report.json"}
    md = table(found, datasets, reported)
    facts = findings(found, datasets)
    mu = {m: {d: per[d]["record"]["metrics"]["mu"] for d in per} for m, per in found.items()}
    atomic_write_bytes(paths["table"], (md + "\n").encode())
    mu_bars(mu, paths["chart"], datasets)
    for d in datasets:
        grid = Path(results[d]) / "overlays.png"
        if grid.is_file():
            paths[f"overlays-{d}"] = out / f"overlays-{d}.png"
            atomic_write_bytes(paths[f"overlays-{d}"], grid.read_bytes())
    summary = {"title": title, "context": context, "findings": facts,
               "mu": mu,
               "records": {m: {d: str((Path(results[d]) / per[d]["record"]["rows"]["file"]).with_suffix(".json"))
                               for d in per} for m, per in found.items()}}
    atomic_write_json(paths["json"], summary)
    atomic_write_bytes(paths["html"], _html(title, context, md, facts, paths, datasets).encode())
    return paths


def _img(path: Path) -> str:
    return f"<img alt='{html.escape(path.name)}' src='data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}'>"


def _html(title: str, context: dict, md: str, facts: list[str], paths: dict, datasets) -> str:
    esc = html.escape
    rows = [line.strip("|").split("|") for line in md.splitlines() if not line.startswith("|---")]
    table_html = "<table><thead><tr>" + "".join(f"<th>{esc(c.strip())}</th>" for c in rows[0]) + "</tr></thead><tbody>"
    table_html += "".join("<tr>" + "".join(f"<td>{esc(c.strip())}</td>" for c in r) + "</tr>" for r in rows[1:])
    table_html += "</tbody></table>"
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
    buf.write(f"{grids}<h2>Setting</h2><ul>{ctx}</ul></body></html>\n")
    return buf.getvalue()
