"""The Table-1 report of one evaluation over STACK-MIX and STACK-GEN: Markdown tables, findings stated from the
measured numbers, the mu bar chart, the overlay grids and one self-contained HTML page tying them together.
Used by `stackbench demo` and `stackbench reproduce`.

The tables are data (header, rows) written to Markdown and to HTML by the presentation layer
(`stackbench.present`); metric labels and formats come from `stackbench.metrics.METRICS`, numbers about the wall
from the records' `Wall`."""
from __future__ import annotations

from pathlib import Path

from .datafolder import atomic_write_bytes, atomic_write_json
from .methods import CONTROLS, PAPER_METHODS
from .metrics import METRICS, images_phrase, uniform_mu
from .present import html as H
from .present.tables import markdown_table
from .records import axes_measured, band_first, portable, read_record, sampled_mu, schema_number
from .records import axes_sample as records_sample
from .standings import AXES_SHOWN, standings
from .wall import Wall

CONTROL = "RandomCAM"
MU, HIDDEN, DELETION, RAND = (METRICS[k] for k in ("mu", "mu_hidden", "deletion_auc", "rand_corr"))
SRG, SSIM = METRICS["srg"], METRICS["rand_ssim"]
FLAGS = (("orientation-dependent", "orientation_dependent"), ("model-insensitive", "model_insensitive"))


def _rows(results_dir: Path, record: dict) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(results_dir / record["rows"]["file"]).to_pylist()


def collect(results: dict[str, Path], methods) -> dict[str, dict[str, dict]]:
    """{method: {dataset: {"record": ..., "rows": [...]}}} from evaluate's output folders."""
    from .evaluate import file_stem

    out: dict[str, dict[str, dict]] = {}
    for ds, folder in results.items():
        for m in methods:
            path = Path(folder) / f"{file_stem(m)}.json"
            if path.is_file():
                rec = read_record(path)
                out.setdefault(m, {})[ds] = {"record": rec, "rows": _rows(Path(folder), rec)}
    return out


def axes_data(found: dict, datasets) -> tuple[list[str], list[str], list[list[str]]]:
    """(notes, header, rows) of the board's axes per method (mean over the sets): mu behind a hidden wall, SRG,
    deletion AUC, randomisation by rank and by SSIM; methods whose records predate the axes are left out."""
    if not any(_with_axes(per) for per in found.values()):
        return (["The board's axes were not measured (evaluate --axes none: the paper's protocol, mu alone)."],
                [], [])
    k = axes_sample(found)
    notes = ([f"The board's axes on a seeded sample of {images_phrase(k)} per set (mu is on the same images); a "
              "board row measures them on every image."] if k else [])
    notes.append("Numbers are means over the sets; a flag raised on one set only names it.")
    header = ["method", MU.label, HIDDEN.label, SRG.label, DELETION.label, RAND.label, SSIM.label, "flags"]
    rows = []
    for m, per in found.items():
        if not _with_axes(per):
            continue
        flags = [w + _which(found, m, k) for w, k in FLAGS if _flagged(found, m, k)]
        rows.append([f"{m}{' (control)' if m in CONTROLS else ''}", MU.show(_mean(found, m, "mu_axes", datasets)),
                     *(x.show(_mean(found, m, x.name, datasets)) for x in (HIDDEN, SRG, DELETION, RAND, SSIM)),
                     ", ".join(flags) or "-"])
    return notes, header, rows


def _with_axes(per: dict) -> bool:
    """Whether every set's record of a method measured the board's axes (not /1, not --axes none)."""
    return all("flags" in p["record"] and axes_measured(p["record"]) for p in per.values())


def axes_table(found: dict, datasets) -> str:
    """`axes_data` in Markdown: its notes, then the table."""
    return _axes_markdown(*axes_data(found, datasets))


def _axes_markdown(notes: list[str], header: list[str], rows: list[list[str]]) -> str:
    return "\n\n".join([*notes, markdown_table(header, rows)] if header else notes)


def table_data(found: dict, datasets, reported: dict | None = None) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of Table 1 of the paper, measured here (mu x100, mean ± std), beside the paper's numbers when
    given ({method: {dataset: [mean, std]}})."""
    header = ["method", *[f"{d.upper()} {MU.label}" for d in datasets]]
    if reported:
        header += [f"paper {d.upper()}" for d in datasets]
    rows = []
    for m, per in found.items():
        cells = [m, *[MU.cell(per[d]["record"]["metrics"]["mu"] if d in per else None) for d in datasets]]
        if reported:
            rep = reported.get(m)
            cells += [MU.shown_cell(*rep[d]) if rep else "-" for d in datasets]
        rows.append(cells)
    return header, rows


def table(found: dict, datasets, reported: dict | None = None) -> str:
    """`table_data` in Markdown."""
    return markdown_table(*table_data(found, datasets, reported))


def _first_record(found: dict) -> dict | None:
    """Any one record of the report (they share the model, its wall and the band), None when there is none."""
    return next((p["record"] for per in found.values() for p in per.values()), None)


def wall_of(found: dict) -> Wall:
    """The wall of the measured model, the paper's when there is no record."""
    rec = _first_record(found)
    return Wall.from_dict(rec["model"]["wall"]) if rec else Wall()


