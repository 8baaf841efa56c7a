"""Benchmark: what running each method in a worker process of its own costs (stackbench.isolation).

Reference: the same evaluation with the worker's own code (`isolation.worker.Server`) called in this process: the
same hand-over of models and batches, no process boundary, no checks, no limits. In alternating rounds it runs
`evaluate` both ways on the mini STACK-MIX set (the first N images, every axis) with the shipped minivgg-masked,
checks that both give the same rows (map hashes included) and prints the time of each and the ratio. Built-ins
share one worker per job (`stackbench.isolation.pool`), so each round pays one worker's start and kernel
compilation. The issue's goal: at most 5% on the demo and the mini board.

    python benchmarks/bench_isolation.py --images 24 --rounds 2 --methods GradCAM,ScoreCAM,Opti-CAM
"""
from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import torch

from stackbench.evaluate import evaluate
from stackbench.isolation import WorkerPool, imports_of, start_server, wire
from stackbench.isolation.worker import Server
from stackbench.leaderboard.tracks import get_track


class InProcess:
    """The reference: a Session's calls answered by the worker's server in this process."""

    def __init__(self, handle, limits):
        self.server, self.models = Server(), set()
        self.server.load(0, handle.payload)

    def view(self, token, handed, seed):
        if token not in self.server.models:
            self.server.model(token, handed.skeleton, handed.numbers.clone(), handed.layout, handed.crop)
        self.models.add(token)
        self.server.view(0, token, seed)

    def explain(self, calls):
        return [self._explain(token, message) for token, message in calls]

    def _explain(self, token, message):
        ts = message["tensors"]
        layout, nbytes = wire.layout_of(ts)
        if self.server.inbox is None or self.server.inbox.numel() < nbytes:
            self.server.inbox = torch.zeros(nbytes, dtype=torch.uint8)
        wire.put(self.server.inbox, ts, layout)
        rest = {k: v for k, v in message.items() if k != "tensors"}
        return self.server.explain(0, token, {**rest, "layout": layout})[1]

    def teardown(self):
        return self.server.teardown(0).get("failure")

    def close(self):
        self.models.clear()


@contextmanager
def in_process():
    saved = WorkerPool.session
    WorkerPool.session = lambda self, handle, limits: InProcess(handle, limits)
    try:
        yield
    finally:
        WorkerPool.session = saved


def run(methods, folder, n, out) -> float:
    t0 = time.perf_counter()
    runs = evaluate(methods, folder, "minivgg-masked", out=out, limit=n, progress=False, figure=False)
    seconds = time.perf_counter() - t0
    bad = [f"{r.name}: {r.error}" for r in runs if r.status != "done"]
    if bad:
        raise SystemExit(f"a run failed: {bad}")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--methods", default="GradCAM,HiResCAM,ScoreCAM,AblationCAM,Opti-CAM")
    args = p.parse_args()
    methods = args.methods.split(",")
    folder = str(get_track("mini").dataset_folder("stack-mix"))
    times = {"in process (reference)": [], "worker processes": []}
    with tempfile.TemporaryDirectory() as tmp:
        start_server(imports_of(methods))  # as a job does: its methods' libraries imported once, in the forkserver
        run(["GradCAM"], folder, 2, Path(tmp) / "warm")
        with in_process():
            run(["GradCAM"], folder, 2, Path(tmp) / "warm-ref")
        for k in range(args.rounds):
            order = list(times) if k % 2 == 0 else list(reversed(times))
            for label in order:
                out = Path(tmp) / f"{k}-{label[:2]}"
                if label.startswith("in"):
                    with in_process():
                        times[label].append(run(methods, folder, args.images, out))
                else:
                    times[label].append(run(methods, folder, args.images, out))
        for m in methods:  # the same rows, the same bytes
            a = pq.read_table(Path(tmp) / "0-in" / f"{m}.parquet").to_pandas()
            b = pq.read_table(Path(tmp) / "0-wo" / f"{m}.parquet").to_pandas()
            assert a.equals(b), f"{m}: rows differ between the reference and the workers"
    ref, ours = min(times["in process (reference)"]), min(times["worker processes"])
    print(f"{len(methods)} methods x {args.images} mini STACK-MIX images, every axis, minivgg-masked, "
          f"{torch.get_num_threads()} threads; best of {args.rounds} alternating rounds; rows identical")
    for label, ts in times.items():
        print(f"  {label:24s} {min(ts):7.2f} s   (rounds: {', '.join(f'{t:.2f}' for t in ts)})")
    print(f"  ratio workers / reference: {ours / ref:.3f}")


if __name__ == "__main__":
    main()
