"""Benchmark: stackbench's saliency passes vs the paper's usage of pytorch-grad-cam.

Reference (the paper's usage): one pytorch-grad-cam object per method, built and called with its defaults
(targets=None: the top-1 class), for GradCAM, GradCAM++, XGradCAM, AblationCAM, EigenCAM, HiResCAM, ScoreCAM.
Ours: what `stackbench evaluate` runs per batch for the same methods on the same images and model: the
Backbone set-up, one shared forward (+ head-only backward) for the gradient CAMs, head-only AblationCAM,
batched ScoreCAM, and the gradcam-lib post-processing. Both sides (and the forward that is the unit of a
forward-equivalent) are given the normalised images: input preparation is timed on neither. mu is compared per image.

    python benchmarks/bench_evaluate.py --model minivgg-masked@random --images 8
    python benchmarks/bench_evaluate.py --model vgg16-masked@random --images 2 --slow-images 1
    python benchmarks/bench_evaluate.py --model minivit-masked@random --images 8   (pytorch-grad-cam's ViT usage)
    python benchmarks/bench_evaluate.py --model minivit-masked@random --costs ScoreCAM,AttentionRollout,...
    python benchmarks/bench_evaluate.py --whole --images 48 --rounds 3

--slow-images: images for ScoreCAM and AblationCAM (the library costs ~100 s per image each on VGG16/CPU).
--whole: whole processes on a mini STACK-MIX of --images images, in alternating rounds (median): the paper's usage
(a Python process: load the model and images, one pytorch-grad-cam object per method with its defaults, mu the
paper's way) against `stackbench evaluate --axes none` (the paper's protocol: mu and its companions, records, rows,
overlay figure) and against `stackbench evaluate` (the board's measurement: every axis on every image).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

SIX = ["GradCAM", "GradCAM++", "XGradCAM", "AblationCAM", "EigenCAM", "HiResCAM"]
# The methods that read only the target layer's activations and gradients: one shared pass serves them all.
SHARED = ["GradCAM", "GradCAM++", "XGradCAM", "HiResCAM", "LayerCAM", "EigenCAM"]
SLOW = {"AblationCAM", "ScoreCAM"}


def library_classes():
    import pytorch_grad_cam as L

    return {"GradCAM": L.GradCAM, "GradCAM++": L.GradCAMPlusPlus, "XGradCAM": L.XGradCAM,
            "AblationCAM": L.AblationCAM, "EigenCAM": L.EigenCAM, "HiResCAM": L.HiResCAM, "ScoreCAM": L.ScoreCAM}


def images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 224, 224, generator=g)
    x[:, :, :100, 40:180] = torch.rand(n, 3, 1, 1, generator=g)  # an object-like flat patch on top
    return x


def vit_usage(net, name) -> dict:
    """pytorch-grad-cam's ViT usage: the token grid without the class token, and AblationLayerVit."""
    if getattr(net, "arch", None) != "vit":
        return {}
    from pytorch_grad_cam.ablation_layer import AblationLayerVit

    return {"reshape_transform": net.reshape_transform,
            **({"ablation_layer": AblationLayerVit()} if name == "AblationCAM" else {})}


def reference(net, x, name):
    cls = library_classes()[name]
    t0 = time.perf_counter()
    cam = cls(model=net, target_layers=[net.target_layer], **vit_usage(net, name))
    with contextlib.redirect_stderr(io.StringIO()):  # the library's tqdm bars
        maps = cam(input_tensor=x, targets=None)
    dt = time.perf_counter() - t0
    ag = cam.activations_and_grads
    for h in ag.handles:
        h.remove()
    ag.handles, ag.activations, ag.gradients = [], [], []
    for p in net.parameters():
        p.grad = None
    return maps, dt


