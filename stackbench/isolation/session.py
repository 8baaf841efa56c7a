"""One method's worker process, seen from the harness: start it, hand it models, ask for maps, watch its time and
memory, check after every call that the model it was handed is unchanged, stop it.

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
from .worker import main as worker_main
from .worker import proc_status

POLL = 0.05  # seconds between looks at a busy worker (alive? over its memory?)
WORKER_ENV = {"GOMP_SPINCOUNT": "20000"}
PRELOAD = ["stackbench.isolation.worker"]
_CONTEXT = None


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
    """The worker's OpenMP threads spin briefly between parallel regions, then sleep: the harness and the worker
    take turns on the same cores, and a thread spinning for libgomp's default 300000 turns holds a core the other
    is waiting for (calls 3x slower on 2 cores); sleeping at once (OMP_WAIT_POLICY=passive) made Opti-CAM 30%
    slower. Read once, when the forkserver starts; a value the user set is kept."""
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


class Session:
    """A method's worker. `payload` says how the worker makes the method; with `describe` it answers what the
    method says of itself (`info`). Every call answers, or raises WorkerFailure, SetupFailure or MethodFailure (an
    explain that failed)."""

    def __init__(self, name: str, payload, limits: Limits, describe: bool = False):
        self.name, self.limits = name, limits
        ctx = context()
        self.conn, child = ctx.Pipe()
        start = {"payload": payload, "memory_mb": limits.memory_mb, "threads": torch.get_num_threads(),
                 "cwd": os.getcwd(), "env": dict(os.environ), "describe": describe}
        self.process = ctx.Process(target=worker_main, args=(child, start), daemon=True,
                                   name=f"stackbench-method-{name}")
        start_server()  # when no job started it earlier
        with _bare_main(), _worker_env():
            self.process.start()
        child.close()
        self.models: dict[str, tuple] = {}  # view token -> (the worker's numbers, the reference Handed)
        self._inbox = None
        self._anon0 = None
        try:
            header, _ = self._reply(limits.setup_seconds, "its import")
            if header["kind"] == "error":
                from ..errors import StackbenchError

                raise StackbenchError(str(header.get("reason"))[:2000])
            self._raise_failure(header)
        except BaseException:
            self.close()
            raise
        self.info = header
        self._anon0 = _rss_anon(self.process.pid)

    # ---- the calls

    def view(self, token: str, handed: Handed, seed: int) -> None:
        """Hand the worker a copy of a handed model as view `token` and set the method up on it. The copy's numbers
        lie in one shared buffer, which the harness compares with the reference after every call."""
        buffer = wire.shared_buffer(handed.numbers.numel(), handed.numbers.device).copy_(handed.numbers)
        self.models[token] = (buffer, handed)
        self._send(("view", token, handed.skeleton, buffer, handed.layout, seed, handed.crop))
        header, _ = self._reply(self.limits.setup_seconds, "set-up")
        self._raise_failure(header)
        self._check(token)

    def explain(self, token: str, message: dict) -> np.ndarray:
        """The method's raw maps of one batch (`Batch.message`) on view `token`."""
        n = len(message["ids"])
        ts = message["tensors"]
        layout, nbytes = wire.layout_of(ts)
        if self._inbox is None or self._inbox.numel() < nbytes or self._inbox.device != ts["x01"].device:
            # the inputs go through a buffer of this worker's own: what it writes there, no other method reads
            self._inbox = wire.shared_buffer(nbytes + nbytes // 2, ts["x01"].device)
            self._send(("inbox", self._inbox))
        wire.put(self._inbox, ts, layout)
        self._send(("explain", token, {**{k: v for k, v in message.items() if k != "tensors"}, "layout": layout}))
        h, w = ts["x01"].shape[-2:]
        header, array = self._reply(self.limits.call_seconds(n), f"{n} image(s)", maxlen=4096 + n * h * w * 8)
        self._raise_failure(header)
        self._check(token)
        if header["kind"] != "maps" or array is None:
            raise WorkerFailure(f"answered {header['kind']!r} instead of maps")
        return array

    def teardown(self) -> str | None:
        """Tear the method down in its worker; its failure's text, or None. Then every view's model is checked."""
        self._send(("teardown",))
        header, _ = self._reply(self.limits.setup_seconds, "teardown")
        for token in self.models:
            self._check(token)
        return header.get("failure") if header["kind"] == "ok" else header.get("reason", "failed")

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
        self.models.clear()
        self._inbox = None

    # ---- the protocol

    def _send(self, message) -> None:
        try:
            self.conn.send(message)
        except (OSError, ValueError):
            raise WorkerFailure(self._death()) from None

    def _reply(self, seconds: float | None, what: str, maxlen: int = 1 << 20):
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
                    raise WorkerFailure(f"sent a reply over {maxlen} bytes; its worker was stopped") from None
                try:
                    return wire.decode(data)
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
