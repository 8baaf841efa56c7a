"""The generation presets (`generation/<kind>/<name>.json`) and the recipes built from them."""
from __future__ import annotations

import json

from ..errors import StackbenchError, close_matches
from ..resources import resource


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
