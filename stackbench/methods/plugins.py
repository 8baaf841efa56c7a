"""Methods that are not built in: `module:attr`, `path/to/file.py:attr`, and the `stackbench.methods`
entry-point group (`name = "package.module:Class"` in a package's pyproject.toml).

The object may be a SaliencyMethod subclass, or any pytorch-grad-cam BaseCAM subclass, taken unchanged
(wrapped by `stackbench.methods.adapters.from_basecam`). Every loaded class says where its code came from, and
that goes into result records: a file's sha256 (`code`), or an installed distribution's name and version
(`package`). Importing plugin code can never end the process: SystemExit, or a KeyboardInterrupt that is not the
user's Ctrl-C, becomes a one-line error naming the plugin."""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from importlib.metadata import entry_points
from pathlib import Path

from ..errors import StackbenchError, close_matches, foreign_failure
from ..refs import method_ref
from .adapters import from_basecam
from .base import SaliencyMethod

GROUP = "stackbench.methods"


def entry_point_names() -> dict:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def _guarded_import(load, what: str):
    """Run `load()` (an import of someone else's code); any failure is one line naming `what`."""
    try:
        return load()
    except BaseException as e:
        reason = foreign_failure(e)
        if reason is None:
            raise
        raise StackbenchError(f"{what} failed to import: {reason}") from None


def load_entry_point(name: str):
    ep = entry_point_names()[name]
    obj = _guarded_import(ep.load, f"entry point {name!r} ({ep.value}) of group {GROUP}")
    dist = getattr(ep, "dist", None)
    package = {"name": dist.name, "version": dist.version} if dist is not None else None
    return as_method_class(obj, f"entry-point:{name}={ep.value}", name, package=package)


def _exec_file(path: Path, digest: str, spec: str):
    """The module of a plugin file. Its name comes from the file's content, so loading the same code again (a
    second dataset, a copy in a leaderboard store) reuses the module instead of running it twice, and its
    classes keep one identity for the registry."""
    modname = f"stackbench_plugin_{digest[:16]}"
    if modname in sys.modules:
        return sys.modules[modname]
    mspec = importlib.util.spec_from_file_location(modname, path)
    module = importlib.util.module_from_spec(mspec)
    sys.modules[modname] = module
    try:
        _guarded_import(lambda: mspec.loader.exec_module(module), f"method plugin {spec!r}: {path}")
    except BaseException:
        sys.modules.pop(modname, None)
        raise
    return module


def package_of_module(name: str) -> dict | None:
    """{name, version} of the installed distribution that provides module `name` (read from the metadata, nothing
    imported), or None."""
    from importlib.metadata import packages_distributions, version

    top = name.partition(".")[0]
    for dist in packages_distributions().get(top, []):
        try:
            return {"name": dist, "version": version(dist)}
        except Exception:  # noqa: BLE001 - a broken distribution's metadata: try the next one
            continue
    return None


def load_plugin(spec: str):
    """`module:attr` or `path/to/file.py:attr` -> a SaliencyMethod class (with its `code` or `package`)."""
    parsed = method_ref(spec)
    if parsed.scheme not in ("module", "file"):
        raise StackbenchError(f"method plugin {spec!r} must look like module:attr or path/to/file.py:attr")
    where, attr = parsed.body, parsed.options["attr"]
    from ..models.loading import file_sha256  # here: the model code (and huggingface_hub) only when a plugin loads

    code = package = None
    if parsed.scheme == "file":
        path = Path(where)
        if not path.is_file():
            raise StackbenchError(f"method plugin {spec!r}: file {where} does not exist")
        digest = file_sha256(path)
        module = _exec_file(path, digest, spec)
        code = {"file": path.name, "sha256": digest}
    else:
        module = _guarded_import(lambda: importlib.import_module(where), f"method plugin {spec!r}: module {where!r}")
        package = package_of_module(module.__name__)
        file = getattr(module, "__file__", None)
        if package is None and file and Path(file).is_file():  # a module of no distribution: hash its file
            code = {"file": Path(file).name, "sha256": file_sha256(Path(file))}
    if not hasattr(module, attr):
        names = [n for n, v in vars(module).items() if inspect.isclass(v) and not n.startswith("_")]
        raise StackbenchError(f"method plugin {spec!r}: {where} has no attribute {attr!r}{close_matches(attr, names)}")
    return as_method_class(getattr(module, attr), spec, attr, code=code, package=package)


def _basecam():
    from pytorch_grad_cam.base_cam import BaseCAM  # here: 4 s of imports, only for a class that is not ours

    return BaseCAM


def as_method_class(obj, source: str, default_name: str, code: dict | None = None, package: dict | None = None):
    """Accept a SaliencyMethod subclass or a pytorch-grad-cam BaseCAM subclass; refuse anything else."""
    if inspect.isclass(obj) and issubclass(obj, SaliencyMethod):
        cls = type(obj.__name__, (obj,), {"name": obj.name or default_name, "source": source,
                                          "__module__": obj.__module__})
    elif inspect.isclass(obj) and issubclass(obj, _basecam()):
        cls = from_basecam(obj, source=source, name=default_name)
    else:
        raise StackbenchError(f"method plugin {source}: {obj!r} is neither a stackbench.methods.SaliencyMethod "
                              "subclass nor a pytorch_grad_cam BaseCAM subclass")
    cls.code, cls.package = code, package
    return cls
