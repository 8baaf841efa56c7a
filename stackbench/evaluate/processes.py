"""The processes of one evaluation: accelerate's (`accelerate launch -m stackbench evaluate`, torchrun), or
`num_proc` on this machine, started here. Each runs its chunks (`parts.Layout.mine`); the main process shows one
progress bar for all of them and merges their parts once every one is done."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..errors import StackbenchError, first_line
from ..refs import agree

POLL_S = 0.5


class Processes:
    """Where this process stands among the evaluation's: rank, world, and accelerate's state (None when this
    process started the others itself, or runs alone)."""

    def __init__(self, state=None, rank: int = 0, world: int = 1):
        self.state, self.rank, self.world = state, rank, world
        if state is not None:
            self.rank, self.world = state.process_index, state.num_processes

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wait(self) -> None:
        """Every process of accelerate's here before any goes on (the ones started here are joined instead)."""
        if self.state is not None and self.world > 1:
            self.state.wait_for_everyone()

    def agree(self, refusal: str | None) -> None:
        """The main process' refusal, raised in every process (`refs.agree`)."""
        agree(refusal, self.state)


class Bar:
    """The main process' bar over every process' images: its own counted directly, the others' read from the
    counts they leave in the parts folder (`Tally`)."""

    def __init__(self, progress, folder: Path, rank: int, world: int, done: int = 0):
        self.progress, self.folder, self.rank, self.world = progress, folder, rank, world
        self.own, self.last = done, 0.0  # done: the images of chunks finished before this run

    def update(self, n: int, postfix: str | None = None) -> None:
        self.own += n
        self.refresh(postfix, force=False)

    def refresh(self, postfix: str | None = None, force: bool = True) -> None:
        now = time.perf_counter()
        if not force and now - self.last < POLL_S:  # the others' counts read twice a second at most
            self.progress.update(0, postfix=postfix)
            return
        self.last = now
        total = self.own + sum(_read_count(self.folder / f"progress-{r}") for r in range(self.world) if r != self.rank)
        self.progress.update(max(0, total - self.progress.n), postfix=postfix)

    def close(self) -> None:
        self.progress.close()


class Tally:
    """A process' bar that is not shown: its count of images done, for the main process' bar."""

    def __init__(self, folder: Path, rank: int):
        self.path, self.n, self.last = Path(folder) / f"progress-{rank}", 0, 0.0

    def update(self, n: int, postfix: str | None = None) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= POLL_S / 2:
            self.flush()
            self.last = now

    def flush(self) -> None:
        from ..datafolder import atomic_write_bytes

        atomic_write_bytes(self.path, str(self.n).encode())

    def close(self) -> None:
        self.flush()


def _read_count(path: Path) -> int:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return 0


def start(num_proc: int, threads: int, target, args: tuple) -> list:
    """Processes 1 .. num_proc - 1 of this evaluation, each running `target(*args, rank, num_proc, threads)` with
    `threads` torch threads; returns [(process, pipe)] for `join`. Each is a fresh
    interpreter (`python -c`), not multiprocessing's spawn: a script without a
    `__main__` guard must not run again in it."""
    import cloudpickle  # objects of a notebook's __main__ go by value, as a method's class does to its worker

    started = []
    for rank in range(1, num_proc):
        read, write = os.pipe()
        p = subprocess.Popen([sys.executable, "-c", f"from {__name__} import _child; _child({write})"],
                             stdin=subprocess.PIPE, pass_fds=(write,))
        os.close(write)
        try:  # this interpreter's import path first: a notebook's or a test's classes unpickle there too
            p.stdin.write(pickle.dumps(sys.path) + cloudpickle.dumps((target, (*args, rank, num_proc, threads))))
            p.stdin.close()
        except OSError:
            pass  # it stopped at once: `join` says so
        started.append((p, read))
    return started


def _die_with_parent() -> None:
    """A started process ends when the process that started it is gone (killed outright, it stops nobody): its
    chunks so far are kept for the resume, and its method worker ends with it."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(POLL_S)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="stackbench-parent-watch", daemon=True).start()


def _child(fd: int) -> None:
    """A started process: its chunks, then one message (None, or its error's line) to the one that started it."""
    _die_with_parent()
    try:
        paths = pickle.load(sys.stdin.buffer)
        sys.path[:0] = [p for p in paths if p not in sys.path]
        target, args = pickle.load(sys.stdin.buffer)
        target(*args)
        message = None
    except StackbenchError as e:
        message = str(e)
    except KeyboardInterrupt:
        message = "interrupted"
    except BaseException as e:  # noqa: BLE001 - said to the main process, which stops with it
        message = f"unexpected {first_line(e)}"
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"error": message}, f)
    except OSError:  # the one that started it is gone: nobody to tell
        pass


def join(started: list, bar: Bar | None = None) -> None:
    """Wait for the started processes (the bar kept moving meanwhile); a process that stopped with an error or
    without a word is said in one line, with the way to resume."""
    problems = []
    for rank, (p, fd) in enumerate(started, start=1):
        while p.poll() is None:
            try:
                p.wait(POLL_S)
            except subprocess.TimeoutExpired:
                pass
            if bar is not None:
                bar.refresh()
        with os.fdopen(fd, "r") as f:
            text = f.read()
        try:
            message = json.loads(text)["error"]
        except (ValueError, KeyError, TypeError):
            code = p.returncode
            message = (f"was killed (signal {-code}, {signal.Signals(-code).name})" if code < 0 and
                       -code in signal.valid_signals() else f"stopped without a word (exit code {code})")
        if message:
            problems.append(f"process {rank + 1} of {len(started) + 1}: {message}")
    started.clear()
    if problems:
        raise StackbenchError(f"{problems[0]}; run the same command again: it resumes from the finished chunks")


def stop(started: list) -> None:
    """The started processes stopped (after an error or a Ctrl-C here)."""
    for p, _ in started:
        if p.poll() is None:
            p.terminate()
    for p, fd in started:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        os.close(fd)
    started.clear()
