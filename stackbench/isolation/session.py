"""A worker process seen from the harness (`Worker`: start it, hand it models, ask for maps, watch its time and
memory, check after every call that the model it was handed is unchanged, stop it), and one method in it
(`Session`, what the evaluation loop holds).

Workers fork from multiprocessing's forkserver (spawn where there is none), which imports torch and stackbench
once and holds no harness state: a worker starts in about 20 ms and can see nothing of the measurement. The
user's script is never re-run in a worker (it needs nothing from `__main__`)."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
import types
from contextlib import contextmanager

import numpy as np
import torch

from ..methods.passes import MethodFailure
from . import wire
from .handed import Handed
from .limits import Limits
from .output import Output
from .worker import QUIET, proc_status
from .worker import main as worker_main

POLL = 0.05  # seconds between looks at a busy worker (alive? over its memory?)
WORKER_ENV = {"GOMP_SPINCOUNT": "20000", "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
              "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}  # see _worker_env
PRELOAD = ["stackbench.isolation.worker"]
_CONTEXT = None


@contextmanager
def in_call(i: int):
    """A failure raised inside is marked as that of call `i` of a request (`.call`), for the caller to name."""
    try:
        yield
    except (WorkerFailure, SetupFailure, MethodFailure) as e:
        e.call = i
        raise


class WorkerFailure(Exception):
    """The worker did not answer as the protocol allows (died, too slow, too big, changed its model); one line."""


class SetupFailure(Exception):
    """The method's set-up (or its import) raised; one line."""


def start_server(modules=()) -> None:
    """Start the forkserver now, importing stackbench and `modules` (`imports_of` the methods to come) once for
    every worker, in the background while the harness loads its inputs. The first call decides for the process;
    a later worker imports whatever else it needs itself."""
    ctx = context()
    if ctx.get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    if getattr(forkserver._forkserver, "_forkserver_pid", None) is None:  # not running: the preload can change
        ctx.set_forkserver_preload([*PRELOAD, *dict.fromkeys(modules)])
    with _bare_main(), _worker_env():
        forkserver.ensure_running()


def context():
    global _CONTEXT
    if _CONTEXT is None:
        if "forkserver" in mp.get_all_start_methods():
            _CONTEXT = mp.get_context("forkserver")
            _CONTEXT.set_forkserver_preload(PRELOAD)
        else:
            _CONTEXT = mp.get_context("spawn")
    return _CONTEXT


