"""Benchmark: how fast the command line starts.

References: `python -c "import click"` (the floor: an interpreter and the CLI library) and `python -c "import
torch"` (what any command that touches a model must pay). In alternating rounds, so machine noise hits every
command alike, it times whole processes:
  --help, --version   must not import torch: goal under 0.5 s
  methods, models     import torch to list what is registered: goal at most 1.2x `import torch`

    python benchmarks/bench_cli.py --rounds 5
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def console_script() -> str:
    """The installed `stackbench` script beside this interpreter (not a pyenv shim, whose own start would count)."""
    here = Path(sys.executable).with_name("stackbench")
    found = str(here) if here.is_file() else shutil.which("stackbench")
    if not found:
        sys.exit("no `stackbench` console script found; install the package first (pip install -e .)")
    return found


def commands() -> dict[str, list[str]]:
    sb, py = console_script(), sys.executable
    return {"import click (floor)": [py, "-c", "import click"],
            "import torch (reference)": [py, "-c", "import torch"],
            "stackbench --help": [sb, "--help"],
            "stackbench --version": [sb, "--version"],
            "stackbench methods": [sb, "methods"],
            "stackbench models": [sb, "models"]}


def seconds(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    cmds = commands()
    for cmd in cmds.values():  # warm the file cache once: the first start of torch reads ~1 GB from disk
        seconds(cmd)
    times = {k: [] for k in cmds}
    for _ in range(args.rounds):  # alternating rounds: machine noise hits every command alike
        for k, cmd in cmds.items():
            times[k].append(seconds(cmd))
    med = {k: statistics.median(v) for k, v in times.items()}
    click_s, torch_s = med["import click (floor)"], med["import torch (reference)"]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"median of {args.rounds} rounds, {os.cpu_count()} CPUs, load average {load}")
    print(f"{'command':26s} {'seconds':>8s} {'x click':>8s} {'x torch':>8s}  goal")
    goals = {"stackbench --help": "< 0.5 s", "stackbench --version": "< 0.5 s",
             "stackbench methods": "<= 1.2x torch", "stackbench models": "<= 1.2x torch"}
    for k, v in med.items():
        print(f"{k:26s} {v:8.2f} {v / click_s:8.2f} {v / torch_s:8.2f}  {goals.get(k, '')}")
    fast = max(med["stackbench --help"], med["stackbench --version"])
    heavy = max(med["stackbench methods"], med["stackbench models"]) / torch_s
    print(f"--help/--version: {fast:.2f} s (goal < 0.5 s); methods/models: {heavy:.2f}x import torch (goal <= 1.2x)")


if __name__ == "__main__":
    main()
