"""The board as people read it: README.md, index.html and the charts, from the stored rows."""
from __future__ import annotations

import json
from pathlib import Path

from ..datafolder import atomic_write_bytes
from ..errors import Refused, StackbenchError, first_line
from ..metrics import METRICS as METRIC_INFO
from ..metrics import uniform_mu
from ..present import html as H
from ..present.tables import markdown_table, md_link, md_text
from ..records import band_first, schema_number
from ..wall import Wall
from .badges import read_verified, reproduced
from .checks import check_stored_row
from .store import RENDERED, resolve_store, stored_rows
from .tracks import Track, load_tracks

# ------------------------------------------------------------------------------------------------ render

def board(store: Path | None = None) -> dict:
    """{track: [entry...]} with entry = {name, method, family, schema, metrics: {dataset: aggregates}, flags and
    maps (digest) per dataset, mu, leak, n, submitted, url, author, description, reproduced: {dataset: date or
    None}} and its place (`stackbench.standings`: rank, section, notes, same_as, caught_by), in board order.
    Every record must pass the checks of `verify --no-rerun` first: otherwise Refused, with one line per bad
    record (a board never shows a number its rows do not give)."""
    from ..standings import standings

    store = resolve_store(store)
    tracks = load_tracks(store)
    entries_of, problems = {}, []
    verified = read_verified(store)
    for path in stored_rows(store):
        try:
            rec, t = check_stored_row(store, path, tracks)
        except StackbenchError as e:
            problems.append(str(e))
            continue
        _add_entry(entries_of.setdefault(t.name, {}), path, rec, reproduced(store, path, verified,
                                                                         rec["submission"].get("submitted")))
    if problems:
        raise Refused([f"{p} (the board shows only records that pass `stackbench leaderboard verify --no-rerun`)"
                       for p in problems])
    out = {}
    for t in tracks.values():
        placed = standings(list(entries_of.get(t.name, {}).values()), list(t.datasets))
        for s in placed:
            s.entry.update(rank=s.rank, section=s.section, notes=s.notes, same_as=s.same_as, caught_by=s.caught_by)
        out[t.name] = [s.entry for s in placed]
    return out


def _add_entry(entries: dict, path: Path, rec: dict, reproduced_on: str | None) -> None:
    sub = rec["submission"]
    e = entries.setdefault(path.stem, {
        "name": sub["name"], "method": rec["method"]["name"], "family": rec["method"].get("family"), "schema": 3,
        "wall": rec["model"]["wall"], "metrics": {}, "flags": {}, "maps": {}, "mu": {}, "leak": {}, "n": {},
        "reproduced": {}, "submitted": sub.get("submitted"), "url": sub.get("url"), "author": sub.get("author"),
        "description": sub.get("description")})
    e["schema"] = min(e["schema"], schema_number(rec["schema"]))  # a row is /3 when every dataset's record is
    ds = rec["dataset"].get("name", path.parent.parent.name)
    e["metrics"][ds] = rec["metrics"]
    e["flags"][ds] = rec.get("flags", {})
    e["maps"][ds] = rec.get("maps", {}).get("digest")
    e["mu"][ds] = rec["metrics"]["mu"]
    e["leak"][ds] = rec["metrics"]["leak_rate"]["mean"]
    e["n"][ds] = rec["items"]["n"]
    e["band_from"] = band_first(rec)  # where mu is scored
    e["reproduced"][ds] = reproduced_on


def read_reported(path: Path) -> dict:
    """One file of numbers published elsewhere, not re-run ({title, note, source, datasets, rows}): the one reader
    of `reported/*.json` (the board's and the demo's report)."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise Refused([f"reported/{Path(path).name}: not valid JSON ({first_line(e, 80)})"]) from None


def reported(store: Path | None = None) -> list[dict]:
    """Every `reported/*.json` of the store, by file name."""
    return [read_reported(path) for path in sorted((resolve_store(store) / "reported").glob("*.json"))]


def reported_table(rep: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a reported file: mu x100 as "mean ± std" per dataset (the numbers as published)."""
    header = ["method", *[f"{d.upper()} {MU.label}" for d in rep["datasets"]]]
    return header, [[r["method"], *[MU.shown_cell(*r[d]) for d in rep["datasets"]]] for r in rep["rows"]]


def verified_cell(track: Track, e: dict) -> str:
    """'reproduced DATE' when the last verify of the store re-ran every dataset's row unchanged since, else
    'not re-run'."""
    dates = [e["reproduced"].get(d) for d in track.datasets if d in e["mu"]]
    return f"reproduced {max(dates)}" if dates and all(dates) else "not re-run"