def band_of(found: dict) -> int:
    """The first row of the band mu is scored on: the records' `band` (the dataset's), else the wall's first dead
    row (records before the ViTs, where the two are the same)."""
    rec = _first_record(found)
    return band_first(rec) if rec else Wall().dead_from


def model_of(found: dict) -> dict:
    """The record's model part, {} when there is no record."""
    rec = _first_record(found)
    return rec["model"] if rec else {}


def findings(found: dict, datasets) -> list[str]:
    """The paper's qualitative claims (for a ViT: which methods see the dead tokens), checked against the measured
    numbers (honest when one fails)."""
    if model_of(found).get("arch") == "vit":
        out = _vit_findings(found, datasets, model_of(found).get("wall_kind"))
    else:
        others = [m for m in PAPER_METHODS if m != "HiResCAM" and m in found]
        out = _blind_finding(found, datasets) + _others_findings(found, datasets, others)
    if CONTROL in found:
        out.append(_control_finding(found, datasets))
    return out + axes_findings(found, datasets)


def _blind_finding(found: dict, datasets) -> list[str]:
    """HiResCAM's mu is exactly 0 on every scored image (the paper's one blind method), or where it is not."""
    hi = found.get("HiResCAM", {})
    if not hi:
        return []
    per = []
    for d in datasets:
        rows = hi.get(d, {}).get("rows", [])
        scored = [r["mu"] for r in rows if r["mu"] is not None]
        per.append((d, len(scored), sum(1 for v in scored if v == 0.0), len(rows) - len(scored)))
    if all(n and zeros == n for _, n, zeros, _ in per):
        return ["HiResCAM: mu = 0 exactly on every scored image of both sets (" +
                ", ".join(f"{d}: {n} images" + (f", {e} all-zero maps" if e else "") for d, n, _, e in per) +
                "), as the paper reports: it is blind to the dead zone."]
    return ["NOT reproduced: HiResCAM has mu > 0 on some images (" +
            ", ".join(f"{d}: {n - z} of {n}" for d, n, z, _ in per) + ")."]


def _scored_mu(found: dict, m: str, datasets) -> list[float]:
    return [r["mu"] for d in datasets for r in found[m].get(d, {}).get("rows", []) if r["mu"] is not None]


def _vit_findings(found: dict, datasets, kind: str | None) -> list[str]:
    """Which methods put nothing on the ViT's dead tokens (mu = 0 on every image) and which put saliency there."""
    methods = [m for m in found if m not in CONTROLS]
    blind = [m for m in methods if (mus := _scored_mu(found, m, datasets)) and all(v == 0 for v in mus)]
    seeing = sorted((m for m in methods if m not in blind), key=lambda m: -_mean_mu(found, m, datasets))
    wall = f"the {kind} wall" if kind else "the wall"
    out = []
    if blind:
        out.append(f"Under {wall}, {', '.join(blind)} {'has' if len(blind) == 1 else 'have'} mu = 0 exactly on every "
                   "scored image of both sets: nothing on a token the ViT cannot see.")
    if seeing:
        out.append(f"Under {wall}, these put saliency where the ViT cannot see (mean {MU.label} over the sets): "
                   + ", ".join(f"{m} {MU.show(_mean_mu(found, m, datasets))}" for m in seeing) + ".")
    reading = [m for m in blind if next(iter(found[m].values()))["record"]["method"].get("family", "").startswith(
        "attention")]
    if kind == "attention" and reading:
        out.append(f"{', '.join(reading)} read the attention itself, in which a dead token has probability 0 for "
                   "every query in every block: they pass the attention wall by construction, which says nothing of "
                   "a wall the attention does not carry (the pixel wall: dead positions are still attended).")
    return out


