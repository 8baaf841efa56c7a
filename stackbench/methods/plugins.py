"""Methods that are not built in: `module:attr`, `path/to/file.py:attr`, and the `stackbench.methods`
entry-point group (`name = "package.module:Class"` in a package's pyproject.toml).

The object may be a SaliencyMethod subclass, or any pytorch-grad-cam BaseCAM subclass, taken unchanged
(wrapped by `stackbench.methods.adapters.from_basecam`)."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from importlib.metadata import entry_points
from pathlib import Path

from ..errors import StackbenchError, close_matches

GROUP = "stackbench.methods"


def entry_point_names() -> dict:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def load_entry_point(name: str):
    ep = entry_point_names()[name]
    try:
        obj = ep.load()
    except Exception as e:  # noqa: BLE001 - any import failure is the plugin author's to fix
        raise StackbenchError(f"entry point {name!r} ({ep.value}) of group {GROUP} failed to load: "
                              f"{type(e).__name__}: {e}") from None
    return as_method_class(obj, f"entry-point:{name}={ep.value}", name)


def _split(spec: str) -> tuple[str, str]:
    head, sep, attr = spec.rpartition(":")
    if not sep or not head or not attr:
        raise StackbenchError(f"method plugin {spec!r} must look like module:attr or path/to/file.py:attr")
    return head, attr


def load_plugin(spec: str):
    """`module:attr` or `path/to/file.py:attr` -> a SaliencyMethod class."""
    where, attr = _split(spec)
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where)
        if not path.is_file():
            raise StackbenchError(f"method plugin {spec!r}: file {where} does not exist")
        # A module name unique to the file's resolved path keeps two plugin files with the same name apart.
        modname = "stackbench_plugin_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        try:
            mspec = importlib.util.spec_from_file_location(modname, path)
            module = importlib.util.module_from_spec(mspec)
            sys.modules[modname] = module
            mspec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001
            sys.modules.pop(modname, None)
            raise StackbenchError(f"method plugin {spec!r}: {where} failed to import: {type(e).__name__}: {e}") from None
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:  # noqa: BLE001
            raise StackbenchError(f"method plugin {spec!r}: module {where!r} failed to import: "
                                  f"{type(e).__name__}: {e}") from None
    if not hasattr(module, attr):
        names = [n for n, v in vars(module).items() if inspect.isclass(v) and not n.startswith("_")]
        raise StackbenchError(f"method plugin {spec!r}: {where} has no attribute {attr!r}{close_matches(attr, names)}")
    return as_method_class(getattr(module, attr), spec, attr)


def as_method_class(obj, source: str, default_name: str):
    """Accept a SaliencyMethod subclass or a pytorch-grad-cam BaseCAM subclass; refuse anything else."""
    from pytorch_grad_cam.base_cam import BaseCAM

    from .adapters import from_basecam
    from .base import SaliencyMethod

    if inspect.isclass(obj) and issubclass(obj, SaliencyMethod):
        return type(obj.__name__, (obj,), {"name": obj.name or default_name, "source": source,
                                           "__module__": obj.__module__})
    if inspect.isclass(obj) and issubclass(obj, BaseCAM):
        return from_basecam(obj, source=source, name=default_name)
    raise StackbenchError(f"method plugin {source}: {obj!r} is neither a stackbench.methods.SaliencyMethod subclass "
                          "nor a pytorch_grad_cam BaseCAM subclass")
