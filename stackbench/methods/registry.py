"""Method registry in the style of timm's `_registry`: `register_method`, `list_methods`, a lookup by name.
It imports nothing that imports it back; making a method from any spec is `stackbench.methods.factory`."""
from __future__ import annotations

import fnmatch

_METHODS: dict = {}
_ALIASES: dict[str, str] = {}


def register_method(name: str | None = None, aliases: tuple[str, ...] = ()):
    """Decorator: register a SaliencyMethod subclass under `name` (default: its `name` attribute).

    The same class registered again (its module re-imported, a notebook cell run twice) replaces the old entry;
    another class under a taken name is refused."""

    def deco(cls):
        key = name or cls.name
        if not key:
            raise ValueError(f"{cls.__qualname__} needs a name")
        old = _METHODS.get(key)
        if old is not None and _origin(old) != _origin(cls):
            raise ValueError(f"method {key!r} is already registered (by {_origin(old)}); register "
                             f"{_origin(cls)} under another name")
        cls.name = key
        _METHODS[key] = cls
        for a in aliases:
            _ALIASES[a] = key
        return cls

    return deco


def _origin(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def list_methods(pattern: str = "*", family: str | None = None) -> list[str]:
    """Registered built-in names (sorted), optionally filtered by a glob and a family."""
    return sorted(n for n, c in _METHODS.items()
                  if fnmatch.fnmatch(n, pattern) and (family is None or c.family == family))


def registered(name: str):
    """The class registered under `name`, an alias or a name that differs only in case; None if there is none."""
    if name in _METHODS:
        return _METHODS[name]
    if name in _ALIASES:
        return _METHODS[_ALIASES[name]]
    folded = {n.lower(): n for n in [*_METHODS, *_ALIASES]}
    return registered(folded[name.lower()]) if name.lower() in folded else None


def registered_names() -> list[str]:
    """Every registered name and alias (for close-match suggestions)."""
    return [*_METHODS, *_ALIASES]


def is_builtin(cls) -> bool:
    return cls in _METHODS.values()
