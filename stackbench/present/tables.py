"""The one Markdown table writer (its padded form is the CLI's text table) and Markdown escaping.

Light on purpose: the CLI imports it at start-up (`stackbench --help` must not pay for numpy or torch)."""
from __future__ import annotations

import html
import re
from typing import Sequence

from ..refs import HTTP_URL

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~-])")


def markdown_table(header: Sequence, rows: Sequence[Sequence], pad: bool = False) -> str:
    """A GitHub Markdown table; `pad` aligns the columns for a terminal (still valid Markdown). Cells are written
    as given: escape untrusted text with `md_text` first."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) if pad else 0 for i in range(len(cells[0]))]
    rule = "|" + "|".join("-" * max(w + 2, 3) for w in widths) + "|"
    return "\n".join([_line(cells[0], widths), rule, *(_line(r, widths) for r in cells[1:])])


def _line(cells: list[str], widths: list[int]) -> str:
    return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"


def text_table(header: Sequence, rows: Sequence[Sequence]) -> str:
    """The aligned table the CLI prints."""
    return markdown_table(header, rows, pad=True)


def md_text(s) -> str:
    """Untrusted text for Markdown (a table cell, a heading): HTML-escaped, Markdown punctuation backslash-escaped."""
    s = " ".join(str(s or "").split())  # no newlines: they would break the table
    # Only &, < and > become entities: a quote is inert in Markdown, and an entity's '#' would be escaped again.
    return _MD_SPECIAL.sub(r"\\\1", html.escape(s, quote=False))


def md_link(text: str, url: str | None) -> str:
    """A Markdown link to an http(s) URL without spaces, quotes or brackets; the bare (escaped) text otherwise."""
    if not url or not HTTP_URL.match(url):
        return md_text(text)
    return f"[{md_text(text)}]({url})"
