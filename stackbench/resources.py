"""Where the files a command reads at run time are: presets and class lists (`generation/`), card templates
(`cards/`) and the board's tracks and reported numbers (`board/` = `leaderboard/tracks.json`, `reported/`).

The repository keeps them at its top level, where people edit them; the wheel build maps them into
`stackbench/_data/` (setup.py). An installed wheel reads the packaged copy, a clone (`pip install -e .`) the
source tree.
"""
from __future__ import annotations

from pathlib import Path

from .errors import StackbenchError

PACKAGE = Path(__file__).resolve().parent
PACKAGED = PACKAGE / "_data"
SOURCE = PACKAGE.parent
# kind -> its folder in the repository (the packaged copy is PACKAGED / kind)
FOLDERS = {"generation": "generation", "cards": "cards", "board": "leaderboard"}


def resource_root(kind: str) -> Path:
    """The folder holding `kind`'s files: the packaged copy when there is one, else the source tree's."""
    packaged = PACKAGED / kind
    return packaged if packaged.is_dir() else SOURCE / FOLDERS[kind]


def resource(kind: str, *parts: str) -> Path:
    """Path of one shipped file or folder, or one clear error if this installation lacks it."""
    path = resource_root(kind).joinpath(*parts)
    if not path.exists():
        raise StackbenchError(f"{'/'.join((FOLDERS[kind], *parts))} is missing from this installation "
                              f"(looked in {resource_root(kind)}); reinstall stackbench (`pip install stackbench`, "
                              "or `pip install -e .` from a clone)")
    return path
