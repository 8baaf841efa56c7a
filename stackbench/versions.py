"""The library versions a record carries: one helper for dataset, training, evaluation and theory records."""
from __future__ import annotations

import platform
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

# Where a name's version is read: the module's __version__ (keeps local tags such as torch's +cu130) ...
MODULES = {"torch": "torch", "torchvision": "torchvision", "accelerate": "accelerate", "numpy": "numpy",
           "pillow": "PIL", "datasets": "datasets", "pyarrow": "pyarrow", "scikit-learn": "sklearn"}
# ... or the installed distribution (optional libraries: not imported just to be named).
DISTRIBUTIONS = {"grad-cam": "grad-cam", "captum": "captum", "opencv": "opencv-python-headless", "scipy": "scipy"}


def versions(*names: str, python: bool = True) -> dict[str, str]:
    """{"stackbench": ..., name: version or "not installed" for each name, "python": ...}."""
    from . import __version__

    out = {"stackbench": __version__}
    for name in names:
        try:
            out[name] = import_module(MODULES[name]).__version__ if name in MODULES else version(DISTRIBUTIONS[name])
        except (ImportError, PackageNotFoundError):
            out[name] = "not installed"
    if python:
        out["python"] = platform.python_version()
    return out
