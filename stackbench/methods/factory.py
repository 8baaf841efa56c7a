"""Making a method from a spec, in the style of timm's `_factory`: a registered name (`GradCAM`, an alias, any
case), `module:attr`, `path/to/file.py:attr`, an installed `stackbench.methods` entry point, or a class."""
from __future__ import annotations

import inspect
import sys

from ..errors import StackbenchError, close_matches
from ..refs import method_ref
from .base import SaliencyMethod
from .plugins import as_method_class, entry_point_names, load_entry_point, load_plugin
from .registry import is_builtin, list_methods, registered, registered_names


def get_method_class(spec):
    """The SaliencyMethod class for a spec (name, alias, case-insensitive name, plugin, entry point) or a class
    (a SaliencyMethod or pytorch-grad-cam BaseCAM subclass)."""
    if inspect.isclass(spec):
        return _from_class(spec)
    if not isinstance(spec, str):
        raise StackbenchError(f"method {type(spec).__name__} object: expected a name, a SaliencyMethod class or "
                              "instance, or a pytorch_grad_cam BaseCAM class")
    cls = registered(spec)
    if cls is not None:
        return cls
    if method_ref(spec).scheme != "name":
        return load_plugin(spec)
    eps = entry_point_names()
    if spec in eps:
        return load_entry_point(spec)
    known = [*registered_names(), *eps]
    raise StackbenchError(f"unknown method {spec!r}{close_matches(spec, known)}; registered: "
                          f"{', '.join(list_methods())}; or give module:attr, path/file.py:attr or an installed "
                          "stackbench.methods entry point")


def _from_class(cls):
    """A class given as an object: a built-in as it is; else the plugin `module:qualname` names, so its record
    carries the same source (and code hash) as that spec on the command line. A class defined in a notebook
    (`__main__`) runs, but its record cannot name code anyone else can re-run."""
    if is_builtin(cls):
        return cls
    spec = f"{cls.__module__}:{cls.__qualname__}"
    module = sys.modules.get(cls.__module__)
    if cls.__module__ != "__main__" and getattr(module, cls.__qualname__, None) is cls:
        return load_plugin(spec)
    return as_method_class(cls, spec, cls.__name__)


def get_method(spec, **config):
    """A configured method instance for a spec (see module doc), a class, or an instance (returned as it is)."""
    if isinstance(spec, SaliencyMethod):
        if config:
            raise StackbenchError(f"method {spec.name}: an instance is already configured ({spec.config}); pass the "
                                  "options to its class instead")
        return spec
    return get_method_class(spec)(**config)
