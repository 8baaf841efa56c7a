"""What every saliency method is: a small class that turns a batch into maps (N, h, w).

A method declares what it needs (`needs`); the harness computes the shared part once per batch:

    "activations"      target-layer activations A (N, C, h, w), detached
    "gradients"        d(target logit)/dA (N, C, h, w): one backward through the head only
    "forwards"         extra forward passes (uses `batch.backbone`)
    "input_gradients"  gradients with respect to the input (uses `batch.backbone`)

`explain(batch)` returns a torch tensor or numpy array (N, h, w) of any float dtype; the harness checks it
(shape, dtype, finite) and post-processes it as the metric defines (`stackbench.metrics.postprocess`).
"""
from __future__ import annotations

from typing import ClassVar

from ..errors import StackbenchError
from .backbone import Backbone, Batch, backbone_for
from .passes import explain_images

NEEDS = ("activations", "gradients", "forwards", "input_gradients")
ARCHITECTURES = ("vgg", "vit")


def check_architecture(method, model) -> None:
    """One line when `method` (an instance or class) cannot run on `model`'s architecture."""
    arch = getattr(model, "arch", "vgg")
    if arch not in method.architectures:
        raise StackbenchError(f"method {method.name} does not run on {arch} models ({getattr(model, 'name', arch)}); "
                              f"it runs on {', '.join(method.architectures)} models (see `stackbench methods`)")


class SaliencyMethod:
    """Base class. Subclasses set `name`, `needs`, `defaults` and implement `explain`."""

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset] = frozenset()
    defaults: ClassVar[dict] = {}
    version: ClassVar[str] = "1"
    source: ClassVar[str] = "stackbench"          # "stackbench" for built-ins; module:attr / path:attr / entry point
    reference: ClassVar[str | None] = None       # the implementation it reproduces, if any
    family: ClassVar[str] = "other"
    code: ClassVar[dict | None] = None            # a plugin file's {file, sha256}: the exact code that ran
    package: ClassVar[dict | None] = None         # an installed plugin's distribution {name, version}
    architectures: ClassVar[tuple] = ARCHITECTURES  # the walled model kinds it runs on (a model's `arch`)
    # modules its code imports when it runs: the worker processes' forkserver imports them once for them all
    imports: ClassVar[tuple] = ()
    # {metric: per-image spread (RMS) between CPU kernel sets} where this method's maps move with round-off (an
    # optimisation's many steps); it loosens the re-run tolerance (metrics.rerun_tolerances). Measured with
    # scripts/kernel_spread.py; empty: the metrics' own tolerances hold.
    rerun_spread: ClassVar[dict] = {}

    def __init__(self, model=None, **config):
        unknown = set(config) - set(self.defaults)
        if unknown:
            raise StackbenchError(f"method {self.name}: unknown option(s) {sorted(unknown)}; "
                                  f"it takes {sorted(self.defaults) or 'none'}")
        self.config = {**self.defaults, **config}
        self._use: dict | None = None          # what `bind` attached: model, seed, postprocess, batch size
        self._backbone: Backbone | None = None  # set up while inside `with`
        if model is not None:
            self.bind(model)

    # ---- used directly, the way pytorch-grad-cam's and captum's methods are:
    #     with GradCAM(model) as cam:
    #         maps = cam(images, targets=None)     # (N, H, W) float32, post-processed as the metric scores them

    def bind(self, model, *, seed: int = 0, postprocess: str = "gradcam-lib", batch_size: int = 16):
        """Attach a walled model (an object or a reference such as "minivgg-masked") for `method(images)`."""
        from ..models import load_model

        if self._backbone is not None:
            raise StackbenchError(f"method {self.name}: it is in use inside `with`; bind another model after the "
                                  "block ends, or make a second instance")
        self._use = {"model": load_model(model), "seed": seed, "postprocess": postprocess, "batch_size": batch_size}
        return self

    def __enter__(self):
        if self._use is None:
            raise StackbenchError(f"method {self.name}: no model to explain; give one: `with {type(self).__name__}"
                                  "(model) as cam:` or `.bind(model)`")
        if self._backbone is None:  # the outermost `with` sets up; a nested one (a helper's) shares it
            check_architecture(self, self._use["model"])
            self._backbone = backbone_for(self._use["model"])
            self.setup(self._backbone, self._use["seed"])
        self._depth = getattr(self, "_depth", 0) + 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if not self._depth:
            self._backbone = None
            self.teardown()

    def __call__(self, images, targets=None):
        """Maps of `images` (tensor (N, 3, H, W) or (3, H, W) in [0, 1], PIL image(s), uint8 array(s)) for
        `targets` (None: the predicted class; an int; one per image). Outside `with`, sets up and tears down."""
        if self._backbone is None:
            with self:
                return self(images, targets)
        use = self._use
        return explain_images(self, self._backbone, images, targets, postprocess=use["postprocess"],
                              seed=use["seed"], batch_size=use["batch_size"])

    def setup(self, backbone: Backbone, seed: int = 0) -> None:
        """Called once per evaluation before the first batch."""

    def teardown(self) -> None:
        """Called once after the last batch (release hooks, caches)."""

    def explain(self, batch: Batch):
        raise NotImplementedError

    def describe(self) -> dict:
        """The method part of a result record: enough to re-create this exact method."""
        out = {"name": self.name, "source": self.source, "version": self.version, "config": dict(self.config),
               "needs": sorted(self.needs), "reference": self.reference, "family": self.family}
        out.update({k: dict(v) for k, v in (("code", self.code), ("package", self.package)) if v})
        return out