def _others_findings(found: dict, datasets, others: list[str]) -> list[str]:
    """The paper's other methods put saliency behind the wall; which leaks most."""
    if not others:
        return []
    positive = [m for m in others if all(d in found[m] and (found[m][d]["record"]["metrics"]["mu"]["mean"] or 0) > 0
                                         for d in datasets)]
    if positive == others:
        out = [f"Every other method of the paper ({', '.join(others)}) has mean mu > 0 on both sets: it puts "
               "saliency where the model cannot see."]
    else:
        missing = [m for m in others if m not in positive]
        out = [f"NOT reproduced for {', '.join(missing)}: mean mu is 0 on at least one set; the others "
               f"({', '.join(positive) or 'none'}) have mean mu > 0."]
    worst = max(others, key=lambda m: _mean_mu(found, m, datasets))
    return out + [f"{worst} leaks most: mean {MU.label} = {MU.show(_mean_mu(found, worst, datasets))} over the two "
                  "sets (the paper found EigenCAM)."]


def _mean_mu(found: dict, m: str, datasets) -> float:
    v = _mean(found, m, "mu", datasets)
    return -1 if v is None else v


def _control_finding(found: dict, datasets) -> str:
    """The random control against the uniform map: what no information scores behind this wall."""
    wall, band = wall_of(found), band_of(found)
    rows = wall.input_size[0]
    uniform = uniform_mu(band, rows)
    what = "dead rows" if band == wall.dead_from else "rows of the band"
    c = _mean_mu(found, CONTROL, datasets)
    return (f"Control: {CONTROL} (random channel weights) gives {MU.label} = {MU.show(c)}, against "
            f"{MU.show(uniform)} for a uniform map (no information: mu is a ratio of L2 norms, sqrt of the "
            f"{rows - band} {what} over {rows}); mu = {c:.2f} means {100 * c * c:.0f}% of the map's energy "
            "(mu squared) behind the wall.")


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
    v2 = {m: per for m, per in found.items() if _with_axes(per)}
    if not v2:
        return []
    methods = [m for m in v2 if m not in CONTROLS]
    moving = [m for m in methods if _flagged(v2, m, "orientation_dependent")]
    fixed = [m for m in methods if m not in moving]
    shifts = [f"{m} ({MU.show(_mean(v2, m, 'mu_axes', datasets))} -> "
              f"{HIDDEN.show(_mean(v2, m, HIDDEN.name, datasets))})" for m in moving]
    k = axes_sample(v2)
    out = [(f"The board's axes below are measured on a seeded sample of {images_phrase(k)} per set (the board: every "
            "image). " if k else "")
           + f"Hidden walls (the model re-oriented by its weights so the wall sits at the top, left or right, unknown "
           f"to the method): {', '.join(fixed) or 'none'} give the same mu behind the moved wall as behind the bottom "
           "one" + (f"; {', '.join(shifts)} {'does' if len(moving) == 1 else 'do'} not (orientation-dependent)."
                    if moving else ".")]
    auc = sorted((m for m in methods if _mean(v2, m, DELETION.name, datasets) is not None),
                 key=lambda m: _mean(v2, m, DELETION.name, datasets))
    srg = sorted((m for m in v2 if _mean(v2, m, SRG.name, datasets) is not None),
                 key=lambda m: -_mean(v2, m, SRG.name, datasets))
    if srg:
        out.append("Faithfulness with ROAD's fill (SRG = LeRF AUC - MoRF AUC, higher is better, about 0 for a map "
                   "with no information; the board ranks only rows above the uniform map's): "
                   + ", ".join(f"{m} {SRG.show(_mean(v2, m, SRG.name, datasets))}" for m in srg) + ".")
    if auc:
        out.append("Deletion in the seen part (AUC of the target probability, lower finds more of what the model "
                   "uses): " + ", ".join(f"{m} {DELETION.show(_mean(v2, m, DELETION.name, datasets))}" for m in auc)
                   + ".")
    insensitive = [m for m in v2 if _flagged(v2, m, "model_insensitive")]
    out.append("Randomisation check (same map on a re-initialised model): "
               + (f"{', '.join(insensitive)} flagged model-insensitive" if insensitive else "no method flagged")
               + "; " + ", ".join(f"{m} {RAND.show(_mean(v2, m, RAND.name, datasets), '.2f')}" for m in v2)
               + " (Spearman); SSIM " + ", ".join(f"{m} {SSIM.show(_mean(v2, m, SSIM.name, datasets), '.2f')}"
                                                  for m in v2) + ".")
    return out + _controls_findings(v2, datasets, k)


