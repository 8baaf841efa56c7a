"""One pass of the methods over one batch on one view of the model (the walled model as it is, re-oriented
behind a hidden wall, or re-initialised): the shared forward (and head-only backward), each method's maps
checked and post-processed as the metric defines, an empty map scored by `metrics.EMPTY_RULE`.

The harness (`stackbench.evaluate`) runs these passes per batch; the axes (`stackbench.axes`) score them.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .. import metrics as M
from ..errors import StackbenchError, foreign_failure
from .backbone import Backbone, Batch


class MethodFailure(Exception):
    def __init__(self, reason: str, item: str):
        super().__init__(reason)
        self.reason, self.item = reason, item


def choose_targets(logits: torch.Tensor, rule: str, labels) -> torch.Tensor:
    if rule == "predicted":
        return logits.detach().argmax(dim=1)
    return torch.as_tensor(labels, dtype=torch.long, device=logits.device)


def shared_pass(backbone: Backbone, x: torch.Tensor, rule: str, labels, need_grads: bool, targets=None):
    """The backbone's shared pass (one forward to the target layer and, if needed, one backward through what
    follows it). `targets` fixes the explained classes (another view explains the same class as the model as it
    is); else `rule` picks them. Returns (logits, targets, activations, gradients or None, extra)."""
    pick = (lambda logits: targets.to(logits.device)) if targets is not None else (
        lambda logits: choose_targets(logits, rule, labels))
    return backbone.shared(x, pick, need_grads)


def make_batch(backbone: Backbone, x01: torch.Tensor, rule: str, labels, index, ids, seed: int, need_grads: bool,
               clock: dict, targets=None) -> Batch:
    """The Batch the methods see on `backbone`; the shared pass's seconds go to `clock` (forward / backward)."""
    x01 = x01.to(backbone.device)
    x = backbone.normalize(x01)
    t0 = time.perf_counter()
    logits, t, A, G, extra = shared_pass(backbone, x, rule, labels, need_grads, targets)
    clock["forward" if G is None else "backward"] += time.perf_counter() - t0
    return Batch(x=x, x01=x01, targets=t, logits=logits, index=list(index), ids=list(ids), backbone=backbone,
                 activations=A, gradients=G, seed=seed, extra=extra)


def as_array(out) -> np.ndarray:
    """A method's output as a numpy array: a floating-point tensor (as float32) or array; MethodFailure else."""
    if isinstance(out, torch.Tensor):
        if not (out.is_floating_point()):
            raise MethodFailure(f"returned dtype {out.dtype}, expected a floating-point map", "")
        return out.detach().float().cpu().numpy()
    if isinstance(out, np.ndarray):
        if not np.issubdtype(out.dtype, np.floating):
            raise MethodFailure(f"returned dtype {out.dtype}, expected a floating-point map", "")
        return out if out.dtype.name in ("float16", "float32", "float64") else out.astype(np.float64)
    raise MethodFailure(f"returned a {type(out).__name__}, expected a tensor or array (N, h, w)", "")


def check_maps(out, n: int, shapes=()) -> np.ndarray:
    """A method's output -> float32 numpy (n, h, w), or MethodFailure naming the first offending item. `shapes`:
    the (h, w) a map may have (the target layer's grid, the input size); anything else is not stretched to fit."""
    out = as_array(out)
    if out.ndim != 3 or out.shape[0] != n or min(out.shape[1:]) < 1:
        raise MethodFailure(f"returned shape {tuple(out.shape)}, expected ({n}, h, w)", "")
    if shapes and tuple(out.shape[1:]) not in [tuple(s) for s in shapes]:
        allowed = " or ".join(f"({n}, {h}, {w})" for h, w in shapes)
        raise MethodFailure(f"returned maps of shape {tuple(out.shape)}; a map is the target layer's grid or the "
                            f"input size: {allowed}", "")
    bad = ~np.isfinite(out).all(axis=(1, 2))
    if bad.any():
        i = int(np.argmax(bad))
        raise MethodFailure("returned NaN or inf", str(i))
    return out.astype(np.float32, copy=False)


def scored_maps(method, batch: Batch, shapes, postprocess: str, size) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) float32 maps as the metric scores them (post-processed, an empty map replaced by the uniform
    one) and the (N,) empty mask. A method's failure, SystemExit included, is a MethodFailure; a real Ctrl-C
    propagates."""
    try:
        out = method.explain(batch.copy())  # a method that writes into its batch changes nothing for the others
    except MethodFailure:
        raise
    except BaseException as e:
        reason = foreign_failure(e)
        if reason is None:  # the user's Ctrl-C
            raise
        raise MethodFailure(f"raised {reason}", "0") from None
    return score_output(out, len(batch.ids), shapes, postprocess, size)


def score_output(out, n: int, shapes, postprocess: str, size) -> tuple[np.ndarray, np.ndarray]:
    """A method's output for n images, checked and post-processed as the metric scores it: (maps, empty)."""
    return M.fill_empty(M.postprocess(check_maps(out, n, shapes), postprocess, size))


