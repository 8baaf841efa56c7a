"""Hostile saliency methods, each a plugin a submitter could send (tests/test_isolation.py runs them as
`tests/attacks.py:NAME`). Every one of them changed the numbers of the board, or stopped it, when methods ran in
the scoring process."""
import gc
import os
import signal
import socket
import time

import numpy as np
import torch

from stackbench.methods import SaliencyMethod
from stackbench.methods.gradient import GradCAM, HiResCAM


class HiResCAM15(HiResCAM):
    """The honest twin of DeletionTamper: HiResCAM's maps raised to 1.5."""

    name = "HiResCAM15"

    def explain(self, batch):
        return torch.as_tensor(super().explain(batch)).clamp(min=0) ** 1.5


class DeletionTamper(HiResCAM15):
    """Shrinks the logits the deletion curve is read from (it ranked #1 on the mini board)."""

    name = "DeletionTamper"

    def explain(self, batch):
        orig = batch.backbone.logits
        batch.backbone.logits = lambda x: orig(x) * 0.25
        return super().explain(batch)


class ScaleDense(GradCAM):
    """Scales the first dense layer's weights in place."""

    name = "ScaleDense"

    def explain(self, batch):
        dense = next(m for m in batch.backbone.model.modules() if isinstance(m, torch.nn.Linear))
        with torch.no_grad():
            dense.weight.mul_(3.0)
        return super().explain(batch)


class ClearMask(GradCAM):
    """Clears the wall's mask: any boolean buffer of the model it is handed (the walled layer's, a ViT's dead
    tokens)."""

    name = "ClearMask"
    architectures = ("vgg", "vit")

    def explain(self, batch):
        for b in batch.backbone.model.buffers():
            if b is not None and b.dtype == torch.bool:
                b.zero_()
        return super().explain(batch)


class PatchMu(GradCAM):
    """Makes every map score mu = 0."""

    name = "PatchMu"

    def explain(self, batch):
        import stackbench.metrics as M

        M.mu = lambda maps, band_from=170: np.zeros(len(maps))
        return super().explain(batch)


class ReplaceOther(HiResCAM):
    """Turns every other method's GradCAM into a constant map (and scores as HiResCAM)."""

    name = "ReplaceOther"

    def explain(self, batch):
        GradCAM.explain = lambda self, b: torch.ones(len(b.ids), 14, 14)
        return super().explain(batch)


class Sleeper(SaliencyMethod):
    name = "Sleeper"

    def explain(self, batch):
        while True:
            time.sleep(1)


class Hog(SaliencyMethod):
    """Allocates 256 MB at a time, touching every page, up to 3 GB; first lifts its own memory cap if it can."""

    name = "Hog"

    def explain(self, batch):
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_DATA, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        except (ImportError, OSError, ValueError):
            pass
        keep = []
        for _ in range(12):
            keep.append(torch.ones(256 * 2**20, dtype=torch.uint8))
            time.sleep(0.1)
        return torch.ones(len(batch.ids), 14, 14)


class Phone(SaliencyMethod):
    """Reaches for the network (an address that never answers, so it would hang without the door shut)."""

    name = "Phone"

    def explain(self, batch):
        socket.create_connection(("10.255.255.1", 9), timeout=60)
        return torch.ones(len(batch.ids), 14, 14)


class Spawner(SaliencyMethod):
    """Starts a process that would outlive the row (and could reach the network)."""

    name = "Spawner"

    def explain(self, batch):
        import subprocess

        subprocess.Popen(["sleep", "600"])
        return torch.ones(len(batch.ids), 14, 14)


class Crash(SaliencyMethod):
    name = "Crash"

    def explain(self, batch):
        os.kill(os.getpid(), signal.SIGSEGV)


class Forge(SaliencyMethod):
    """Writes a pickle that would run a command into the connection to whoever scores it."""

    name = "Forge"

    def explain(self, batch):
        from multiprocessing.connection import Connection

        marker = os.environ.get("STACKBENCH_FORGE_MARKER", "/tmp/stackbench-forged")

        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        import pickle

        for obj in gc.get_objects():
            if isinstance(obj, Connection) and not obj.closed:
                obj.send_bytes(pickle.dumps(Evil()))
        return torch.ones(len(batch.ids), 14, 14)


class Shouter(SaliencyMethod):
    """Floods its output (a CI log would fill)."""

    name = "Shouter"

    def explain(self, batch):
        for _ in range(20000):
            print("x" * 99)
        return torch.ones(len(batch.ids), 14, 14)


class Impostor(SaliencyMethod):
    """Takes a built-in's name, hoping to be scored (or stored) as it."""

    name = "GradCAM"

    def explain(self, batch):
        return torch.ones(len(batch.ids), 14, 14)


