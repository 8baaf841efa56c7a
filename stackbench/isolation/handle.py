"""A method as the harness knows it: how a worker makes it and what it says of itself, never its code.

Built-ins are stackbench's own code and are described here. A plugin (`module:attr`, `path/file.py:attr`, an
entry point) is imported only in a worker, which answers its name, needs and description; what identifies its code
(a file's sha256, a distribution's version) the harness works out itself from the file or the metadata. A method
object a notebook hands `evaluate` is sent to its worker by value (cloudpickle), or by its plugin spec."""
from __future__ import annotations

import copy
import inspect
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import StackbenchError
from ..methods import SaliencyMethod, get_method_class
from ..methods.base import ARCHITECTURES, NEEDS
from ..methods.plugins import entry_point_names
from ..methods.registry import is_builtin, registered
from ..refs import method_ref
from .limits import Limits


@dataclass(frozen=True)
class MethodHandle:
    payload: tuple              # ("spec", spec, config) or ("class", cloudpickle bytes, config)
    name: str
    needs: frozenset
    architectures: tuple
    rerun_spread: dict
    info: dict                  # the record's `method` (SaliencyMethod.describe)
    imports: tuple = ()         # what its worker imports (SaliencyMethod.imports)

    @property
    def config(self) -> dict:
        return dict(self.info["config"])

    @property
    def source(self) -> str:
        return self.info["source"]

    @property
    def code(self) -> dict | None:
        return self.info.get("code")

    @property
    def package(self) -> dict | None:
        return self.info.get("package")

    def describe(self) -> dict:
        return copy.deepcopy(self.info)

    @property
    def builtin(self) -> bool:
        """One of stackbench's own methods (its worker may be shared with the others; see `pool`)."""
        kind, what = self.payload[:2]
        return kind == "spec" and isinstance(what, str) and is_builtin(registered(what))


def imports_of(methods) -> tuple[str, ...]:
    """The modules the workers of `methods` (specs, classes, instances, handles; 'all') will import: what the
    built-ins declare (`SaliencyMethod.imports`); a plugin's are its own business."""
    from ..methods import list_methods

    out: list[str] = []
    for m in methods:
        if isinstance(m, str):
            classes = [registered(n) for n in list_methods()] if m == "all" else [registered(m)]
        else:
            classes = [type(m) if isinstance(m, SaliencyMethod) else m]
        for c in classes:
            out += getattr(c, "imports", ()) or ()
    return tuple(dict.fromkeys(out))


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")


def checked_name(name, what: str) -> str:
    """A method's name as tables, file names and the board show it: one word, so two names never share a file
    and no name can start a line of its own in a table or log."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise StackbenchError(f"{what}: its name {str(name)[:40]!r} is not a method name: 1 to 64 letters, digits "
                              "and - _ . +, starting with a letter or digit (set the class's `name`)")
    return name


def _handle(payload, inst) -> MethodHandle:
    checked_name(inst.name, f"method {type(inst).__qualname__}")
    return MethodHandle(payload, inst.name, frozenset(inst.needs), tuple(inst.architectures),
                        dict(inst.rerun_spread or {}), inst.describe(), tuple(inst.imports or ()))


def from_instance(inst: SaliencyMethod) -> MethodHandle:
    """The handle of a method object in this process (a built-in, or the user's own class)."""
    cls, config = type(inst), dict(inst.config)
    if is_builtin(cls):
        return _handle(("spec", cls.name, config), inst)
    ref = method_ref(cls.source, recorded=True)
    if ref.scheme in ("file", "entry-point"):  # loaded from a spec: the worker loads it the same way
        return _handle(("spec", ref.body if ref.scheme == "entry-point" else cls.source, config), inst)
    import cloudpickle

    try:
        data = cloudpickle.dumps(cls)
    except Exception as e:  # noqa: BLE001 - a class cloudpickle cannot carry
        raise StackbenchError(f"method {inst.name}: its class cannot be sent to a worker process ({e}); put it in a "
                              f"file and pass 'path/file.py:{cls.__name__}'") from None
    return _handle(("class", data, config), inst)


def method_handle(spec, limits: Limits | None = None, **config) -> MethodHandle:
    """A spec (name, alias, plugin, entry point), a class or an instance -> its handle; a plugin is imported in a
    worker only."""
    if isinstance(spec, MethodHandle):
        if config:
            raise StackbenchError(f"method {spec.name}: already configured ({spec.config}); pass the options with "
                                  "its name instead")
        return spec
    if isinstance(spec, SaliencyMethod) or inspect.isclass(spec) or not isinstance(spec, str):
        from ..methods import get_method

        return from_instance(get_method(spec, **config))
    cls = registered(spec)
    if cls is not None:
        return from_instance(cls(**config))
    ref = method_ref(spec)
    eps = entry_point_names()
    if ref.scheme == "name" and spec not in eps:
        get_method_class(spec)  # an unknown name: its one-line error, with the close matches
    return _described(spec, ref, eps, limits or Limits(), config)


def _described(spec: str, ref, eps: dict, limits: Limits, config: dict) -> MethodHandle:
    from .session import Session, SetupFailure, WorkerFailure

    payload = ("spec", spec, config)
    try:
        session = Session(spec, payload, limits, describe=True)
    except (SetupFailure, WorkerFailure) as e:  # its import raised, ended its worker or hung
        raise StackbenchError(f"method plugin {spec!r} failed to import: it {e}") from None
    try:
        info = session.info
    finally:
        session.close()
    try:
        name, needs, archs = str(info["name"]), frozenset(info["needs"]), tuple(info["architectures"])
        spread = {str(k): float(v) for k, v in info["rerun_spread"].items()}
        desc = dict(info["describe"])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise StackbenchError(f"method plugin {spec!r}: its worker described it unreadably") from None
    checked_name(name, f"method plugin {spec!r}")
    if not needs <= set(NEEDS) or not set(archs) <= set(ARCHITECTURES):
        raise StackbenchError(f"method plugin {spec!r}: needs {sorted(needs)} / architectures {list(archs)}: expected "
                              f"some of {', '.join(NEEDS)} / {', '.join(ARCHITECTURES)}")
    prov = _provenance(spec, ref, eps, desc)
    desc = {k: v for k, v in desc.items() if k not in ("code", "package")}
    desc.update(name=name, needs=sorted(needs), config=config, **prov)
    return MethodHandle(payload, name, needs, archs, spread, desc)


def _provenance(spec: str, ref, eps: dict, told: dict) -> dict:
    """The record's source, code and package, worked out here (a plugin's own answer could say anything)."""
    from ..methods.plugins import package_of_module
    from ..models.loading import file_sha256

    code = package = None
    if ref.scheme == "file":
        path = Path(ref.body)
        source, code = spec, {"file": path.name, "sha256": file_sha256(path)}
    elif ref.scheme == "name":  # an entry point
        ep = eps[spec]
        dist = getattr(ep, "dist", None)
        source = f"entry-point:{spec}={ep.value}"
        package = {"name": dist.name, "version": dist.version} if dist is not None else None
    else:
        source, package = spec, package_of_module(ref.body)
        code = None if package else told.get("code")
    return {"source": source, **({"code": code} if code else {}), **({"package": package} if package else {})}