def as_images(images, size: tuple[int, int]) -> torch.Tensor:
    """What a user hands `explain` -> float32 (N, 3, H, W) in [0, 1]: a tensor (N, 3, H, W) or (3, H, W) in [0, 1]
    (ToTensor's output, not normalised: the backbone normalises), PIL images, uint8 (H, W, 3) arrays (or an
    (N, H, W, 3) batch), or a list."""
    from PIL import Image

    if isinstance(images, np.ndarray) and images.ndim == 4:  # a batch of uint8 (H, W, 3) arrays
        images = list(images)
    if isinstance(images, (Image.Image, np.ndarray)) or (isinstance(images, torch.Tensor) and images.ndim == 3):
        images = [images]
    if not isinstance(images, (list, tuple, torch.Tensor)) and not hasattr(images, "__next__"):
        raise StackbenchError(f"images: got {type(images).__name__}; expected a tensor (N, 3, H, W) or (3, H, W) in "
                              "[0, 1], PIL images or uint8 (H, W, 3) arrays, or a list of them")
    parts = []
    for im in images:
        if isinstance(im, Image.Image):
            im = np.asarray(im.convert("RGB"))
        if isinstance(im, np.ndarray):
            if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
                raise StackbenchError(f"image array of dtype {im.dtype}, shape {im.shape}: expected uint8 (H, W, 3); "
                                      "or give a float tensor (3, H, W) in [0, 1]")
            im = torch.from_numpy(im.copy()).permute(2, 0, 1)
        if isinstance(im, torch.Tensor) and im.dtype == torch.uint8:  # read_image's output: 0..255
            im = im.float() / 255
        if not isinstance(im, torch.Tensor) or im.ndim not in (3, 4) or im.shape[-3] != 3:
            raise StackbenchError(f"images: got {type(im).__name__} {tuple(getattr(im, 'shape', ()))}; expected a "
                                  "tensor (N, 3, H, W) or (3, H, W) in [0, 1], PIL images or uint8 (H, W, 3) arrays")
        if tuple(im.shape[-2:]) != tuple(size):
            raise StackbenchError(f"image {len(parts)} is {tuple(im.shape[-2:])} px; the model's wall is drawn for "
                                  f"{tuple(size)}: resize it to {size[0]}x{size[1]} first")
        parts.append(im.detach().float().cpu().reshape(-1, *im.shape[-3:]))
    x = torch.cat(parts) if parts else torch.empty(0, 3, *size)
    if not len(x):
        raise StackbenchError("images: none given (an empty list or batch); give at least one image")
    if not torch.isfinite(x).all():
        raise StackbenchError(f"images: {int((~torch.isfinite(x)).sum())} values are NaN or infinite; give finite "
                              "values in [0, 1]")
    if x.min() < 0 or x.max() > 1:
        raise StackbenchError("images must be in [0, 1] (ToTensor's output); these look normalised or unscaled: "
                              "stackbench normalises them itself")
    return x


def _targets(targets, n: int) -> torch.Tensor:
    """None-free class indices: one int for every image, or one per image; anything else is one clear error."""
    try:
        t = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets)
        ok = t.dtype.kind in "iu"  # not floats (0.5 is no class), strings, None or bools
    except (TypeError, ValueError):
        ok = False
    if not ok or t.ndim > 1:
        raise StackbenchError(f"targets {targets!r:.60}: class indices (one int, or one per image), or None for the "
                              "predicted class")
    t = torch.from_numpy(t.astype(np.int64).reshape(-1))
    return t.expand(n) if t.numel() == 1 and np.ndim(targets) == 0 else t


def explain_images(method, backbone: Backbone, images, targets=None, *, postprocess: str = "gradcam-lib",
                   seed: int = 0, batch_size: int = 16) -> np.ndarray:
    """`method` (set up on `backbone`) over `images` in batches, through the harness's own shared pass: (N, H, W)
    float32 maps post-processed as the metric scores them (an empty map is the uniform one)."""
    size = tuple(backbone._wall.input_size)
    x01 = as_images(images, size)
    n = len(x01)
    if targets is not None:
        targets = _targets(targets, n)
        if len(targets) != n:
            raise StackbenchError(f"targets: {len(targets)} given for {n} images; give one per image, one int, or None")
        k = backbone.model.num_classes
        if len(targets) and not (0 <= int(targets.min()) and int(targets.max()) < k):
            raise StackbenchError(f"targets {targets.tolist()[:8]}: a class index from 0 to {k - 1} (the model's "
                                  f"{k} classes), or None for the predicted class")
    need_grads = "gradients" in method.needs
    shapes = (tuple(backbone._wall.grid), size)
    out, clock = [], {"forward": 0.0, "backward": 0.0}
    for i in range(0, n, batch_size):
        index = list(range(i, min(n, i + batch_size)))
        batch = make_batch(backbone, x01[index], "predicted", None, index, [str(j) for j in index], seed,
                           need_grads, clock, targets=None if targets is None else targets[index])
        try:
            maps, _ = scored_maps(method, batch, shapes, postprocess, size)
        except MethodFailure as e:
            raise StackbenchError(f"method {method.name} {e.reason} (image {index[0] + int(e.item or 0)})") from None
        out.append(maps)
    return np.concatenate(out) if out else np.empty((0, *size), np.float32)
