"""Seed the mini track: submit every built-in method with `stackbench submit`, then render the board.

    python scripts/seed_leaderboard.py [--replace] [--only GradCAM,HiResCAM]

Each method is one `stackbench.leaderboard.submit` (the same code as the CLI); a failing method is reported and
the others go on. The rows land in leaderboard/results/mini/; commit them with the rendered board.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from stackbench import leaderboard as lb
from stackbench.errors import StackbenchError
from stackbench.methods import list_methods

STORE = Path(__file__).resolve().parent.parent / "leaderboard"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replace", action="store_true")
    ap.add_argument("--only", default=None, help="comma-separated method names")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list_methods()
    failed = []
    for name in names:
        t0 = time.perf_counter()
        try:
            lb.submit(name, "mini", author="stackbench", description="built-in method, seeded by the maintainers",
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
