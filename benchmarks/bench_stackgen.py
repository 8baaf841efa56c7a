"""Seconds per image: regional STACK-GEN generation vs the plain StableDiffusionPipeline call.

Same pipeline (SD-1.5 shapes, random weights: the cost does not depend on weight values), same size,
steps, guidance and batch. Goal: regional <= 1.5x the plain pipeline per image at 512 px, 30 steps.

    python benchmarks/bench_stackgen.py                       # CUDA if present (fp16), else CPU (fp32)
    python benchmarks/bench_stackgen.py --size 128 --steps 4  # a CPU-sized run
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from stackbench.generate.pipelines import random_pipeline
from stackbench.generate.regional import Layout, generate_regional
from stackbench.refs import pick_device
from stackbench.wall import Wall


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="sd15", choices=["sd15", "tiny"])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    device = pick_device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    t0 = time.perf_counter()
    pipe = random_pipeline(args.model, seed=0, dtype=dtype).to(device)
    build_s = time.perf_counter() - t0
    B, H = args.batch, args.size
    layout = Layout.for_wall(H, H, Wall().rows_at(H).start)
    prompts = dict(scene=["a photo of grass"] * B, top=["a photo of the dog"] * B, bottom=["a photo of the dog"] * B,
                   negative=["blurry"] * B)

    def plain(steps):
        gens = [torch.Generator(device).manual_seed(i) for i in range(B)]
        return pipe(prompt=prompts["top"], negative_prompt=prompts["negative"], height=H, width=H,
                    num_inference_steps=steps, generator=gens, output_type="np").images

    def regional(steps):
        return generate_regional(pipe, layout, prompts["scene"], prompts["top"], prompts["bottom"],
                                 prompts["negative"], seeds=list(range(B)), steps=steps, output_type="np")

    results = {}
    for name, fn in (("plain", plain), ("regional", regional)):
        fn(2)  # warm-up: kernels, caches
        times = []
        for _ in range(args.repeats):
            sync(device)
            t = time.perf_counter()
            fn(args.steps)
            sync(device)
            times.append((time.perf_counter() - t) / B)
        results[name] = min(times)
        print(f"{name:9s} {results[name]:.3f} s/image (best of {args.repeats}; all {[round(x, 3) for x in times]})")
    ratio = results["regional"] / results["plain"]
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"regional / plain = {ratio:.2f}x  [{args.model} {H}px, {args.steps} steps, batch {B}, {dtype}, {gpu}; "
          f"pipeline built in {build_s:.0f}s]  goal <= 1.5x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**vars(args), "device": gpu, "dtype": str(dtype), **results, "ratio": ratio}, f, indent=2)


if __name__ == "__main__":
    main()