class CSleeper(SaliencyMethod):
    """Hangs inside a C call that holds Python's lock, so no Python thread of its worker can run."""

    name = "CSleeper"

    def explain(self, batch):
        import ctypes

        ctypes.PyDLL(None).sleep(600)
        return torch.ones(len(batch.ids), 14, 14)


class BadStr(SaliencyMethod):
    """Raises an exception whose message itself raises (a traceback once reached the user)."""

    name = "BadStr"

    def explain(self, batch):
        class Weird(Exception):
            def __str__(self):
                raise ValueError("str blew up")

        raise Weird()


class LateFailure(SaliencyMethod):
    """Not an attack: answers its first call of every batch and fails its second (by raising, or by sleeping past
    its limit), so the failure falls in a later pass of the same request."""

    name = "LateFailure"
    defaults = {"sleep": False}
    calls = 0  # on the class: one count for every view's instance in its worker

    def explain(self, batch):
        type(self).calls += 1
        if type(self).calls % 2 == 0:
            while self.config["sleep"]:
                time.sleep(1)
            raise ValueError("late")
        return torch.ones(len(batch.ids), 14, 14)


# ------------------------------------------------------------------------------------------------------------------
# Methods that find the wall and then show anything at all (issue "The board ranks explanations, not masks"). Each
# returns maps at the input size, zero where it believes the model cannot see.

def traced_dead(batch, projections: int = 3) -> torch.Tensor:
    """(H, W) bool: the input pixels on which no logit depends, from input gradients under random projections of
    the logits (what `stackbench wall` itself does): the model used only through forward and backward."""
    x = batch.x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = batch.backbone.model(x)
        total = torch.zeros_like(x)
        gen = torch.Generator().manual_seed(0)
        for k in range(projections):
            proj = torch.randn(out.shape[1], generator=gen)
            (g,) = torch.autograd.grad((out * proj).sum(), x, retain_graph=k < projections - 1)
            total += g.abs()
    return total.sum(dim=(0, 1)) == 0


def _upsampled(maps, size) -> torch.Tensor:
    maps = torch.as_tensor(maps, dtype=torch.float32).clamp(min=0)
    return torch.nn.functional.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


class GradTracedZeroed(GradCAM):
    """GradCAM with the gradient-traced dead zone zeroed: allowed (it uses the model only), and still an
    explanation, so it stays ranked."""

    name = "GradTracedZeroed"

    def explain(self, batch):
        size = batch.x01.shape[-2:]
        return _upsampled(super().explain(batch), size) * ~traced_dead(batch)


class HashNoiseZeroed(SaliencyMethod):
    """Noise seeded by a hash of the logits, the traced zone zeroed: zero behind every wall, explains nothing."""

    name = "HashNoiseZeroed"

    def explain(self, batch):
        import hashlib

        n, _, h, w = batch.x01.shape
        dead = traced_dead(batch)
        out = torch.empty(n, h, w)
        for j in range(n):
            seed = int(hashlib.sha256(batch.logits[j].detach().numpy().tobytes()).hexdigest()[:8], 16)
            out[j] = torch.from_numpy(np.random.default_rng(seed).random((h, w))).float()
        return out * ~dead


class ConstantSeenDetect(SaliencyMethod):
    """ConstantSeen's map with the zone found by matching the first layer's weights against the 8 orientations of
    the published minivgg-masked; a model that matches none (the re-initialised copy of the randomisation check, it
    believes) is answered with noise."""

    name = "ConstantSeenDetect"

    def explain(self, batch):
        from stackbench.models import load_model
        from stackbench.models.variants import orient
        from stackbench.wall import ORIENTATIONS

        published = load_model("minivgg-masked")
        mine = next(m for m in batch.backbone.model.modules() if isinstance(m, torch.nn.Conv2d)).weight
        n, _, h, w = batch.x01.shape
        for g in ORIENTATIONS:
            m = orient(published, g)
            if torch.allclose(m[0].weight, mine, atol=1e-6):
                type(self).matched = getattr(type(self), "matched", 0) + 1
                return (~m.wall.dead_mask().bool()).float().expand(n, h, w).clone()
        return torch.rand(n, h, w, generator=torch.Generator().manual_seed(int(batch.index[0])))


class ConstantPlusGradCAM(GradCAM):
    """A two-level constant (1 on the seen rows, 0.5 below) plus 1e-3 x GradCAM: GradCAM's rank correlation with
    the re-initialised model, a map that is almost all constant."""

    name = "ConstantPlusGradCAM"

    def explain(self, batch):
        size = batch.x01.shape[-2:]
        g = _upsampled(super().explain(batch), size)
        g = g / g.flatten(1).max(dim=1).values.clamp(min=1e-12)[:, None, None]
        base = torch.ones_like(g)
        base[:, 170:] = 0.5
        return base + 1e-3 * g
