"""The Hugging Face Hub, both ways: fetching a pinned snapshot (`fetch`, what models, datasets and diffusion
checkpoints load through) and publishing a checked folder in one commit (`upload`).

`fetch` imports nothing of the package but its errors; `upload` (which loads models and datasets to check them)
is imported on first use of its names, so loading a model never imports the publishing side.
"""
from importlib import import_module

from .fetch import snapshot

_PUBLISH = ("Plan", "plan_dataset", "plan_model", "plan_folder", "publish")

__all__ = ["snapshot", *_PUBLISH]


def __getattr__(name: str):
    if name in _PUBLISH:
        return getattr(import_module(".upload", __name__), name)
    raise AttributeError(f"module 'stackbench.hub' has no attribute {name!r}")
