"""Benchmark: the cost of each board axis for the gradient family, in forward-equivalents per image.

Reference: one full forward of the walled model on the same batch (the unit "forward-equivalent"). For
GradCAM on the same images, in alternating rounds, it times what `stackbench evaluate` adds per axis:
  main        the method on the model as it is: shared forward + head-only backward, post-processing, mu
  hidden      the same on the re-oriented model (mu behind a hidden wall)
  random      the same on the re-initialised model, the rank correlation and the SSIM
  deletion    the constant-fill deletion curve: the two shared ends plus K - 1 forwards through the 176 seen rows
  road        MoRF and LeRF with ROAD's fill (the ends shared with deletion): 2 (K - 1) fills and forwards
The goal (issue "The board ranks explanations, not masks"): every axis together (hidden + random + deletion +
road) at most 10 forward-equivalents per image and method.

    python benchmarks/bench_axes.py --images 16 --rounds 3
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

from stackbench import metrics as M
from stackbench.axes import Axes, Views, deletion_curves, deletion_ends
from stackbench.methods import get_method
from stackbench.methods.passes import make_batch, scored_maps
from stackbench.models import load_model
from stackbench.wall import apply, inverse


def parts(model: str, n: int) -> dict:
    """{part: callable} timing one batch of `n` random images through `model`, GradCAM on every view."""
    net = load_model(model, seed=0).eval()
    wall, axes = net.wall, Axes()
    views = Views(net, 0)
    x01 = torch.rand(n, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    idx, ids = list(range(n)), [str(i) for i in range(n)]
    shapes, size = (tuple(wall.grid), (224, 224)), (224, 224)
    clock = {"forward": 0.0, "backward": 0.0}
    inst = {v: get_method("GradCAM") for v in ("canonical", "rot90", "random")}
    for v, m in inst.items():
        m.setup(views.backbone(v))
    canon = views.backbone("canonical")

    def explain(view, x, targets=None):
        b = make_batch(views.backbone(view), x, "predicted", None, idx, ids, 0, True, clock, targets=targets)
        return b, scored_maps(inst[view], b, shapes, "gradcam-lib", size)[0]

    b, maps = explain("canonical", x01)
    cells = wall.read_cells().numpy()

    def random(other):
        return M.rank_correlation(maps, other, cells), M.structural_similarity(maps, other, cells)

    def forward():
        with torch.inference_mode():
            net(canon.normalize(x01))

    def curves(only):  # one kind of curve: the other's steps set to 1 (its ends only, shared)
        ends = deletion_ends(canon, b.x, b.targets, wall.seen_mask()) if only == "deletion" else both_ends
        kept = replace(axes, road_steps=1) if only == "deletion" else replace(axes, deletion_steps=1)
        deletion_curves(canon, b.x, maps, b.targets, wall.seen_mask(), kept, 0, idx, ends)

    both_ends = deletion_ends(canon, b.x, b.targets, wall.seen_mask())

    return {"forward (reference)": forward,
            "main": lambda: M.per_image(explain("canonical", x01)[1], wall.dead_from),
            "hidden": lambda: M.mu(apply(explain("rot90", apply(x01, "rot90"), b.targets)[1], inverse("rot90")),
                                   wall.dead_from),
            "random": lambda: random(explain("random", x01, b.targets)[1]),
            "deletion": lambda: curves("deletion"), "road": lambda: curves("road")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="minivgg-masked")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    fns = parts(args.model, args.images)
    times = {k: [] for k in fns}
    for _ in range(args.rounds):  # alternating rounds: machine noise hits every part alike
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    unit = med["forward (reference)"]
    print(f"model {args.model}, {args.images} images, {args.rounds} rounds, torch threads {torch.get_num_threads()}")
    print(f"{'part':22s} {'ms/image':>9s} {'forward-equivalents':>20s}")
    for k, v in med.items():
        print(f"{k:22s} {1000 * v / args.images:9.2f} {v / unit:20.2f}")
    new = sum(med[k] for k in ("hidden", "random", "deletion", "road")) / unit
    print(f"every axis together: {new:.2f} forward-equivalents per image and method (goal: at most 10)")


if __name__ == "__main__":
    main()
