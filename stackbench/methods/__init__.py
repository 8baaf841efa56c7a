"""Saliency methods: registry, base class, the gradient family (one shared pass), the perturbation family,
Opti-CAM, adapters over pytorch-grad-cam and captum, and plugin loading."""
from . import adapters, controls, gradient, opticam, perturbation  # noqa: F401  (register the built-ins)
from .adapters import LibraryCAM, from_basecam
from .backbone import Backbone, Batch
from .base import NEEDS, SaliencyMethod
from .factory import get_method, get_method_class
from .gradient import TargetLayerCAM
from .registry import list_methods, register_method

# The paper's Table 1, in its order.
PAPER_METHODS = ("GradCAM", "GradCAM++", "XGradCAM", "ScoreCAM", "Opti-CAM", "AblationCAM", "EigenCAM", "HiResCAM")
# The controls: never ranked; the board shows which axis catches each.
CONTROLS = ("ConstantSeen", "SobelSeen", "GradCAMZeroed", "RandomCAM")

__all__ = ["CONTROLS", "NEEDS", "PAPER_METHODS", "Backbone", "Batch", "LibraryCAM", "SaliencyMethod", "TargetLayerCAM",
           "from_basecam", "get_method", "get_method_class", "list_methods", "register_method"]