def ours(net, x, names):
    """Times for `names` run together the way the harness does, and the post-processed maps."""
    from stackbench import metrics as M
    from stackbench.methods import Batch, backbone_for, get_method
    from stackbench.methods.passes import shared_pass

    xn = normalized(x)  # untimed, as for the reference and the forward unit: input preparation, not a method's cost
    t0 = time.perf_counter()
    bb = backbone_for(net)
    methods = [get_method(n) for n in names]
    for m in methods:
        m.setup(bb)
    need_grads = any("gradients" in m.needs for m in methods)
    logits, t, A, G, extra = shared_pass(bb, xn, "predicted", None, need_grads)
    batch = Batch(x=xn, x01=x, targets=t, logits=logits, index=list(range(len(x))), ids=[str(i) for i in range(len(x))],
                  backbone=bb, activations=A, gradients=G, extra=extra)
    out = {m.name: M.postprocess(m.explain(batch)) for m in methods}
    return out, time.perf_counter() - t0


def normalized(x: torch.Tensor) -> torch.Tensor:
    """The model's input: ImageNet-normalised images (what both sides are given)."""
    from stackbench.methods import Backbone

    return (x - torch.tensor(Backbone.MEAN).view(1, 3, 1, 1)) / torch.tensor(Backbone.STD).view(1, 3, 1, 1)


def forward_seconds(net, x, repeat: int) -> float:
    """Seconds of one plain forward of the batch (no graph): the unit of a forward-equivalent."""
    xn = normalized(x)
    with torch.no_grad():
        net(xn)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            net(xn)
            times.append(time.perf_counter() - t0)
    return min(times)


def costs(net, x, names, repeat: int) -> None:
    """Each method alone as the harness runs it (its shared pass included), and the shared-pass family together,
    in forward-equivalents per image."""
    from stackbench.present.tables import markdown_table

    fwd = forward_seconds(net, x, repeat)
    rows = []
    # EigenCAM's per-image SVD (the library's own routine, kept for its sign convention) is timed apart as well
    for group in [SHARED, [n for n in SHARED if n != "EigenCAM"], *[[n] for n in names]]:
        t = min(ours(net, x, group)[1] for _ in range(repeat))
        label = f"{len(group)} together ({', '.join(group)})" if len(group) > 1 else group[0]
        rows.append([label, f"{t / len(x):.3f}", f"{t / fwd:.2f}"])
    print(f"one forward: {fwd / len(x):.4f} s/img")
    print(markdown_table(["methods", "s/img", "forward-equivalents"], rows))


def _args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="minivgg-masked@random")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--slow-images", type=int, default=None, help="images for ScoreCAM/AblationCAM (default --images)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3, help="timings are the best of this many runs (shared CPU)")
    ap.add_argument("--costs", default=None, metavar="M1,M2", help="also time these methods one by one, and the "
                    "shared-pass family together, in forward-equivalents per image")
    ap.add_argument("--whole", action="store_true", help="time whole processes instead (see above)")
    ap.add_argument("--rounds", type=int, default=3, help="--whole: alternating rounds (the median is shown)")
    return ap.parse_args()


# The paper's usage, as a whole process: argv = dataset folder, model, methods, images; prints the per-image mu.
PAPER_USAGE = """
import json, sys, numpy as np, torch
import pytorch_grad_cam as L
from stackbench import load_model, open_dataset
folder, model, names, n = sys.argv[1], sys.argv[2], sys.argv[3].split(","), int(sys.argv[4])
classes = {"GradCAM": L.GradCAM, "GradCAM++": L.GradCAMPlusPlus, "XGradCAM": L.XGradCAM, "AblationCAM": L.AblationCAM,
           "EigenCAM": L.EigenCAM, "HiResCAM": L.HiResCAM, "ScoreCAM": L.ScoreCAM}
net, ds = load_model(model), open_dataset(folder)
mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
x = torch.stack([torch.from_numpy(np.asarray(ds[i]["image"].convert("RGB"), dtype=np.float32)).permute(2, 0, 1) / 255
                 for i in range(n)])
x = (x - mean) / std
mu = {}
for name in names:
    cam = classes[name](model=net, target_layers=[net.target_layer])
    maps = np.concatenate([cam(input_tensor=x[i:i + 8], targets=None) for i in range(0, n, 8)])
    mu[name] = (np.linalg.norm(maps[:, 170:], axis=(1, 2)) / np.linalg.norm(maps, axis=(1, 2))).tolist()
print(json.dumps(mu))
"""
GROUPS = {"six (GradCAM, ++, XGradCAM, AblationCAM, EigenCAM, HiResCAM)": SIX, "ScoreCAM": ["ScoreCAM"],
          "all seven": [*SIX, "ScoreCAM"]}


