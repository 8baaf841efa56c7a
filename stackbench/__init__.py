"""stackbench: does a saliency method highlight what the model cannot see?"""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("stackbench")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from .errors import StackbenchError  # noqa: E402
from .wall import Wall, check, dead_zone  # noqa: E402

__all__ = ["StackbenchError", "Wall", "check", "dead_zone", "__version__"]
