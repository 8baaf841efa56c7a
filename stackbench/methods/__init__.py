"""Saliency methods: registry, base class, the gradient family (one shared pass), the perturbation family,
Opti-CAM, adapters over pytorch-grad-cam and captum, and plugin loading."""
from . import adapters, attention, controls, gradient, opticam, perturbation  # noqa: F401  (register the built-ins)
from .adapters import LibraryCAM, from_basecam
from .backbone import Backbone, Batch, TokenBackbone, backbone_for
from .base import NEEDS, SaliencyMethod
from .factory import get_method, get_method_class
from .gradient import TargetLayerCAM
from .registry import list_methods, register_method

# The paper's Table 1, in its order.
PAPER_METHODS = ("GradCAM", "GradCAM++", "XGradCAM", "ScoreCAM", "Opti-CAM", "AblationCAM", "EigenCAM", "HiResCAM")
# The methods that read a ViT's attention (`stackbench.methods.attention`).
ATTENTION_METHODS = ("RawAttention", "AttentionRollout", "AttentionRelevancy")
# The controls: never ranked; the board shows which axis catches each.
CONTROLS = ("ConstantSeen", "SobelSeen", "GradCAMZeroed", "RandomCAM")

__all__ = ["ATTENTION_METHODS", "CONTROLS", "NEEDS", "PAPER_METHODS", "Backbone", "Batch", "TokenBackbone",
           "backbone_for", "LibraryCAM", "SaliencyMethod", "TargetLayerCAM", "from_basecam", "get_method",
           "get_method_class", "list_methods", "register_method"]
