"""The Python API: every entry point takes a reference string or the object itself.

    import stackbench
    model = stackbench.load_model("minivgg-masked")          # or any walled nn.Module
    maps = stackbench.explain(model, images, method="GradCAM")  # (N, 224, 224), post-processed
    stackbench.mu(maps, model.wall)                          # (N,) share of each map's L2 norm behind the wall

    with stackbench.get_method("HiResCAM", model) as cam:    # set up once, then call per batch
        maps = cam(images, targets=[3, 3])

`evaluate` (here, or `stackbench.evaluate.evaluate`) runs methods (names, classes or instances) on a dataset (a
folder, hf:REPO or a `datasets.Dataset`) through a model (a reference or a walled nn.Module) and writes the
records, as `stackbench evaluate` does.
"""
from __future__ import annotations

import numpy as np

from . import datafolder
from . import metrics as M
from .errors import StackbenchError
from .evaluate import evaluate
from .generate.build import build_dataset
from .methods import SaliencyMethod, list_methods, register_method
from .methods import get_method as _get_method
from .models import list_models, load_model
from .wall import Wall, apply, inverse

__all__ = ["build_dataset", "evaluate", "explain", "get_method", "list_methods", "list_models", "load_model", "mu",
           "open_dataset", "register_method", "SaliencyMethod"]


def get_method(method, model=None, **config) -> SaliencyMethod:
    """A method instance from a name, a class (a SaliencyMethod or pytorch-grad-cam BaseCAM subclass) or an
    instance; bound to `model` (an object or a reference) when one is given, ready for `with ... as cam` (an
    instance given with a model is copied first: yours keeps its own binding)."""
    return _own(method, **config).bind(model) if model is not None else _get_method(method, **config)


def _own(method, **config) -> SaliencyMethod:
    """A method instance this call may bind: a caller's instance is copied (same class and config), so its own
    binding, and any `with` it is in, are left as they are."""
    m = _get_method(method, **config)
    return type(m)(**m.config) if m is method else m


def explain(model, images, method="GradCAM", targets=None, *, postprocess: str = "gradcam-lib", seed: int = 0,
            batch_size: int = 16, **config) -> np.ndarray:
    """Maps of `images` by `method` for `model`, as the benchmark scores them: float32 (N, H, W) in [0, 1],
    post-processed by `postprocess` (`stackbench.metrics.POSTPROCESS`). `images`: a tensor (N, 3, H, W) or
    (3, H, W) in [0, 1], PIL images or uint8 arrays, at the model's input size. `targets`: None (the predicted
    class), one int, or one per image. `config`: the method's options (see `stackbench methods`)."""
    if postprocess not in M.POSTPROCESS:
        raise StackbenchError(f"postprocess {postprocess!r}: expected one of {', '.join(M.POSTPROCESS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise StackbenchError(f"batch_size {batch_size!r}: must be a whole number of at least 1")
    m = _own(method, **config)
    m.bind(model, seed=seed, postprocess=postprocess, batch_size=batch_size)
    return m(images, targets)


def mu(maps, wall=None) -> np.ndarray:
    """Per map, the share of its L2 norm behind `wall` (the paper's eq. 1; NaN for an empty map). `wall`: a
    `Wall`, a walled model (its `.wall`), or None for the paper's geometry (rows 170..223 of 224)."""
    wall = getattr(wall, "wall", wall)
    wall = Wall() if wall is None else wall
    if not isinstance(wall, Wall):
        raise StackbenchError(f"wall: got {type(wall).__name__}; give a stackbench Wall, a walled model or None")
    if not wall.dead_height:
        raise StackbenchError("this model has no wall (no pixel is behind it): mu is not defined; use a walled "
                              "model (e.g. minivgg-masked)")
    m = np.asarray(maps.detach().cpu() if hasattr(maps, "detach") else maps)
    m = m[None] if m.ndim == 2 else m
    if m.ndim != 3 or tuple(m.shape[1:]) != tuple(wall.input_size):
        raise StackbenchError(f"maps of shape {tuple(m.shape)}: expected (N, {wall.input_size[0]}, "
                              f"{wall.input_size[1]}) (or one map), the size the wall is drawn for")
    if wall.orientation != "identity":  # turn the maps so the wall is at the bottom, where eq. 1 reads it
        import torch

        m = apply(torch.from_numpy(m), inverse(wall.orientation)).numpy()
    return M.mu(m, wall.dead_from)


def open_dataset(data, allow_incomplete: bool = False):
    """A STACK dataset as a `datasets.Dataset`: a folder, hf:REPO[@REV], or a Dataset (checked, returned)."""
    return datafolder.open_dataset(data, allow_incomplete=allow_incomplete)[0]