SECTIONS = {"ranked": "Ranked", "uninformative": "Uninformative (not an explanation of this model; not ranked)",
            "unranked": "Listed, not ranked", "control": "Controls (never ranked)"}


MU, HIDDEN, DELETION, RAND = (METRIC_INFO[k] for k in ("mu", "mu_hidden", "deletion_auc", "rand_corr"))
SRG, SSIM = METRIC_INFO["srg"], METRIC_INFO["rand_ssim"]


def table_header(track: Track) -> list[str]:
    """The columns of every rendering of a track's table (Markdown, HTML, terminal)."""
    return ["#", "method", HIDDEN.label, SRG.label, DELETION.label,
            *[f"{d.upper()} {MU.label}" for d in track.datasets], RAND.label, SSIM.label, "n (empty)", "notes",
            "verified", "submitted", "source"]


def table_rows(track: Track, entries: list[dict]) -> list[list[str]]:
    """One row per entry, in `table_header`'s columns (the source column holds the URL or "")."""
    from ..standings import mean_over

    ds = list(track.datasets)
    rows = []
    for e in entries:
        auc, rc, srg, ssim = (mean_over(e, m.name, ds) for m in (DELETION, RAND, SRG, SSIM))
        n = "/".join(str(e["n"].get(d, "-")) for d in ds)
        empty = sum(int((e["metrics"].get(d) or {}).get("mu", {}).get("n_empty") or 0) for d in ds)
        notes = list(e.get("notes") or [])
        if e.get("same_as"):
            notes.append(f"same maps as {e['same_as']}")
        if e.get("section") == "control":
            notes = [f"caught by: {', '.join(e['caught_by']) or 'nothing'}"] + [x for x in notes if "same maps" in x]
        rows.append([str(e["rank"]) if e.get("rank") else "-", e["name"], HIDDEN.show(mean_over(e, HIDDEN.name, ds)),
                     SRG.show(srg), DELETION.show(auc), *[MU.cell(e["mu"].get(d)) for d in ds],
                     RAND.show(rc, ".2f"), SSIM.show(ssim, ".2f"), n + (f" ({empty} empty)" if empty else ""),
                     "; ".join(notes), verified_cell(track, e), e["submitted"] or "-", e["url"] or ""])
    return rows


def side_by_side(tracks: dict, boards: dict) -> tuple[list[str], list[list[str]]] | None:
    """The methods of every track that has rows, one row each: mu behind a hidden wall and mu (mean over the track's
    datasets) per track, so one method reads across architectures. None with fewer than two such tracks."""
    from ..standings import mean_over

    shown = [t for t in tracks.values() if boards[t.name]]
    if len(shown) < 2:
        return None
    by = {t.name: {e["name"]: e for e in boards[t.name]} for t in shown}
    names = list(dict.fromkeys(e["name"] for t in shown for e in boards[t.name]))
    header = ["method"] + [f"{t.name}: {label}" for t in shown for label in (HIDDEN.label, MU.label)]
    rows = []
    for name in names:
        cells = [name]
        for t in shown:
            e = by[t.name].get(name)
            cells += [HIDDEN.show(mean_over(e, HIDDEN.name, t.datasets)) if e else "-",
                      MU.show(mean_over(e, MU.name, t.datasets)) if e else "-"]
        rows.append(cells)
    return header, rows


def sections(entries: list[dict]) -> list[tuple[str, list[dict]]]:
    """[(title, entries)] for the sections that have rows, in board order."""
    return [(title, [e for e in entries if e.get("section") == key]) for key, title in SECTIONS.items()
            if any(e.get("section") == key for e in entries)]


def _view(store: Path | None, view: tuple | None) -> tuple[dict, dict]:
    """(tracks, boards): the given snapshot, or read from the store."""
    return view if view is not None else (load_tracks(store), board(store))


SIDE_BY_SIDE = ("Each method on every track that has rows: mu behind a hidden wall and mu, each the mean over the "
                "track's datasets (x100, lower is better). The same datasets and band (rows 170..223) on every track; "
                "the models differ (a VGG's dead zone is the band itself, a ViT's is whole patch rows from row 160).")


