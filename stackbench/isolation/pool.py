"""The workers of one job (an evaluation, the demo, a submission, a verify run): stackbench's own methods share one
worker for the whole job, a plugin gets a worker of its own for each evaluation.

Why share: a fresh worker compiles every convolution kernel it runs anew (oneDNN's JIT: 20-50 ms per layer, batch
size and direction, 1-4 s per method and evaluation on the mini models); one worker for the built-ins, kept for
the job, compiles them once. Built-ins are the harness's own code, so sharing a process among them keeps the
measurement as far from them as before; a plugin never shares its process with anything.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from .handle import imports_of
from .limits import Limits
from .session import Session, Worker, start_server

_CURRENT: "WorkerPool | None" = None


class WorkerPool:
    def __init__(self):
        self._shared: dict[tuple, Worker] = {}
        self._kept: tuple | None = None  # (key, object, the view tokens it handed)

    def session(self, handle, limits: Limits) -> Session:
        """A method's session: on the shared worker for a built-in, on one of its own for a plugin."""
        return Session(handle.name, handle.payload, limits, pool=self if handle.builtin else None)

    def shared(self, limits: Limits) -> Worker:
        """The built-ins' worker for these limits (the memory cap is the process's) and thread count; a new one if
        none is running."""
        key = (limits.memory_mb, torch.get_num_threads())
        w = self._shared.get(key)
        if w is None or not w.alive:
            if w is not None:
                w.close()
            w = self._shared[key] = Worker("built-in methods", limits)
        w.limits = limits  # the time limits are the harness's, per call: the latest evaluation's
        return w

    def kept(self, key, make, tokens):
        """The object the job keeps under `key` (the views of a model: the evaluations of one job that share a
        model and seed share its views, whose models the shared worker then holds already), made by `make()` when
        the key differs from the last one. Only one is kept: the models the last one handed (`tokens(obj)`) are
        dropped from the workers."""
        if self._kept is not None and self._kept[0] == key:
            return self._kept[1]
        if self._kept is not None:
            for w in self._shared.values():
                w.drop(self._kept[2](self._kept[1]))
        obj = make()
        self._kept = (key, obj, tokens)
        return obj

    def discard(self, worker: Worker) -> None:
        for key, w in list(self._shared.items()):
            if w is worker:
                del self._shared[key]
        worker.close()

    def processes(self) -> list[int]:
        """The process ids of its live shared workers."""
        return [w.process.pid for w in self._shared.values() if w.alive]

    def close(self) -> None:
        for w in self._shared.values():
            w.close()
        self._shared.clear()
        self._kept = None


@contextmanager
def worker_pool(methods=None):
    """The job's pool: the one already open (a demo's, a verify run's), or a new one closed at the end. `methods`
    (what `imports_of` takes): the forkserver is started at once with their imports, which then overlap whatever
    the job does before its first method runs (loading or making its data)."""
    global _CURRENT
    if methods is not None:
        start_server(imports_of(methods))
    if _CURRENT is not None:
        yield _CURRENT
        return
    _CURRENT = pool = WorkerPool()
    try:
        yield pool
    finally:
        _CURRENT = None
        pool.close()
