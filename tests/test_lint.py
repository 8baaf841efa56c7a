"""The house rules a linter can check: ruff clean with the project's configuration, and no function in the
package over 60 lines (a long function is split into named steps)."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 60


def test_ruff_is_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                          cwd=REPO, capture_output=True, text=True)
    assert "No module named ruff" not in proc.stderr, "ruff is part of the test extra: pip install -e .[test]"
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_configuration_keeps_the_agreed_rules():
    text = (REPO / "pyproject.toml").read_text()  # read as text: tomllib is not in Python 3.10
    ruff = text[text.index("[tool.ruff]"):]
    assert re.search(r"^line-length = 120$", ruff, flags=re.M)
    select = set(re.findall(r'"(\w+)"', re.search(r"^select = \[(.*)\]$", ruff, flags=re.M).group(1)))
    # pyflakes, pycodestyle (errors and warnings), isort, bugbear; and no unused suppression comment
    assert {"F", "E", "W", "I", "B", "RUF100"} <= select


def long_functions(root: Path, limit: int = MAX_LINES) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    out.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({lines} lines)")
    return out


def test_no_function_in_the_package_is_over_60_lines(tmp_path):
    assert long_functions(REPO / "stackbench") == []
    # the check sees what it is for
    (tmp_path / "long.py").write_text("def f():\n" + "    x = 1\n" * MAX_LINES)
    assert long_functions(tmp_path) == [f"{tmp_path.name}/long.py:1 f ({MAX_LINES + 1} lines)"]
