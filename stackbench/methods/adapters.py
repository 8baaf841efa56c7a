"""Methods taken from the field's libraries: any pytorch-grad-cam BaseCAM subclass (built-ins here for the
ones stackbench does not reimplement, and researchers' own CAMs unchanged), and captum's attributions.

A pytorch-grad-cam class runs exactly as its authors wrote it (its own forward, hooks and backward). To
let the metric's post-processing be chosen (`raw` vs `gradcam-lib`), the adapter reads the raw map that
the class's `get_cam_image` returns for the target layer; pytorch-grad-cam's own output is that map after
the `gradcam-lib` post-processing, so the default numbers are the library's. Classes that bypass
`get_cam_image` (FullGrad) give the library's output as it is."""
from __future__ import annotations

import numpy as np
import torch

from .backbone import Backbone, Batch
from .base import SaliencyMethod
from .registry import register_method


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


class LibraryCAM(SaliencyMethod):
    """Adapter over a pytorch-grad-cam class: set `cam_class`."""

    cam_class = None
    needs = frozenset({"forwards", "input_gradients"})
    family = "pytorch-grad-cam"
    imports = ("pytorch_grad_cam", "sklearn.decomposition")  # KPCA-CAM's kernel PCA is sklearn's
    finer_targets = False

    def setup(self, backbone: Backbone, seed: int = 0) -> None:
        import contextlib
        import io

        self.backbone = backbone
        model = backbone.model
        with contextlib.redirect_stdout(io.StringIO()):  # FullGrad prints a warning about target_layers
            self._cam = self.cam_class(model=model, target_layers=[model.target_layer],
                                       reshape_transform=getattr(model, "reshape_transform", None))

    def teardown(self) -> None:
        cam = getattr(self, "_cam", None)
        inner = getattr(cam, "base_cam", cam)
        if inner is not None and hasattr(inner, "activations_and_grads"):
            # Remove the hooks directly: the library's release() fails on some classes (ShapleyCAM's
            # gradients are views) and would fail again, noisily, in BaseCAM.__del__.
            ag = inner.activations_and_grads
            for handle in ag.handles:
                handle.remove()
            ag.handles, ag.activations, ag.gradients = [], [], []
        for p in self.backbone.model.parameters():  # the library's backward filled every .grad
            p.grad = None
        self._cam = None

    def _targets(self, batch: Batch):
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, FinerWeightedTarget

        if not self.finer_targets:
            return [ClassifierOutputTarget(int(t)) for t in batch.targets]
        # Finer-CAM: the target against its most similar classes (pytorch-grad-cam's own default rule,
        # with the main class fixed to our target).
        out = batch.logits.detach().cpu().numpy()
        out_targets = []
        for row, t in zip(out, batch.targets.tolist(), strict=True):
            order = [int(i) for i in np.argsort(np.abs(row - row[t])) if int(i) != t]
            out_targets.append(FinerWeightedTarget(int(t), order[:3], 1.0))
        return out_targets

    def explain(self, batch: Batch):
        cam = self._cam
        inner = getattr(cam, "base_cam", cam)
        captured = []
        original = inner.get_cam_image

        def capture(*args, **kwargs):
            out = original(*args, **kwargs)
            captured.append(out)
            return out

        inner.get_cam_image = capture
        try:
            with torch.enable_grad():
                out = cam(input_tensor=batch.x.to(self.backbone.device), targets=self._targets(batch))
        finally:
            del inner.get_cam_image
        raw = captured[0] if len(captured) == 1 else None
        if isinstance(raw, torch.Tensor):
            raw = raw.detach().cpu().numpy()
        if raw is not None and raw.ndim == 3 and raw.shape[0] == len(batch.ids):
            return raw
        return out


def from_basecam(cls, source: str, name: str | None = None):
    """A SaliencyMethod class running the pytorch-grad-cam class `cls` unchanged."""
    return type(f"{cls.__name__}Adapter", (LibraryCAM,), {
        "name": name or cls.__name__, "cam_class": cls, "source": source,
        "reference": f"{cls.__module__}.{cls.__qualname__}", "version": f"grad-cam {_version('grad-cam')}",
        "__module__": __name__})