@contextmanager
def _worker_env():
    """Settings read once, when the forkserver starts, which every worker inherits (a value the user set is kept).

    OpenMP threads spin briefly between parallel regions, then sleep: the harness and the worker take turns on the
    same cores, and a thread spinning for libgomp's default 300000 turns holds a core the other is waiting for
    (calls 3x slower on 2 cores); sleeping at once (OMP_WAIT_POLICY=passive) made Opti-CAM 30% slower.

    glibc's malloc keeps freed blocks up to 32 MB in its heap and trims it only past 64 MB free, the state a
    long-running process reaches by itself: a fresh worker otherwise gave every large temporary back to the
    system and faulted it in again (670,000 page faults and 25% more time per Opti-CAM call on minivgg)."""
    saved = {k: os.environ.get(k) for k in WORKER_ENV}
    for k, v in WORKER_ENV.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _bare_main():
    """multiprocessing would re-import the user's script in the worker (as __mp_main__); the worker needs nothing
    from it, and a script without a `__main__` guard would start its work again."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _rss_anon(pid: int) -> int | None:
    try:
        return proc_status("RssAnon", pid)
    except (OSError, ValueError):  # not Linux, or the worker is gone
        return None


class Worker:
    """A worker process: the methods it hosts (slots), the models handed to it (by view token, one shared buffer
    each), its time and memory watch. Every call answers, or raises WorkerFailure, SetupFailure or MethodFailure
    (an explain that failed); a WorkerFailure stops the process."""

    def __init__(self, label: str, limits: Limits):
        self.label, self.limits = label, limits
        ctx = context()
        self.conn, child = ctx.Pipe()
        output, out_w = ctx.Pipe(duplex=False)
        start = {"memory_mb": limits.memory_mb, "threads": torch.get_num_threads(), "cwd": os.getcwd(),
                 "env": dict(os.environ), "output": out_w}
        self.process = ctx.Process(target=worker_main, args=(child, start), daemon=True,
                                   name=f"stackbench-method-{label}")
        start_server()  # when no job started it earlier
        with _bare_main(), _worker_env():
            self.process.start()
        child.close()
        out_w.close()
        self.output = Output(output, label)
        self.output.start()
        self.models: dict[str, tuple] = {}  # view token -> (the worker's numbers, the reference Handed)
        self.slots: dict[int, set] = {}  # slot -> the tokens its method was set up on
        self._inbox = None
        self._anon0 = None
        self.waiting = True  # a call's reply not yet read: an interrupted call leaves the protocol out of step
        try:
            self._reply(self.limits.setup_seconds, "its start")
        except BaseException:
            self.close()
            raise
        self._anon0 = _rss_anon(self.process.pid)

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    # ---- the calls

    def load(self, slot: int, payload, describe: bool = False) -> dict:
        """Make a method in this worker (import its plugin, if it is one); its description with `describe`."""
        self._send(("load", slot, payload, describe))
        header, _ = self._reply(self.limits.setup_seconds, "its import")
        if header["kind"] == "error":
            from ..errors import StackbenchError

            raise StackbenchError(str(header.get("reason"))[:2000])
        self._raise_failure(header)
        self.slots[slot] = set()
        return header

    def view(self, slot: int, token: str, handed: Handed, seed: int) -> None:
        """Set the method of `slot` up on view `token` of a handed model. The worker gets the model once, as a
        copy in one shared buffer, which is compared with the reference after every call."""
        if token not in self.models:
            buffer = wire.shared_buffer(handed.numbers.numel(), handed.numbers.device).copy_(handed.numbers)
            self.models[token] = (buffer, handed)
            self._send(("model", token, handed.skeleton, buffer, handed.layout, handed.crop))
        self.slots[slot].add(token)
        self._send(("view", slot, token, seed))
        header, _ = self._reply(self.limits.setup_seconds, "set-up")
        self._raise_failure(header)
        self._check(token)

    def explain(self, slot: int, calls: list[tuple[str, dict]]) -> list[np.ndarray]:
        """The raw maps of each call (a view token and a `Batch.message` on that view) by the method of `slot`, all
        asked at once (the worker answers one by one, each call in its own time limit). A failure carries the index
        of the call it belongs to (`.call`); the models are checked once all have answered."""
        layouts, nbytes = [], 0
        for _token, m in calls:  # every call's inputs, one after the other in the inbox
            layout, nbytes = wire.layout_of(m["tensors"], start=nbytes)
            layouts.append(layout)
        device = calls[0][1]["tensors"]["x01"].device
        if self._inbox is None or self._inbox.numel() < nbytes or self._inbox.device != device:
            # the inputs go through a buffer of this worker's own: what it writes there, no other worker reads
            self._inbox = wire.shared_buffer(nbytes + nbytes // 2, device)
            self._send(("inbox", self._inbox))
        for (_token, m), layout in zip(calls, layouts, strict=True):
            wire.put(self._inbox, m["tensors"], layout)
        asked = [(token, {**{k: v for k, v in m.items() if k != "tensors"}, "layout": layout})
                 for (token, m), layout in zip(calls, layouts, strict=True)]
        self._send(("explain", slot, asked))
        out = []
        for i, (_token, m) in enumerate(calls):
            with in_call(i):
                out.append(self._maps(m))
            self.waiting = i + 1 < len(calls)  # more replies are on their way
        tokens = [token for token, _ in calls]
        for token in dict.fromkeys(tokens):
            with in_call(tokens.index(token)):
                self._check(token)
        return out

    def _maps(self, message: dict) -> np.ndarray:
        """The reply to one call of an explain: its maps."""
        n = len(message["ids"])
        h, w = message["tensors"]["x01"].shape[-2:]
        header, array = self._reply(self.limits.call_seconds(n), f"{n} image(s)", maxlen=4096 + n * h * w * 8,
                                    most=f"the size of {n} float64 maps of at most {h}x{w}")
        self._raise_failure(header)
        if header["kind"] != "maps" or array is None:
            self._stop()  # the replies are out of step with the calls
            raise WorkerFailure(f"answered {header['kind']!r} instead of maps; its worker was stopped")
        return array

    def teardown(self, slot: int) -> str | None:
        """Tear the method of `slot` down; its failure's text, or None. Then every model it was set up on is
        checked."""
        self._send(("teardown", slot))
        header, _ = self._reply(self.limits.setup_seconds, "teardown")
        for token in self.slots.get(slot, ()):
            self._check(token)
        return header.get("failure") if header["kind"] == "ok" else header.get("reason", "failed")

    def forget(self, slot: int) -> None:
        """The method of `slot` gone; the models stay (the job's next evaluation of the same model hands them
        again: `drop`)."""
        self.slots.pop(slot, None)
        if self.alive:
            self._send(("forget", slot))

    def drop(self, tokens) -> None:
        """Models no method of the job will be set up on again."""
        tokens = [t for t in tokens if t in self.models]
        for t in tokens:
            del self.models[t]
        if tokens and self.alive:
            self._send(("drop", tokens))

    def close(self) -> None:
        try:
            if self.process.is_alive():
                self.conn.send(("close",))
                self.process.join(1)
        except (OSError, ValueError):
            pass
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self._kill_group()
        self.conn.close()
        self.output.join(2)  # the last lines it printed, before the harness says more
        self.models.clear()
        self._inbox = None

    # ---- the protocol

    def _send(self, message) -> None:
        if message[0] not in QUIET:
            self.waiting = True
        try:
            self.conn.send(message)
        except (OSError, ValueError):
            raise WorkerFailure(self._death()) from None

    def _reply(self, seconds: float | None, what: str, maxlen: int = 1 << 20, most: str = "the protocol's limit"):
        deadline = None if seconds is None else time.monotonic() + seconds
        while True:
            wait = POLL if deadline is None else max(0.0, min(POLL, deadline - time.monotonic()))
            if self.conn.poll(wait):
                try:
                    data = self.conn.recv_bytes(maxlen)
                except (EOFError, OSError) as e:
                    if isinstance(e, EOFError) or not self.process.is_alive():
                        raise WorkerFailure(self._death()) from None
                    self._stop()
                    raise WorkerFailure(f"sent a reply over {maxlen} bytes ({most}); its worker was stopped") from None
                try:
                    out = wire.decode(data)
                    self.waiting = False
                    return out
                except wire.BadReply as e:
                    self._stop()  # the protocol is broken: nothing more is read from it
                    raise WorkerFailure(f"sent {e}; its worker was stopped") from None
            if not self.process.is_alive():
                raise WorkerFailure(self._death())
            if deadline is not None and time.monotonic() >= deadline:
                self._stop()
                per = f" ({self.limits.seconds_per_image:g} s per image)" if what.endswith("image(s)") else ""
                raise WorkerFailure(f"took over {seconds:g} s for {what}, the limit{per}; its worker was stopped")
            self._watch_memory()

    def _watch_memory(self) -> None:
        """The worker caps its own allocations (RLIMIT_DATA); this catches one that lifted the cap."""
        if self.limits.memory_mb is None or self._anon0 is None:
            return
        now = _rss_anon(self.process.pid)
        if now is not None and now - self._anon0 > self.limits.memory_mb * 2**20:
            self._stop()
            raise WorkerFailure(f"used over {self.limits.memory_mb} MB of memory, the limit; its worker was stopped")

    def _raise_failure(self, header: dict) -> None:
        if header["kind"] != "failed":
            return
        reason = str(header.get("reason"))[:500]
        if header.get("memory") and self.limits.memory_mb is not None:
            reason = f"went past its memory limit ({self.limits.memory_mb} MB): {reason}"
        if header.get("where") in ("load", "view", "teardown"):
            raise SetupFailure(reason)
        raise MethodFailure(reason, str(header.get("item", "0"))[:20])

    def _check(self, token: str) -> None:
        buffer, handed = self.models[token]
        which = handed.changed(buffer)
        if which is not None:
            self._stop()
            raise WorkerFailure(f"changed the model it was given ({which})")

    def _stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self._kill_group()

    def _kill_group(self) -> None:
        """Whatever the worker left in its process group (it leads one; see worker._seal)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (AttributeError, OSError, TypeError):  # none left, or no process groups (Windows)
            pass

    def _death(self) -> str:
        self.process.join(5)
        code = self.process.exitcode
        if code is None:
            return "stopped answering"
        if code < 0:
            try:
                return f"ended its worker process ({signal.Signals(-code).name})"
            except ValueError:
                return f"ended its worker process (signal {-code})"
        return f"ended its worker process (exit code {code})"


