"""Images/s of `stackbench train` against a plain PyTorch loop: same model, batch, optimiser, schedule,
channels_last and data already in memory. Goal on CPU: ours >= 0.9x the plain loop, data not the bottleneck.

    python benchmarks/bench_train.py                  # 320 images, batch 32, 2 epochs each (the 2nd is timed), 3 rounds
    python benchmarks/bench_train.py --n 640 --batch-size 64 --rounds 5

The two loops alternate for --rounds rounds, so a change in the machine's load hits both alike; each side's best
round counts (noise only ever slows a run down), and the per-round ratios are printed too.
"""
from __future__ import annotations

import argparse
import hashlib
import tempfile
import time

import torch
from torch.nn import functional as F

from stackbench.sources import Source, open_source
from stackbench.train import IMAGENET_MEAN, IMAGENET_STD, build_model, lr_factor, make_optimizer, preset, train


class InMemory(Source):
    """Decoded images held in memory: the train loop pays only for its transforms."""

    kind = "memory"
    always_usable = True

    def __init__(self, items, class_names, ref):
        self.items, self.class_names, self.ref, self.split = items, class_names, ref, "train"

    def __len__(self):
        return len(self.items)

    def labels(self):
        import numpy as np

        return np.array([it.label for it in self.items])

    def item_id(self, i):
        return self.items[i].id

    def load(self, i):
        return self.items[i]

    def fingerprint(self):
        return "sha256:" + hashlib.sha256(self.ref.encode()).hexdigest()


def plain_loop(cfg, x, y, epochs):
    """The reference: tensors ready, nothing but forward, backward, step (with the preset's CPU autocast)."""
    model = build_model(cfg, 10).to(memory_format=torch.channels_last).train()
    opt = make_optimizer(cfg, model)
    steps_per_epoch = -(-len(x) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s, steps_per_epoch))
    times = []
    for epoch in range(epochs):
        t = time.perf_counter()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(x), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            xb = x[idx].contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16"):
                loss = F.cross_entropy(model(xb), y[idx], label_smoothing=cfg.label_smoothing)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
        times.append(time.perf_counter() - t)
    return len(x) / times[-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers for our loop (default: 0 on CPU)")
    args = ap.parse_args()
    src = open_source(f"shapes:{max(args.n, 20)}", split="train")
    items = [src.load(i) for i in range(args.n)]
    mem = InMemory(items, src.class_names, f"memory:{args.n}")
    val = InMemory(items[:20], src.class_names, "memory:20")
    # No random crop/flip, so both loops see the same tensors; ours still converts PIL -> normalised tensor.
    cfg = preset("mini", epochs=args.epochs, batch_size=args.batch_size, crop_scale=(1.0, 1.0), hflip=False,
                 workers=args.workers)
    from torchvision import transforms as T

    to_t = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    x = torch.stack([to_t(it.image) for it in items])
    y = torch.tensor([it.label for it in items])
    plain, ours, data = [], [], []
    for _ in range(args.rounds):
        plain.append(plain_loop(cfg, x, y, args.epochs))
        with tempfile.TemporaryDirectory() as out:
            row = train(cfg, out, train_source=mem, val_source=val, progress=False)["log"][-1]
        ours.append(row["images_per_s"])
        data.append(row["data_fraction"])
    best = max(range(args.rounds), key=ours.__getitem__)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, minivgg-masked, batch {args.batch_size}, "
          f"mixed precision {cfg.mixed_precision}, {args.n} images in memory, epoch {args.epochs} timed, "
          f"{args.rounds} rounds")
    print(f"stackbench train: {max(ours):.1f} img/s (data {data[best]:.1%} of step time); rounds: "
          + ", ".join(f"{v:.1f}" for v in ours))
    print(f"plain PyTorch:    {max(plain):.1f} img/s; rounds: " + ", ".join(f"{v:.1f}" for v in plain))
    print(f"ratio:            {max(ours) / max(plain):.2f}x best/best (goal >= 0.9x); per round: "
          + ", ".join(f"{o / p:.2f}x" for o, p in zip(ours, plain, strict=True)))


if __name__ == "__main__":
    main()
