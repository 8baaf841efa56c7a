"""Method registry in the style of timm: `register_method`, `list_methods`, `get_method`.

A method spec is a registered name (`GradCAM`), `module:attr`, `path/to/file.py:attr` or the name of an
installed `stackbench.methods` entry point; see `stackbench.methods.plugins`."""
from __future__ import annotations

import fnmatch
import inspect
import sys

from ..errors import StackbenchError, close_matches

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


def get_method_class(spec):
    """The SaliencyMethod class for a spec (name, alias, case-insensitive name, plugin, entry point) or a class
    (a SaliencyMethod or pytorch-grad-cam BaseCAM subclass)."""
    from .plugins import entry_point_names, load_entry_point, load_plugin

    if inspect.isclass(spec):
        return _from_class(spec)
    if not isinstance(spec, str):
        raise StackbenchError(f"method {type(spec).__name__} object: expected a name, a SaliencyMethod class or "
                              "instance, or a pytorch_grad_cam BaseCAM class")
    if spec in _METHODS:
        return _METHODS[spec]
    if spec in _ALIASES:
        return _METHODS[_ALIASES[spec]]
    folded = {n.lower(): n for n in [*_METHODS, *_ALIASES]}
    if spec.lower() in folded:
        return get_method_class(folded[spec.lower()])
    if ":" in spec:
        return load_plugin(spec)
    eps = entry_point_names()
    if spec in eps:
        return load_entry_point(spec)
    known = [*_METHODS, *_ALIASES, *eps]
    raise StackbenchError(f"unknown method {spec!r}{close_matches(spec, known)}; registered: "
                          f"{', '.join(list_methods())}; or give module:attr, path/file.py:attr or an installed "
                          "stackbench.methods entry point")


def _from_class(cls):
    """A class given as an object: a built-in as it is; else the plugin `module:qualname` names, so its record
    carries the same source (and code hash) as that spec on the command line. A class defined in a notebook
    (`__main__`) runs, but its record cannot name code anyone else can re-run."""
    from .plugins import as_method_class, load_plugin

    if cls in _METHODS.values():
        return cls
    spec = f"{cls.__module__}:{cls.__qualname__}"
    module = sys.modules.get(cls.__module__)
    if cls.__module__ != "__main__" and getattr(module, cls.__qualname__, None) is cls:
        return load_plugin(spec)
    return as_method_class(cls, spec, cls.__name__)


def get_method(spec, **config):
    """A configured method instance for a spec (see module doc), a class, or an instance (returned as it is)."""
    from .base import SaliencyMethod

    if isinstance(spec, SaliencyMethod):
        if config:
            raise StackbenchError(f"method {spec.name}: an instance is already configured ({spec.config}); pass the "
                                  "options to its class instead")
        return spec
    return get_method_class(spec)(**config)
