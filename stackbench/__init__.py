"""stackbench: does a saliency method highlight what the model cannot see?

    import stackbench
    model = stackbench.load_model("minivgg-masked")
    maps = stackbench.explain(model, images, method="GradCAM")
    stackbench.mu(maps, model.wall)

Names are imported on first use (PEP 562), so `import stackbench` and `stackbench --help` do not pay for torch.
The harness is `stackbench.evaluate.evaluate` (a module of that name: it cannot also be a function here).
"""
from importlib import import_module
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("stackbench")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# public name -> module that defines it
_LAZY = {
    "StackbenchError": "errors",
    "Wall": "wall", "check": "wall", "dead_zone": "wall",
    "explain": "api", "mu": "api", "build_dataset": "api", "load_model": "api", "open_dataset": "api",
    "get_method": "api", "list_methods": "api", "list_models": "api", "SaliencyMethod": "api",
    "register_method": "api",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # once imported, a plain attribute
        return value
    raise AttributeError(f"module 'stackbench' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_LAZY})
