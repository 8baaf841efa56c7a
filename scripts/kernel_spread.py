"""How far every board metric of every built-in method moves between CPU kernel sets, on identical data.

    python scripts/kernel_spread.py --out spread [--sets native,avx2,baseline,threads1,opencv-scalar]
                                    [--methods GradCAM,Opti-CAM] [--track mini] [--datasets stack-mix]

Each kernel set re-runs the track's rows (every image, every axis, as `leaderboard verify` does) in its own process
with the switches of `stackbench.cpu.kernel_env` (numpy, torch, oneDNN, MKL, OpenCV one or two levels below this
machine), with one thread instead of two, or with OpenCV's optimised paths off. The datasets are generated once,
here, and shared, so only the kernels differ. Prints, per method and metric, the largest difference from the
native set over sets, datasets and the statistics the board re-checks (mean, std), and writes spread.json: the
measurement behind the re-run tolerances (`stackbench.tolerances`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SETS = ("native", "avx2", "baseline", "threads1", "opencv-scalar")


def _env(name: str) -> dict:
    from stackbench.cpu import kernel_env, lower_levels

    if name in ("native", "threads1", "opencv-scalar"):
        return {}
    if name not in lower_levels():
        return None  # this machine cannot emulate it (it is that level, or below it)
    return kernel_env(name)


def _one(name: str, out: Path, data: Path, track: str, methods: list[str], names: list[str]) -> None:
    """Runs inside the kernel set's process."""
    import torch

    if name == "threads1":
        torch.set_num_threads(1)
    if name == "opencv-scalar":
        import cv2

        cv2.setUseOptimized(False)
    from stackbench import leaderboard as lb
    from stackbench.evaluate import evaluate

    t = lb.load_tracks()[track]
    for ds in names:
        evaluate(methods, str(data / ds), t.model, target=t.target, postprocess=t.postprocess,
                 batch_size=t.batch_size, out=out / ds, seed=t.seed, progress=False, figure=False)


def _rows(folder: Path) -> dict:
    """(dataset, method) -> (record metrics, per-image rows by id)."""
    import pyarrow.parquet as pq

    got = {}
    for f in sorted(folder.glob("*/*.json")):
        rows = pq.read_table(f.with_suffix(".parquet")).to_pylist() if f.with_suffix(".parquet").is_file() else []
        got[(f.parent.name, f.stem)] = (json.loads(f.read_text())["metrics"], {r["id"]: r for r in rows})
    return got


def compare(out: Path, sets: list[str]) -> dict:
    """{method: {set: {metric: {"agg": largest |difference| of mean or std over datasets, "rms": per-image RMS
    difference}}}} against the native set."""
    base = _rows(out / "native")
    spread: dict = {}
    for s in sets[1:]:
        other = _rows(out / s)
        for (ds, method), (metrics, rows) in base.items():
            if (ds, method) not in other:
                continue
            o_metrics, o_rows = other[(ds, method)]
            for metric, agg in metrics.items():
                cell = spread.setdefault(method, {}).setdefault(s, {}).setdefault(metric, {"agg": 0.0, "rms": 0.0})
                for stat in ("mean", "std"):
                    a, b = agg.get(stat), o_metrics.get(metric, {}).get(stat)
                    if a is not None and b is not None:
                        cell["agg"] = max(cell["agg"], abs(a - b))
                d = [rows[i][metric] - o_rows[i][metric] for i in rows
                     if i in o_rows and rows[i].get(metric) is not None and o_rows[i].get(metric) is not None]
                if d:
                    cell["rms"] = max(cell["rms"], (sum(x * x for x in d) / len(d)) ** 0.5)
    return spread


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--methods", default=None)
    ap.add_argument("--track", default="mini")
    ap.add_argument("--datasets", default=None, help="comma-separated names  [default: the track's]")
    ap.add_argument("--compare-only", action="store_true", help="tabulate the sets already under --out")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    from stackbench import leaderboard as lb
    from stackbench.methods import get_method_class, list_methods
    from stackbench.models import load_model

    t = lb.load_tracks()[args.track]
    arch = getattr(load_model(t.model), "arch", "vgg")
    methods = args.methods.split(",") if args.methods else [
        n for n in list_methods() if arch in get_method_class(n).architectures]
    data = args.out / "data"
    names = args.datasets.split(",") if args.datasets else list(t.datasets)
    if args.one:
        _one(args.one, args.out / args.one, data, args.track, methods, names)
        return 0
    for ds in names:  # generated once, here: every set scores the same pixels
        if not (data / ds / "generation.json").is_file():
            from stackbench.generate.build import build_dataset

            build_dataset(ds, data / ds, preset=t.datasets[ds]["preset"], overwrite=True)
    sets = args.sets.split(",")
    for s in [] if args.compare_only else sets:
        env = _env(s)
        if env is None:
            print(f"{s}: this machine cannot emulate it; not checked", flush=True)
            continue
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--out", str(args.out), "--one", s, "--track", args.track,
                        "--methods", ",".join(methods), "--datasets", ",".join(names)], env={**os.environ, **env},
                       check=True)
        print(f"{s}: {time.perf_counter() - t0:.0f} s {env}", flush=True)
    spread = compare(args.out, [s for s in sets if (args.out / s).is_dir()])
    (args.out / "spread.json").write_text(json.dumps(spread, indent=1, sort_keys=True))
    names = ["mu", "dead_mass", "leak_rate", "mu_hidden", "deletion_auc", "rand_corr"]
    print("largest difference of a mean or std from the native set (per-image RMS difference in brackets)")
    print("| method | kernels | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for method, by_set in sorted(spread.items()):
        for s, v in by_set.items():
            print(f"| {method} | {s} | " + " | ".join(
                f"{v[m]['agg']:.1e} ({v[m]['rms']:.1e})" if m in v else "-" for m in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
