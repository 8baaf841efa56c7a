"""Progress the way people read it, for every long job (evaluate, train, submit, verify, demo).

    with Progress(total=100, desc="evaluate stack-mix", enabled=progress) as bar:
        bar.update(8, postfix="GradCAM 40 img/s, ScoreCAM 2.1 img/s")

On a terminal (or in a notebook) a job shows one tqdm bar per shared pass. Anywhere else (a log file, a pipe, CI)
it writes plain lines through the `stackbench` logger instead: at the first update, then every `every` seconds,
then at the end, so a file never holds an escape code or a carriage return. `quiet_libraries()` turns the bars of
datasets and huggingface_hub off for the duration of a job (always off the terminal; on it too with --no-progress)
and restores them after. Library code logs through `logging.getLogger("stackbench")`; the CLI calls
`setup_logging()` once to show those lines on stderr. This module imports nothing of the package (ground floor).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

log = logging.getLogger("stackbench")
LOG_EVERY_S = 30.0  # seconds between two plain progress lines off the terminal


class _Stderr(logging.StreamHandler):
    """A handler that writes to whatever sys.stderr is at the time (click's test runner swaps it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the current stderr wins
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """The one handler of the `stackbench` logger: plain lines on stderr (called once by the CLI; idempotent)."""
    for h in list(log.handlers):
        if isinstance(h, _Stderr):
            log.removeHandler(h)
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(level)


def on_terminal() -> bool:
    """True when bars can be drawn: stderr is a terminal, or a notebook kernel renders them."""
    try:
        if sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False
    return "ipykernel" in sys.modules


def rate(n: float, seconds: float) -> str:
    """'12.3 img/s' (or '-' before anything was timed)."""
    if seconds <= 0 or n <= 0:
        return "-"
    r = n / seconds
    return f"{r:.3g}/s" if r < 100 else f"{r:.0f}/s"


def duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


class Progress:
    """One bar (terminal) or periodic log lines (anywhere else) for one pass of `total` units. `enabled=False`
    shows nothing; `every` is the seconds between two log lines, `every_n` the updates (the first update and the
    end are always said)."""

    def __init__(self, total: int | None, desc: str, unit: str = "img", enabled: bool = True, initial: int = 0,
                 every: float = LOG_EVERY_S, every_n: int | None = None, logger: logging.Logger = log):
        self.total, self.desc, self.unit, self.n, self.every, self.log = total, desc, unit, initial, every, logger
        self.every_n, self.updates = every_n, 0
        self.enabled, self.postfix = enabled, ""
        self.t0 = self.last = time.perf_counter()
        self.start, self.said, self.said_n = initial, False, initial
        self.bar = None
        if enabled and on_terminal():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=True,
                            file=sys.stderr, unit_scale=unit != "img")

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.n += n
        self.updates += 1
        if postfix is not None:
            self.postfix = postfix
        if self.bar is not None:
            if postfix is not None:
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(n)
        elif self.enabled and (not self.said or time.perf_counter() - self.last >= self.every
                               or (self.every_n and self.updates % self.every_n == 0)):
            self.say()

    def say(self, end: bool = False) -> None:
        """One plain line: what is done, how fast, how long is left."""
        self.said, self.said_n, self.last = True, self.n, time.perf_counter()
        spent = self.last - self.t0
        done = self.n - self.start
        of = f"/{self.total}" if self.total else ""
        left = ""
        if not end and self.total and done > 0 and self.n < self.total:
            left = f", ~{duration((self.total - self.n) * spent / done)} left"
        tail = f"; {self.postfix}" if self.postfix else ""
        what = "done" if end else f"{rate(done, spent)}{left}"
        self.log.info(f"{self.desc}: {self.n}{of} {self.unit} ({what}, {duration(spent)}){tail}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.n > self.said_n:  # the end, unless the last line already said it
            self.say(end=True)
        self.enabled = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# (module, disable, enable, is it off?) of the libraries whose own bars a job silences
LIBRARY_BARS = {
    "datasets": ("datasets", "disable_progress_bars", "enable_progress_bars", "are_progress_bars_disabled"),
    "huggingface_hub": ("huggingface_hub.utils", "disable_progress_bars", "enable_progress_bars",
                        "are_progress_bars_disabled"),
    "transformers": ("transformers.utils.logging", "disable_progress_bar", "enable_progress_bar",
                     "is_progress_bar_enabled"),
    "diffusers": ("diffusers.utils.logging", "disable_progress_bar", "enable_progress_bar", "is_progress_bar_enabled"),
}
ALWAYS = ("datasets", "huggingface_hub")  # the others cost seconds to import: silenced when loaded or asked for


@contextlib.contextmanager
def quiet_libraries(progress: bool = True, also: tuple[str, ...] = ()):
    """The bars of datasets and huggingface_hub (and of transformers and diffusers when they are loaded, or named
    in `also`) off while a job runs: with --no-progress, and always off the terminal, where they would write escape
    codes into the log. Their previous setting is restored after."""
    if progress and on_terminal():
        yield
        return
    undo = []
    for name, (module, off, on, state) in LIBRARY_BARS.items():
        if name not in ALWAYS and name not in also and module not in sys.modules:
            continue
        try:
            mod = __import__(module, fromlist=[off])
            enabled = getattr(mod, state)()
            if state.startswith("are_"):  # "are they disabled?" rather than "is it enabled?"
                enabled = not enabled
            if enabled:
                getattr(mod, off)()
                undo.append(getattr(mod, on))
        except (ImportError, AttributeError):  # an older or missing library: nothing to silence
            continue
    try:
        yield
    finally:
        for enable in undo:
            enable()


def machine() -> str:
    """This machine in words (CPU model, cores, load, accelerator): where a measured rate comes from."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    import platform

    cpu = cpu or platform.processor() or platform.machine()
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load {os.getloadavg()[0]:.1f}"
    gpu = ""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        gpu = f", {torch.cuda.get_device_name(0)}"
    return f"{cpu}, {os.cpu_count()} cores{load}{gpu}"
