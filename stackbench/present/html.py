"""The one HTML page shell (one stylesheet) that the report and the board are built in, and the parts they fill it
with. Every value is escaped unless it is `Markup` (HTML this module or its caller built on purpose)."""
from __future__ import annotations

import base64
import html
from typing import Iterable, Mapping, Sequence

from ..refs import HTTP_URL

STYLESHEET = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;"
    "font-size:14px}th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}"
    "table.wide{width:100%}.sortable th{cursor:pointer}.reported{background:#fffbea}.tag{font-size:12px;"
    "color:#8a6d00}img{max-width:100%}li{margin:.3em 0}")
# Click a header of a table in a `sortable` page to sort by that column (numbers as numbers), again to reverse.
SORT_SCRIPT = """<script>
for (const table of document.querySelectorAll('table')) {
  table.querySelectorAll('th').forEach((th, col) => th.addEventListener('click', () => {
    const body = table.tBodies[0], rows = Array.from(body.rows);
    const key = r => { const t = r.cells[col].textContent.trim(); const v = parseFloat(t); return isNaN(v) ? t : v; };
    const dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
    rows.sort((a, b) => { const x = key(a), y = key(b); return (x > y ? 1 : x < y ? -1 : 0) * dir; });
    rows.forEach(r => body.appendChild(r));
  }));
}
</script>"""


class Markup(str):
    """HTML built on purpose: inserted as it is, never escaped again."""


class Cell(Markup):
    """One whole table cell (`cell`)."""


def esc(value) -> str:
    """Text (None as nothing) for HTML: every special character, quotes included, as an entity."""
    return html.escape(str("" if value is None else value), quote=True)


def _inline(value) -> str:
    return value if isinstance(value, Markup) else esc(value)


def page(title: str, body: Iterable[str], sortable: bool = False) -> str:
    """A self-contained page: the one stylesheet, the title as its heading, then `body` (Markup parts)."""
    head = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<style>{STYLESHEET}</style></head>" + ("<body class='sortable'>" if sortable else "<body>"))
    return "\n".join([head, f"<h1>{esc(title)}</h1>", *body, *([SORT_SCRIPT] if sortable else []),
                      "</body></html>\n"])


def heading(level: int, text, tag: str | None = None) -> Markup:
    """<hN>: text, then a small tag beside it."""
    extra = f" <span class='tag'>{esc(tag)}</span>" if tag else ""
    return Markup(f"<h{level}>{_inline(text)}{extra}</h{level}>")


def paragraph(text) -> Markup:
    return Markup(f"<p>{_inline(text)}</p>")


def code(text) -> Markup:
    return Markup(f"<code>{esc(text)}</code>")


def join(*parts) -> Markup:
    """Text and Markup run together (each text part escaped)."""
    return Markup("".join(_inline(p) for p in parts))


def bullets(items: Iterable) -> Markup:
    return Markup("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")


def definitions(items: Mapping) -> Markup:
    """A list of 'name: value' lines, the names in bold."""
    return bullets(join(Markup(f"<b>{esc(k)}</b>: "), str(v)) for k, v in items.items())


def cell(value, cls: str | None = None, title=None) -> Cell:
    """<td>, with a class and a hover title when given."""
    attrs = (f" class='{esc(cls)}'" if cls else "") + (f" title='{esc(title)}'" if title is not None else "")
    return Cell(f"<td{attrs}>{_inline(value)}</td>")


def table(header: Sequence, rows: Iterable[Sequence], cls: str | None = None, row_cls: str | None = None) -> Markup:
    """<table> with a head row; a row's cells are values (escaped, in a plain <td>) or `cell`s."""
    tr = f"<tr class='{esc(row_cls)}'>" if row_cls else "<tr>"
    body = "".join(tr + "".join(c if isinstance(c, Cell) else cell(c) for c in r) + "</tr>" for r in rows)
    head = "".join(f"<th>{_inline(h)}</th>" for h in header)
    attrs = f" class='{esc(cls)}'" if cls else ""
    return Markup(f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def image(png: bytes, alt: str) -> Markup:
    """A PNG inlined as a data URI: the page stays one file."""
    return Markup(f"<img alt='{esc(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")


def link(text, url: str | None) -> Markup:
    """A link that opens nothing of ours (noopener) to an http(s) URL (`refs.HTTP_URL`); nothing for any other."""
    if not url or not HTTP_URL.match(url):
        return Markup("")
    return Markup(f"<a href='{esc(url)}' rel='noopener noreferrer nofollow'>{esc(text)}</a>")
