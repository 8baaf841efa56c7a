"""Where the repository's data folders are: `generation/` (presets, class lists) and `cards/` (templates).

They live at the repository root (the package is installed editable), next to the `stackbench` package.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import StackbenchError, close_matches

ROOT = Path(__file__).resolve().parents[2]


def resource(*parts: str) -> Path:
    """Path of a file under the repository root, or one clear error if it is missing."""
    path = ROOT.joinpath(*parts)
    if not path.exists():
        raise StackbenchError(f"{'/'.join(parts)} is missing under {ROOT}; stackbench reads its presets and card "
                              "templates from the source tree: install it with `pip install -e .` from a clone")
    return path


class FromFields:
    """For the recipe dataclasses: `Recipe.from_fields(preset)` keeps the keys that are fields of the recipe."""

    @classmethod
    def from_fields(cls, fields: dict):
        return cls(**{k: v for k, v in fields.items() if k in cls.__dataclass_fields__})


def presets(kind: str) -> list[str]:
    return sorted(p.stem for p in resource("generation", kind).glob("*.json"))


def load_preset(kind: str, name: str) -> dict:
    """generation/<kind>/<name>.json as a dict of option defaults."""
    folder = resource("generation", kind)
    path = folder / f"{name}.json"
    if not path.is_file():
        names = presets(kind)
        raise StackbenchError(f"unknown {kind} preset {name!r}{close_matches(name, names)}; presets: "
                              f"{', '.join(names)} (files in {folder})")
    return json.loads(path.read_text())
