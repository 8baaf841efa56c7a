"""Model zoo registry in the style of timm: `register_model`, `list_models`, `create_model`."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import StackbenchError, close_matches


@dataclass(frozen=True)
class Weights:
    """Published weights of a zoo entry: a file shipped with the package, or a Hub repo."""

    file: str | None = None          # path relative to stackbench/weights/
    sha256: str | None = None        # of the file's bytes, checked at load
    hub: str | None = None           # "REPO[@REV]"
    metrics: dict = field(default_factory=dict)  # e.g. {"top1": 0.93, "split": "shapes val"}

    def __str__(self) -> str:
        if self.file:
            return "shipped"
        if self.hub:
            return f"hf:{self.hub}"
        return "no"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    fn: Callable[..., torch.nn.Module]
    description: str
    weights: Weights | None = None
    how_to_get: str = ""             # what to do when no weights are published


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, description: str = "", weights: Weights | None = None, how_to_get: str = ""):
    """Decorator: register a function returning a fresh (randomly initialised) model under `name`."""

    def deco(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        summary = description or (fn.__doc__ or "").strip().splitlines()[0]
        _MODELS[name] = ModelEntry(name, fn, summary, weights, how_to_get)
        return fn

    return deco


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def get_entry(name: str) -> ModelEntry:
    try:
        return _MODELS[name]
    except KeyError:
        raise StackbenchError(
            f"unknown model {name!r}{close_matches(name, _MODELS)}; known models: {', '.join(list_models())} "
            "(see `stackbench models`)") from None


def create_model(name: str, seed: int | None = 0, **kwargs) -> torch.nn.Module:
    """A randomly initialised zoo model. With a seed, initialisation is reproducible and leaves the
    global RNG untouched."""
    entry = get_entry(name)
    if seed is None:
        return entry.fn(**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return entry.fn(**kwargs)