def board_intro(wall: Wall | None = None) -> str:
    """The board's first paragraph: how it ranks and what its numbers mean (the uniform map's mu behind `wall`,
    the paper's by default)."""
    wall = wall or Wall()
    rows = wall.input_size[0]
    return (f"A row is ranked only if it explains the model at all: its **{SRG.title}** (SRG, LeRF AUC minus "
            "MoRF AUC with ROAD's noisy linear imputation as the fill, higher is better) lies above the uniform map's "
            "(the ConstantSeen control's) by more than both 95% intervals on every dataset, and the randomisation "
            "check does not flag it; otherwise it is listed as *uninformative*, with the axis that says so (a ranked "
            "row whose SRG is not above RandomCAM's says that in its notes). "
            f"The qualified rows are ranked by **{HIDDEN.title}** ({HIDDEN.scaled}, {HIDDEN.better}: the share "
            "of a map's L2 norm behind the wall when the model and image are re-oriented and re-parametrised so that "
            "the wall sits on another side, unknown to the method), compared by its 95% interval: rows whose "
            "intervals overlap share a rank, ordered within by SRG. "
            f"*{DELETION.label}*: the older deletion curve (constant fill, {DELETION.better}). *{MU.name}* is the "
            "paper's eq. 1 with the wall at the bottom; a uniform map scores "
            f"{MU.show(uniform_mu(wall.dead_from, rows))} (sqrt({wall.dead_height}/{rows})), and an empty map is "
            f"scored as the uniform map. *{RAND.label}* and *{SSIM.label}*: Spearman correlation and SSIM of the map "
            "with the map on a re-initialised model over the cells the head reads (either at 0.8 or above flags the "
            "row). Rows flagged orientation-dependent, and records of an older schema, are listed but not ranked; "
            "controls are never ranked and say which axis catches them. Every row is a `stackbench.result/3` record "
            "under `results/` with its per-image rows; `stackbench leaderboard verify` re-runs it. *verified*: the "
            "rows that the board's last full verify reproduced, unchanged since; any other row is *not re-run*.")


def render_markdown(store: Path | None = None, view: tuple | None = None) -> str:
    tracks, boards = _view(store, view)
    lines = ["# stackbench leaderboard", "", board_intro(), ""]
    for t in tracks.values():
        lines += _track_markdown(t, boards[t.name])
    both = side_by_side(tracks, boards)
    if both:
        lines += ["## The tracks side by side", "", SIDE_BY_SIDE, "", markdown_table(both[0], [[md_text(r[0]), *r[1:]]
                                                                                          for r in both[1]]), ""]
    for rep in reported(store):
        header, rows = reported_table(rep)
        lines += [f"## Reported: {md_text(rep['title'])}", "",
                  f"*Reported, not re-run here.* {md_text(rep.get('note'))}", "",
                  markdown_table(header, [[md_text(r[0]), *r[1:]] for r in rows]), ""]
    lines += ["![mu behind a hidden wall against deletion AUC](axes.png)", "", "![mu per method](mu.png)", ""]
    return "\n".join(lines)


def _track_markdown(t: Track, entries: list[dict]) -> list[str]:
    """A track's part of the README: what it is, then one table per section (untrusted text escaped)."""
    weights = f" (weights fingerprint `{t.model_fingerprint[:12]}`)" if t.model_fingerprint else ""
    lines = [f"## Track `{t.name}`", "", md_text(t.description), "",
             f"Model `{t.model}`{weights}; target: {t.target}; post-processing: {t.postprocess}.", ""]
    for title, part in sections(entries):
        rows = table_rows(t, part)
        for row, e in zip(rows, part, strict=True):
            row[1], row[-4] = md_text(row[1]), md_text(row[-4])
            row[-1] = md_link("link", e["url"]) if e["url"] else "-"
        lines += [f"### {title}", "", markdown_table(table_header(t), rows), ""]
    if not entries:
        lines += ["(no submissions yet)", ""]
    return lines


def render_axes_chart(path: Path, store: Path | None = None, view: tuple | None = None) -> Path:
    """mu behind a hidden wall against deletion AUC, one point per row, controls marked, the Pareto front of the
    ranked rows drawn; one panel per track that has rows."""
    from ..figures import pareto_ax
    from ..standings import mean_over

    def panel(ax, t, entries):
        points = [(e["name"], mean_over(e, HIDDEN.name, t.datasets), mean_over(e, DELETION.name, t.datasets),
                   e.get("section", "ranked")) for e in entries]
        walled = next((e for e in entries if e.get("wall")), None)
        uniform = uniform_mu(walled["band_from"], Wall.from_dict(walled["wall"]).input_size[0]) if walled else None
        pareto_ax(ax, [p for p in points if p[1] is not None and p[2] is not None], f"track {t.name}: model {t.model}",
                  uniform)

    return _track_panels(path, store, view, panel, (7.5, 5.5), side_by_side=True)


