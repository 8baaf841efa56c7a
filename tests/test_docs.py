"""The manual: the site builds with `mkdocs build --strict` (no broken link, no missing reference), the command-line
page is the CLI's own help, every command has a page that names it, and every public name has its entry."""
import os
import re
import subprocess
import sys
from pathlib import Path

import stackbench
from stackbench.commands import reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_the_site_builds_strictly(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    public = [n for n in stackbench.__all__ if not n.startswith("__")]
    for name in ["evaluate", "SaliencyMethod", "Axes", "Wall", "Limits", *public]:
        assert re.search(rf'id="[\w.]*\b{re.escape(name)}"', api), f"{name} has no entry in the API reference"


def test_the_command_line_page_is_the_clis_help():
    assert (DOCS / "cli.md").read_text() == reference.page(), \
        "docs/cli.md is stale: python -m stackbench.commands.reference > docs/cli.md"


def test_every_command_has_a_page_and_every_documented_option_exists():
    pages = "\n".join(p.read_text() for p in DOCS.glob("*.md"))
    for command in reference.commands():
        assert f"`{command}`" in pages, f"{command} is named on no page of docs/"
    # every `stackbench CMD ... --option` written in the pages is an option of that command
    helps = {c: reference.help_of(c) for c in reference.commands()}
    for line in re.findall(r"stackbench [a-z][^\n`]*", pages):
        command = next((c for c in sorted(helps, key=len, reverse=True) if line.startswith(c + " ") or line == c),
                       None)
        if command is None:
            continue
        for opt in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line):
            assert re.search(rf"(^|[\s,]){re.escape(opt)}(?=[\s,=]|$)", helps[command], flags=re.M), \
                f"{opt} is written after `{command}` in docs/ but is not one of its options"