def _controls_findings(v2: dict, datasets, k: int | None) -> list[str]:
    """Each control's numbers on the axes and which axes catch it (by the board's own rule)."""
    caught = _caught_by(v2, datasets)
    out = []
    for c in (c for c in CONTROLS if c in v2):
        by = [AXES_SHOWN[a] for a in caught.get(c, [])]
        out.append(f"Control {c}: {MU.label} {MU.show(_mean(v2, c, 'mu_axes', datasets))}"
                   f"{' on the sampled images' if k else ''}, behind a hidden wall "
                   f"{HIDDEN.show(_mean(v2, c, HIDDEN.name, datasets))}, deletion AUC "
                   f"{DELETION.show(_mean(v2, c, DELETION.name, datasets))}"
                   + (f"; caught by {', '.join(by)}." if by else "; caught by no axis."))
    return out


def _caught_by(found: dict, datasets) -> dict[str, list[str]]:
    """Which axes catch each control, by the board's own rule (`standings`): its flags, the qualification, and each
    metric on which it is worse than the median ranked method."""
    entries = [{"name": m, "family": next(iter(per.values()))["record"]["method"].get("family"),
                "schema": min(schema_number(p["record"]["schema"]) for p in per.values()),
                "metrics": {d: p["record"]["metrics"] for d, p in per.items()},
                "flags": {d: p["record"]["flags"] for d, p in per.items()},
                "maps": {d: p["record"].get("maps", {}).get("digest") for d, p in per.items()}}
               for m, per in found.items()]
    return {s.name: s.caught_by for s in standings(entries, datasets) if s.section == "control"}


def write(out: Path, found: dict, datasets, results: dict[str, Path], title: str, context: dict,
          reported: dict | None = None) -> dict[str, Path]:
    """table.md (Table 1), axes.md (the board's axes), mu.png, overlays-<dataset>.png, report.html and report.json
    in `out`."""
    from .figures import mu_bars

    out = Path(out)
    paths = {"table": out / "table.md", "axes": out / "axes.md", "chart": out / "mu.png", "html": out / "report.html",
             "json": out / "report.json"}
    table1 = table_data(found, datasets, reported)
    axes = axes_data(found, datasets)
    facts = findings(found, datasets)
    mu = {m: {d: per[d]["record"]["metrics"]["mu"] for d in per} for m, per in found.items()}
    atomic_write_bytes(paths["table"], (markdown_table(*table1) + "\n").encode())
    atomic_write_bytes(paths["axes"], (_axes_markdown(*axes) + "\n").encode())
    mu_bars(mu, paths["chart"], datasets)
    for d in datasets:
        grid = Path(results[d]) / "overlays.png"
        if grid.is_file():
            paths[f"overlays-{d}"] = out / f"overlays-{d}.png"
            atomic_write_bytes(paths[f"overlays-{d}"], grid.read_bytes())
    summary = {"title": title, "context": context, "findings": facts, "mu": mu,
               "records": {m: {d: portable(str(_record_path(results[d], per[d]["record"])), out) for d in per}
                           for m, per in found.items()}}
    atomic_write_json(paths["json"], summary)
    page = _html(title, context, table1, axes, facts, paths, datasets, wall_of(found), band_of(found))
    atomic_write_bytes(paths["html"], page.encode())
    return paths


def _record_path(results_dir: Path, record: dict) -> Path:
    """The record's JSON file: its rows file's name, .json."""
    return (Path(results_dir) / record["rows"]["file"]).with_suffix(".json")


def _img(path: Path) -> H.Markup:
    return H.image(path.read_bytes(), path.name)


def _html(title: str, context: dict, table1: tuple, axes: tuple, facts: list[str], paths: dict, datasets,
          wall: Wall, band: int) -> str:
    """The report's page, from the same tables as its Markdown files."""
    notes, axes_header, axes_rows = axes
    rows = wall.input_size[0]
    inside = "" if band == wall.dead_from else (
        f"; mu is scored on the datasets' band, rows {band}..{rows - 1}, which lies inside it")
    what = (f"mu = ||map[dead rows]||<sub>2</sub> / ||map||<sub>2</sub>: the share of a saliency map that falls "
            f"behind the wall (the {H.esc(wall.side)} {wall.dead_height} px, {100 * wall.share:.1f}% of the image, "
            f"that provably cannot change any logit{inside}). {H.esc(MU.better.capitalize())}.")
    body = [H.paragraph(H.Markup(what)), H.heading(2, "Findings"), H.bullets(facts),
            H.heading(2, f"{MU.label} (mean ± std over images)"), H.table(*table1), _img(paths["chart"]),
            H.heading(2, "The board's axes (mean over the sets)"), *map(H.paragraph, notes),
            *([H.table(axes_header, axes_rows)] if axes_header else [])]
    for d in datasets:
        if f"overlays-{d}" in paths:
            body += [H.heading(3, f"{d.upper()}: saliency maps, the wall hatched"), _img(paths[f"overlays-{d}"])]
    return H.page(title, body + [H.heading(2, "Setting"), H.definitions(context)])