def render_chart(path: Path, store: Path | None = None, view: tuple | None = None) -> Path:
    """mu x100 per method and dataset with std error bars, one panel per track that has rows."""
    from ..figures import mu_bars_ax

    def panel(ax, t, entries):
        mu_bars_ax(ax, {e["name"]: e["mu"] for e in entries}, list(t.datasets), f"track {t.name}: model {t.model}")

    return _track_panels(path, store, view, panel, (9, 3.4), side_by_side=False)


def _track_panels(path: Path, store, view, panel, size: tuple[float, float], side_by_side: bool) -> Path:
    """One figure, one panel per track that has rows (the first track when none has): panel(ax, track, entries)."""
    from ..present.style import figure, save_png

    tracks, boards = _view(store, view)
    shown = [t for t in tracks.values() if boards[t.name]] or list(tracks.values())[:1]
    n = len(shown)
    shape, figsize = ((1, n), (size[0] * n, size[1])) if side_by_side else ((n, 1), (size[0], size[1] * n))
    with figure(*shape, figsize=figsize) as (fig, axes):
        for ax, t in zip(axes.flat, shown, strict=True):
            panel(ax, t, boards[t.name])
        return save_png(fig, path)


def _html_table(t: Track, entries: list[dict]) -> H.Markup:
    """A section of a track's table, with the authors, descriptions (on hover) and links the Markdown leaves out."""
    header = table_header(t)[:-1] + ["author", "source"]
    rows = [[H.cell(row[0], "num"), H.cell(row[1], title=e["description"] or ""),
             *(H.cell(v, "num") for v in row[2:-4]), row[-4], H.cell(row[-3], "verified"), row[-2], e["author"],
             H.link("link", e["url"])] for row, e in zip(table_rows(t, entries), entries, strict=True)]
    return H.table(header, rows, cls="board wide", row_cls="row")


def render_html(store: Path | None = None, chart: bytes | None = None, view: tuple | None = None,
                axes_chart: bytes | None = None) -> str:
    tracks, boards = _view(store, view)
    body = [H.paragraph(f"{board_intro()} Click a column header to sort.")]
    for t in tracks.values():
        body += [H.heading(2, H.join("Track ", H.code(t.name))),
                 H.paragraph(H.join(f"{t.description.rstrip('.')}. Model ", H.code(t.model), "."))]
        for title, part in sections(boards[t.name]):
            body += [H.heading(3, title), _html_table(t, part)]
    both = side_by_side(tracks, boards)
    if both:
        body += [H.heading(2, "The tracks side by side"), H.paragraph(SIDE_BY_SIDE),
                 H.table(both[0], [[r[0], *(H.cell(c, "num") for c in r[1:])] for r in both[1]], cls="board wide",
                         row_cls="row")]
    if axes_chart:
        body.append(H.image(axes_chart, "mu behind a hidden wall against deletion AUC"))
    if chart:
        body.append(H.image(chart, "mu per method"))
    for rep in reported(store):
        header, rows = reported_table(rep)
        body += [H.heading(2, f"Reported: {rep['title']}", tag="reported, not re-run"), H.paragraph(rep["note"]),
                 H.table(header, [[r[0], *(H.cell(c, "num") for c in r[1:])] for r in rows], cls="reported wide",
                         row_cls="reported-row")]
    return H.page("stackbench leaderboard", body, sortable=True)


def build(store: Path | None = None) -> list[Path]:
    """Render README.md, mu.png, axes.png and index.html (deterministic: the same store gives the same bytes). Refused,
    with nothing written, when any record fails the checks of `verify --no-rerun`."""
    store = resolve_store(store)
    view = (load_tracks(store), board(store))  # one reading of the store: the three files show the same rows
    reported(store)  # a broken reported file is refused before anything is written
    chart = render_chart(store / "mu.png", store, view)
    axes_chart = render_axes_chart(store / "axes.png", store, view)
    atomic_write_bytes(store / "README.md", render_markdown(store, view).encode())
    page = render_html(store, chart.read_bytes(), view, axes_chart.read_bytes())
    atomic_write_bytes(store / "index.html", page.encode())
    return [store / name for name in RENDERED]

