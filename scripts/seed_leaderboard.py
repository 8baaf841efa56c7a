"""Seed a track (mini, mini-vit): submit every built-in method that runs on its model with `stackbench submit`,
then render the board.

    python scripts/seed_leaderboard.py [--track mini-vit] [--replace] [--only GradCAM,HiResCAM]

Each method is one `stackbench.leaderboard.submit` (the same code as the CLI); a failing method is reported and
the others go on. The rows land in leaderboard/results/<track>/; commit them with the rendered board.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from stackbench import leaderboard as lb
from stackbench.errors import StackbenchError
from stackbench.methods import get_method_class, list_methods
from stackbench.models import load_model

STORE = Path(__file__).resolve().parent.parent / "leaderboard"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replace", action="store_true")
    ap.add_argument("--only", default=None, help="comma-separated method names")
    ap.add_argument("--track", default="mini", help="the track to seed (its model decides which methods run)")
    args = ap.parse_args()
    arch = getattr(load_model(lb.load_tracks(STORE)[args.track].model), "arch", "vgg")
    names = args.only.split(",") if args.only else [n for n in list_methods()
                                                     if arch in get_method_class(n).architectures]
    failed = []
    for name in names:
        t0 = time.perf_counter()
        try:
            lb.submit(name, args.track, author="stackbench", description="built-in method, seeded by the maintainers",
                      replace=args.replace, progress=False, store=STORE)
            print(f"{name}: submitted in {time.perf_counter() - t0:.0f} s", flush=True)
        except StackbenchError as e:
            print(f"{name}: FAILED: {e}", flush=True)
            failed.append(name)
    for path in lb.build(STORE):
        print(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
