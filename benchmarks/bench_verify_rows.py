"""Benchmark: `leaderboard verify --track mini`'s re-runs with methods in workers, against the same re-runs in an
older stackbench where methods ran in the scoring process, row by row.

Each side is one long-running process (as a verify run is) holding its own stackbench and its own dataset cache;
the two take turns on every stored row of the track (who goes first alternates), so a slow minute of a shared
machine falls on both. It prints each row's two times and the totals, with and without the first row (which pays
each side's one-time start: dataset checks, imports, the forkserver). The reference is a checkout of the last
commit with in-process methods:

    git worktree add /tmp/inprocess bc0c07e
    python benchmarks/bench_verify_rows.py --reference /tmp/inprocess [--rows GradCAM,ScoreCAM]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def serve(rows: list[str]) -> None:
    """One side: re-run each row named on stdin, answer '<seconds> <verdict>'."""
    import stackbench
    from stackbench.leaderboard import checks
    from stackbench.leaderboard.tracks import load_tracks

    store = Path(stackbench.__file__).resolve().parents[1] / "leaderboard"
    tracks = load_tracks(store)
    try:
        from stackbench.isolation import worker_pool

        names = [json.loads((store / "results" / r).read_text())["method"]["name"] for r in rows]
        pool = worker_pool(names)
    except ImportError:  # the reference: no workers
        pool = contextlib.nullcontext()
    with pool:
        print("ready", flush=True)
        for line in sys.stdin:
            t0 = time.perf_counter()
            v = checks.verify_row(store, store / "results" / line.strip(), tracks, True, "cpu", False, ())
            print(f"{time.perf_counter() - t0:.3f} {v.status}", flush=True)


def side(src: Path, rows: list[str], cache: Path):
    env = {**os.environ, "PYTHONPATH": str(src), "STACKBENCH_CACHE": str(cache)}
    p = subprocess.Popen([sys.executable, str(HERE), "--serve", *rows], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, env=env, cwd=tempfile.gettempdir())
    if p.stdout.readline().strip() != "ready":
        raise SystemExit(f"{src}: its side did not start")
    return p


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference", type=Path, help="a checkout whose methods run in process (required)")
    p.add_argument("--track", default="mini")
    p.add_argument("--rows", default="", help="only the rows of these methods (comma-separated)")
    p.add_argument("--serve", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve is not None:
        return serve(args.serve)
    if args.reference is None or not (args.reference / "stackbench").is_dir():
        p.error("--reference: give a checkout of stackbench whose methods run in process (git worktree add ...)")
    ours = HERE.parents[1]
    base = ours / "leaderboard" / "results"
    wanted = set(filter(None, args.rows.split(",")))
    rows = sorted(str(q.relative_to(base)) for q in (base / args.track).glob("*/*/*.json")
                  if not wanted or q.stem in wanted)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(os.environ.get("STACKBENCH_CACHE", Path.home() / ".cache" / "stackbench"))
        caches = {}
        for name in ("reference", "workers"):  # each its own: the two versions must not rewrite each other's
            caches[name] = Path(tmp) / name
            if home.is_dir():
                shutil.copytree(home, caches[name])
        sides = {"reference": side(args.reference, rows, caches["reference"]),
                 "workers": side(ours, rows, caches["workers"])}
        total = {k: [] for k in sides}
        for k, r in enumerate(rows):
            got = {}
            for name in (list(sides) if k % 2 == 0 else list(reversed(sides))):
                sides[name].stdin.write(r + "\n")
                sides[name].stdin.flush()
                secs, status = sides[name].stdout.readline().split()
                if status != "reproduced":
                    raise SystemExit(f"{name}: {r} {status}")
                got[name] = float(secs)
                total[name].append(float(secs))
            print(f"  {r:48s} in process {got['reference']:7.2f} s  workers {got['workers']:7.2f} s  "
                  f"{got['workers'] / got['reference']:.3f}", flush=True)
        for q in sides.values():
            q.stdin.close()
            q.wait()
    ref, new = total["reference"], total["workers"]
    print(f"{len(rows)} rows of the {args.track} track, every one reproduced on both sides")
    print(f"  all rows:          in process {sum(ref):.1f} s, workers {sum(new):.1f} s, "
          f"ratio {sum(new) / sum(ref):.3f}")
    if len(rows) > 1:
        print(f"  without the first: in process {sum(ref[1:]):.1f} s, workers {sum(new[1:]):.1f} s, "
              f"ratio {sum(new[1:]) / sum(ref[1:]):.3f}")


if __name__ == "__main__":
    main()
