"""One pass of the methods over one batch on one view of the model (the walled model as it is, re-oriented
behind a hidden wall, or re-initialised): the shared forward (and head-only backward), each method's maps
checked and post-processed as the metric defines, an empty map scored by `metrics.EMPTY_RULE`.

The harness (`stackbench.evaluate`) runs these passes per batch; the axes (`stackbench.axes`) score them.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from . import metrics as M
from .errors import foreign_failure
from .methods import Backbone, Batch


class MethodFailure(Exception):
    def __init__(self, reason: str, item: str):
        super().__init__(reason)
        self.reason, self.item = reason, item


def choose_targets(logits: torch.Tensor, rule: str, labels) -> torch.Tensor:
    if rule == "predicted":
        return logits.detach().argmax(dim=1)
    return torch.as_tensor(labels, dtype=torch.long, device=logits.device)


def shared_pass(backbone: Backbone, x: torch.Tensor, rule: str, labels, need_grads: bool, targets=None):
    """One forward to the target layer (and, if needed, one backward through the head only). `targets` fixes the
    explained classes (another view explains the same class as the model as it is); else `rule` picks them.
    Returns (logits, targets, activations, gradients or None)."""
    A = backbone.activations(x)
    pick = (lambda logits: targets.to(logits.device)) if targets is not None else (
        lambda logits: choose_targets(logits, rule, labels))
    if not need_grads:
        with torch.no_grad():
            logits = backbone.head(A)
        return logits, pick(logits), A, None
    with torch.enable_grad():
        leaf = A.detach().requires_grad_(True)
        logits = backbone.head(leaf)
        t = pick(logits)
        (G,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), leaf)
    return logits.detach(), t, A, G


def make_batch(backbone: Backbone, x01: torch.Tensor, rule: str, labels, index, ids, seed: int, need_grads: bool,
               clock: dict, targets=None) -> Batch:
    """The Batch the methods see on `backbone`; the shared pass's seconds go to `clock` (forward / backward)."""
    x01 = x01.to(backbone.device)
    x = backbone.normalize(x01)
    t0 = time.perf_counter()
    logits, t, A, G = shared_pass(backbone, x, rule, labels, need_grads, targets)
    clock["forward" if G is None else "backward"] += time.perf_counter() - t0
    return Batch(x=x, x01=x01, targets=t, logits=logits, index=list(index), ids=list(ids), backbone=backbone,
                 activations=A, gradients=G, seed=seed)


def check_maps(out, n: int, shapes=()) -> np.ndarray:
    """A method's output -> float32 numpy (n, h, w), or MethodFailure naming the first offending item. `shapes`:
    the (h, w) a map may have (the target layer's grid, the input size); anything else is not stretched to fit."""
    if isinstance(out, torch.Tensor):
        if not (out.is_floating_point()):
            raise MethodFailure(f"returned dtype {out.dtype}, expected a floating-point map", "")
        out = out.detach().float().cpu().numpy()
    elif isinstance(out, np.ndarray):
        if not np.issubdtype(out.dtype, np.floating):
            raise MethodFailure(f"returned dtype {out.dtype}, expected a floating-point map", "")
    else:
        raise MethodFailure(f"returned a {type(out).__name__}, expected a tensor or array (N, h, w)", "")
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
    except BaseException as e:  # noqa: BLE001 - a faulty method fails alone, even one that calls sys.exit
        reason = foreign_failure(e)
        if reason is None:  # the user's Ctrl-C
            raise
        raise MethodFailure(f"raised {reason}", "0") from None
    maps = check_maps(out, len(batch.ids), shapes)
    return M.fill_empty(M.postprocess(maps, postprocess, size))