class _Deferred:
    """A built-in adapter's `cam_class`, imported on first use: importing pytorch-grad-cam costs seconds
    (torchvision, matplotlib, cv2), which `stackbench methods` and registering the built-ins should not pay."""

    def __init__(self, attr: str):
        self.attr = attr

    def __get__(self, obj, owner=None):
        import pytorch_grad_cam

        return getattr(pytorch_grad_cam, self.attr)


def _builtin(name: str, attr: str, module: str, finer: bool = False, aliases: tuple = ()):
    """What from_basecam gives for pytorch_grad_cam.<module>.<attr>, without importing it (a test checks it)."""
    cls = type(f"{attr}Adapter", (LibraryCAM,), {
        "name": name, "cam_class": _Deferred(attr), "source": "stackbench",
        "reference": f"pytorch_grad_cam.{module}.{attr}", "version": f"grad-cam {_version('grad-cam')}",
        "__module__": __name__, "finer_targets": finer, "__doc__": f"pytorch-grad-cam's {attr}, run unchanged."})
    register_method(name, aliases=aliases)(cls)
    return cls


FullGrad = _builtin("FullGrad", "FullGrad", "fullgrad_cam")
FullGrad.architectures = ("vgg",)  # it sums the biases of convolutions and batch norms; a ViT has neither
KPCACAM = _builtin("KPCA-CAM", "KPCA_CAM", "kpca_cam", aliases=("KPCA_CAM",))
ShapleyCAM = _builtin("ShapleyCAM", "ShapleyCAM", "shapley_cam")
# pytorch-grad-cam's ShapleyCAM keeps the target layer's output un-reshaped (detach=False) and hands it to
# get_cam_image as it is, so a ViT's tokens reach it as (B, T, D) and it raises "Invalid activation shape"; its
# Hessian-vector product would also need the attention's backward differentiated again.
ShapleyCAM.architectures = ("vgg",)
FinerCAM = _builtin("FinerCAM", "FinerCAM", "finer_cam", finer=True)


class CaptumMethod(SaliencyMethod):
    """A captum attribution on the input (N, 3, H, W), reduced over colour channels to a map (N, H, W)."""

    needs = frozenset({"input_gradients"})
    family = "captum"
    imports = ("captum.attr",)

    def setup(self, backbone: Backbone, seed: int = 0) -> None:
        self.backbone = backbone
        self.version = f"captum {_version('captum')}"

    def explain(self, batch: Batch):
        x = batch.x.to(self.backbone.device).clone().requires_grad_(True)
        with torch.enable_grad():
            attr = self.attribute(x, batch.targets.tolist())
        return self.reduce(attr.detach())


@register_method("InputGradient", aliases=("Saliency",))
class InputGradient(CaptumMethod):
    """Simonyan et al. 2014 (captum.attr.Saliency): max over colour channels of |d logit / d input|."""

    reference = "captum.attr.Saliency"

    def attribute(self, x, targets):
        from captum.attr import Saliency

        return Saliency(self.backbone.logits).attribute(x, target=targets, abs=True)

    def reduce(self, attr):
        return attr.amax(dim=1)


@register_method("IntegratedGradients")
class IntegratedGradients(CaptumMethod):
    """Sundararajan et al. 2017 (captum.attr.IntegratedGradients) from the all-zero normalised input (the
    ImageNet mean colour), summed over colour channels (the sign is kept; post-processing applies ReLU)."""

    reference = "captum.attr.IntegratedGradients"
    defaults = {"steps": 32, "method": "gausslegendre", "internal_batch_size": 64}

    def attribute(self, x, targets):
        from captum.attr import IntegratedGradients as IG

        return IG(self.backbone.logits).attribute(x, baselines=torch.zeros_like(x), target=targets,
                                                  n_steps=int(self.config["steps"]), method=self.config["method"],
                                                  internal_batch_size=int(self.config["internal_batch_size"]))

    def reduce(self, attr):
        return attr.sum(dim=1)
