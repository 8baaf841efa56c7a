"""Model zoo: walled architectures, registry, loading and saving."""
from . import zoo  # noqa: F401  (registers the zoo entries)
from .loading import WallLeakWarning, file_sha256, load_model, weights_fingerprint
from .registry import Weights, create_model, get_entry, list_models, register_model
from .vgg import IMAGENET_MEAN, IMAGENET_STD, WalledVGG, WallLinear

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "WalledVGG", "WallLinear", "WallLeakWarning", "Weights", "create_model",
           "get_entry", "list_models", "load_model", "file_sha256", "weights_fingerprint", "register_model"]
