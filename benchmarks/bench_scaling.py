"""Benchmark: evaluation at scale, as whole `stackbench evaluate` processes on the mini STACK-MIX.

Two questions, each answered in alternating rounds (the median shown), so machine noise hits both sides alike:
  processes   `--num-proc N` (one thread each) against one process with N threads, per kind of work: the
              shared-pass CAMs (mu alone), the same with the board's axes, ScoreCAM, Opti-CAM. Prints the ratio.
  images      time against images (e.g. 100 and 1,000) and processes, for a board measurement of --methods; a
              straight-line fit (fixed start-up + seconds per image) extrapolates to 10,000 and 50,000 images.

    python benchmarks/bench_scaling.py processes --images 100 --rounds 2
    python benchmarks/bench_scaling.py images --sizes 100,1000 --methods GradCAM,ScoreCAM --procs 1,2
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KINDS = {
    "shared-pass CAMs, mu alone": (["GradCAM", "GradCAM++", "XGradCAM", "HiResCAM", "LayerCAM", "EigenCAM"], "none"),
    "shared-pass CAMs, every axis": (["GradCAM", "GradCAM++", "XGradCAM", "HiResCAM", "LayerCAM", "EigenCAM"], "all"),
    "ScoreCAM, mu alone": (["ScoreCAM"], "none"),
    "Opti-CAM, mu alone": (["Opti-CAM"], "none"),
}


def _run(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(f"{' '.join(cmd[:6])} ... failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - t0


def _evaluate(sb: str, data: Path, out: Path, methods, axes: str, procs: int, threads: int, model: str) -> float:
    """One whole `stackbench evaluate` into a fresh folder: `procs` processes sharing `threads` threads."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(threads)}
    return _run([sb, "evaluate", *[a for m in methods for a in ("--method", m)], "--dataset", str(data), "--model",
                 model, "--axes", axes, "--num-proc", str(procs), "--out", str(out), "--no-progress"], env)


def _data(sb: str, tmp: Path, n: int) -> Path:
    folder = tmp / f"mix-{n}"
    if not folder.is_dir():
        _run([sb, "generate", "stack-mix", "--preset", "mini", "--num-images", str(n), "--out", str(folder),
              "--no-progress"], {**os.environ})
    return folder


def processes(args, sb: str, tmp: Path) -> None:
    from stackbench.present.tables import markdown_table

    data = _data(sb, tmp, args.images)
    times = {(k, side): [] for k in KINDS for side in ("threads", "procs")}
    for r in range(args.rounds):
        for kind, (methods, axes) in KINDS.items():
            sides = ("threads", "procs") if r % 2 == 0 else ("procs", "threads")
            for side in sides:
                procs = args.cores if side == "procs" else 1
                times[kind, side].append(_evaluate(sb, data, tmp / "out", methods, axes, procs, args.cores,
                                                   args.model))
            print(f"round {r + 1}: {kind}: 1 process x {args.cores} threads {times[kind, 'threads'][-1]:.1f} s, "
                  f"{args.cores} processes x 1 thread {times[kind, 'procs'][-1]:.1f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{args.images} images, {args.model}; whole processes, median of {args.rounds} alternating rounds")
    print(markdown_table(["work", f"1 process, {args.cores} threads s", f"--num-proc {args.cores} s",
                          "processes / threads"],
                         [[k, f"{med[k, 'threads']:.1f}", f"{med[k, 'procs']:.1f}",
                           f"{med[k, 'procs'] / med[k, 'threads']:.2f}"] for k in KINDS]))


def images(args, sb: str, tmp: Path) -> None:
    from stackbench.present.tables import markdown_table

    sizes = [int(s) for s in args.sizes.split(",")]
    procs = [int(p) for p in args.procs.split(",")]
    methods = args.methods.split(",")
    data = {n: _data(sb, tmp, n) for n in sizes}
    seconds = {}
    for n in sizes:
        for p in (procs if n == sizes[0] else list(reversed(procs))):
            seconds[n, p] = _evaluate(sb, data[n], tmp / "out", methods, args.axes, p, args.cores, args.model)
            print(f"{n} images, {p} process(es): {seconds[n, p]:.1f} s", flush=True)
    rows = []
    for p in procs:
        (n0, n1) = sizes[0], sizes[-1]
        per = (seconds[n1, p] - seconds[n0, p]) / (n1 - n0)  # the straight line through the two ends
        fixed = seconds[n0, p] - per * n0
        rows.append([str(p), *[f"{seconds[n, p]:.0f}" for n in sizes],
                     *[f"~{(fixed + per * n) / 60:.0f} min" for n in (10_000, 50_000)], f"{per:.3f}"])
    print(f"\n{', '.join(methods)} ({'every axis' if args.axes == 'all' else 'mu alone'}), {args.model}, "
          f"{args.cores} CPU threads in all; whole processes")
    print(markdown_table(["processes", *[f"{n:,} images s" for n in sizes], "10,000 (fit)", "50,000 (fit)",
                          "s per image (fit)"], rows))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["processes", "images"])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--model", default="minivgg-masked")
    ap.add_argument("--sizes", default="100,1000")
    ap.add_argument("--procs", default="1,2")
    ap.add_argument("--methods", default="GradCAM,ScoreCAM")
    ap.add_argument("--axes", default="all", choices=["all", "none"])
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_cli import console_script

    tmp = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    try:
        (processes if args.what == "processes" else images)(args, console_script(), tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