def _timed(cmd: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if r.returncode:
        sys.exit(f"{' '.join(cmd[:4])} ... failed:\n{r.stderr[-2000:]}")
    return dt, r.stdout


def whole(args) -> None:
    """Whole processes, alternating rounds: the paper's usage, `evaluate --axes none`, `evaluate` (every axis)."""
    from bench_cli import console_script

    from stackbench.present.tables import markdown_table

    sb = console_script()
    env = {**os.environ, "PYTHONWARNINGS": "ignore",
           **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    tmp = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    try:
        data = tmp / "mix"
        _timed([sb, "generate", "stack-mix", "--preset", "mini", "--num-images", str(args.images), "--out", str(data),
                "--no-progress"], env)
        times = {(g, side): [] for g in GROUPS for side in ("paper", "none", "all")}
        worst = 0.0
        for r in range(args.rounds):
            for g, names in GROUPS.items():
                dt, out = _timed([sys.executable, "-c", PAPER_USAGE, str(data), args.model, ",".join(names),
                                  str(args.images)], env)
                times[g, "paper"].append(dt)
                ref_mu = json.loads(out.strip().splitlines()[-1])
                for side in ("none", "all"):
                    res = tmp / f"r{r}-{side}"
                    shutil.rmtree(res, ignore_errors=True)
                    cmd = [sb, "evaluate", *[a for n in names for a in ("--method", n)], "--dataset", str(data),
                           "--model", args.model, "--out", str(res), "--no-progress", "--axes", side]
                    times[g, side].append(_timed(cmd, env)[0])
                    worst = max(worst, _mu_gap(res, ref_mu))
                print(f"round {r + 1}: {g}: paper {times[g, 'paper'][-1]:.2f} s, --axes none "
                      f"{times[g, 'none'][-1]:.2f} s, every axis {times[g, 'all'][-1]:.2f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{args.images} images, {args.model}, torch threads {args.threads or 'default'}; whole processes, median "
          f"of {args.rounds} alternating rounds")
    rows = [[g, f"{med[g, 'paper']:.2f}", f"{med[g, 'none']:.2f}", f"{med[g, 'paper'] / med[g, 'none']:.2f}x",
             f"{med[g, 'all']:.2f}", f"{med[g, 'paper'] / med[g, 'all']:.2f}x"] for g in GROUPS]
    print(markdown_table(["methods", "paper's usage s", "evaluate --axes none s", "speed-up",
                          "evaluate (every axis) s", "speed-up"], rows))
    print(f"max |mu_ours - mu_paper| over images where the paper's mu is defined: {worst:.2e}")


def _mu_gap(results: Path, ref_mu: dict) -> float:
    """The largest per-image mu difference from the paper's usage (its NaN, an all-zero map, left out)."""
    import pyarrow.parquet as pq

    gap = 0.0
    for name, ref in ref_mu.items():
        ours = [row["mu"] for row in pq.read_table(results / f"{name}.parquet").to_pylist()]
        gap = max([gap, *(abs(a - b) for a, b in zip(ours, ref, strict=True) if np.isfinite(b))])
    return gap


def reference_runs(net, x_fast, x_slow, repeat: int) -> tuple[dict, dict]:
    """(seconds, maps) per method of the paper's usage, each the best of `repeat` runs (one for a slow method
    measured on fewer images), after an untimed warm-up."""
    for name in ("GradCAM", "ScoreCAM"):
        reference(net, normalized(images(1)), name)
    ref_t, ref_maps = {}, {}
    for name in [*SIX, "ScoreCAM"]:
        xs = x_slow if name in SLOW else x_fast
        runs = [reference(net, normalized(xs), name) for _ in range(1 if name in SLOW and len(x_slow) < len(x_fast)
                                                                  else repeat)]
        ref_maps[name], ref_t[name] = runs[0][0], min(r[1] for r in runs)  # the same normalised input
    return ref_t, ref_maps


def our_runs(net, x_fast, x_slow, repeat: int) -> tuple[dict, dict]:
    """Ours, timed as the harness runs them: the non-slow methods share one pass on x_fast; each slow one runs with
    its own shared pass on x_slow (counted in full for each group). (seconds per group, maps per method)."""

    def best(x, names):
        runs = [ours(net, x, names) for _ in range(repeat)]
        return runs[0][0], min(r[1] for r in runs)

    out_fast, t_fast = best(x_fast, [n for n in SIX if n not in SLOW])
    out_abl, t_abl = best(x_slow, ["AblationCAM"])
    out_sc, t_sc = best(x_slow, ["ScoreCAM"])
    return {"fast": t_fast, "AblationCAM": t_abl, "ScoreCAM": t_sc}, {**out_fast, **out_abl, **out_sc}


def main():
    args = _args()
    warnings.filterwarnings("ignore")
    if args.whole:
        return whole(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    from stackbench import metrics as M
    from stackbench.models import load_model
    from stackbench.present.tables import markdown_table

    net = load_model(args.model)
    n_fast, n_slow = args.images, args.slow_images or args.images
    x_fast, x_slow = images(n_fast), images(n_slow)
    print(f"model {net.ref}; {n_fast} images (ScoreCAM, AblationCAM: {n_slow}); "
          f"torch threads {torch.get_num_threads()}")
    ours(net, images(1), [*SIX, "ScoreCAM"])  # warm-up (allocator, oneDNN kernels for each shape), not timed
    ref_t, ref_maps = reference_runs(net, x_fast, x_slow, args.repeat)
    our_t, our_maps = our_runs(net, x_fast, x_slow, args.repeat)

    def per_img(seconds, name):
        return seconds / (n_slow if name in SLOW else n_fast)

    print(f"{'method':12s} {'reference s/img':>16s} {'max |dmu|':>10s}")
    worst = 0.0
    for name in [*SIX, "ScoreCAM"]:
        d = float(np.nanmax(np.abs(M.mu(our_maps[name]) - M.mu(ref_maps[name]))))
        worst = max(worst, d)
        print(f"{name:12s} {per_img(ref_t[name], name):16.3f} {d:10.2e}")
    # per-image seconds, so groups measured on different image counts add up
    ref_six = sum(per_img(ref_t[n], n) for n in SIX)
    our_six = our_t["fast"] / n_fast + our_t["AblationCAM"] / n_slow
    ref_sc, our_sc = ref_t["ScoreCAM"] / n_slow, our_t["ScoreCAM"] / n_slow
    ref_all, our_all = ref_six + ref_sc, our_six + our_sc
    print()
    print(markdown_table(["methods", "reference s/img", "stackbench s/img", "speed-up"], [
        ["six (GradCAM, ++, XGradCAM, AblationCAM, EigenCAM, HiResCAM)", f"{ref_six:.3f}", f"{our_six:.3f}",
         f"{ref_six / our_six:.1f}x"],
        ["ScoreCAM", f"{ref_sc:.3f}", f"{our_sc:.3f}", f"{ref_sc / our_sc:.2f}x"],
        ["all seven", f"{ref_all:.3f}", f"{our_all:.3f}", f"{ref_all / our_all:.2f}x"]]))
    print(f"max |mu_ours - mu_reference| over images and methods: {worst:.2e} (goal <= 1e-4)")
    if args.costs:
        print()
        costs(net, x_fast, args.costs.split(","), args.repeat)

if __name__ == "__main__":
    main()