class Session:
    """One method in a worker: its own (no `pool`; closed with it), or a job's shared one (`pool`), which a
    failure of another method may have stopped: then it moves to the pool's next worker, set up again as needed.
    Its calls raise as the worker's do."""

    _slots = 0

    def __init__(self, name: str, payload, limits: Limits, describe: bool = False, pool=None):
        self.name, self.payload, self.limits, self.pool = name, payload, limits, pool
        Session._slots += 1
        self.slot = Session._slots
        self.worker = None
        self.info = self._attach(describe)

    def _attach(self, describe: bool = False) -> dict:
        if self.pool is None:
            self.worker = Worker(self.name, self.limits)
        else:
            self.worker = self.pool.shared(self.limits)
        try:
            return self.worker.load(self.slot, self.payload, describe)
        except BaseException:
            self._drop_worker()
            raise

    def _drop_worker(self) -> None:
        if self.pool is None:
            self.worker.close()
        elif not self.worker.alive:
            self.pool.discard(self.worker)

    def _live(self) -> Worker:
        if self.pool is not None and not self.worker.alive:  # stopped for another method's failure
            self._attach()
        return self.worker

    @property
    def models(self) -> set:
        """The view tokens this method is set up on."""
        w = self.worker
        return w.slots.get(self.slot, set()) if w is not None and w.alive else set()

    def view(self, token: str, handed: Handed, seed: int) -> None:
        self._call(lambda w: w.view(self.slot, token, handed, seed))

    def explain(self, calls: list[tuple[str, dict]]) -> list[np.ndarray]:
        """Maps of several calls ((view token, `Batch.message`) each), asked at once (see `Worker.explain`)."""
        return self._call(lambda w: w.explain(self.slot, calls))

    def teardown(self) -> str | None:
        return self._call(lambda w: w.teardown(self.slot))

    def _call(self, call):
        try:
            return call(self._live())
        except WorkerFailure:
            self._drop_worker()
            raise

    def close(self) -> None:
        """Its worker closed if it is its own; else the method forgotten there (the worker stays for the job)."""
        if self.worker is None:
            return
        if self.pool is None:
            self.worker.close()
        elif self.worker.waiting:  # interrupted mid-call (Ctrl-C, an error here): its next reply is a stale one
            self.pool.discard(self.worker)
        elif self.worker.alive:
            try:
                self.worker.forget(self.slot)
            except WorkerFailure:
                self.pool.discard(self.worker)
        self.worker = None
