"""One error type for bad input: its message is the one line a user sees (names the input and the fix).

Also what the harness needs to keep third-party code (plugins) from ending the process: a guard that tells a
real Ctrl-C apart from a KeyboardInterrupt (or SystemExit) raised by the code it runs."""
from __future__ import annotations

import contextlib
import re
import signal
import threading


class StackbenchError(Exception):
    """Bad input or a refused operation; the CLI prints `error: <message>` and exits 2."""


class OtherRecipe(StackbenchError):
    """An output folder holds an earlier build with other settings (`detail` names them); refused, not mixed."""

    def __init__(self, message: str, detail: str):
        super().__init__(message)
        self.detail = detail


class Refused(StackbenchError):
    """Checks that failed (not bad arguments): the CLI prints one `error:` line per problem and exits 1."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = list(problems)


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def first_line(e: BaseException, limit: int = 200) -> str:
    """'TypeName: first line of its message' (at most `limit` characters of it), or 'TypeName' when it has none:
    a library's exception inside one of our one-line errors. Memory addresses (`<... at 0x7f...>`) are cut, so
    the same input gives the same text in every run."""
    try:
        text = _ADDRESS.sub("", str(e).strip())
    except BaseException:  # noqa: BLE001 - a foreign exception whose __str__ itself raises
        text = "(its message could not be read: its __str__ raised)"
    return f"{type(e).__name__}: {text.splitlines()[0][:limit]}" if text else type(e).__name__


def close_matches(name: str, choices, n: int = 3) -> str:
    """' (did you mean a, b?)' for the nearest of `choices`, or ''."""
    import difflib

    near = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" (did you mean {', '.join(near)}?)" if near else ""


# ------------------------------------------------------------------------------------------ foreign code

_sigint = {"seen": 0, "depth": 0}


@contextlib.contextmanager
def watching_ctrl_c():
    """While active, a Ctrl-C (SIGINT) is remembered before it raises KeyboardInterrupt as usual, so that
    `user_stopped` can tell it from a KeyboardInterrupt that a plugin raised itself. Re-entrant; a no-op off the
    main thread (there, every KeyboardInterrupt counts as the user's)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outer = _sigint["depth"] == 0
    previous = None
    if outer:
        _sigint["seen"] = 0

        def on_sigint(signum, frame):
            _sigint["seen"] += 1
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGINT, on_sigint)
    _sigint["depth"] += 1
    try:
        yield
    finally:
        _sigint["depth"] -= 1
        if outer:
            signal.signal(signal.SIGINT, previous)


def user_stopped(e: BaseException) -> bool:
    """True for a KeyboardInterrupt that came from the user (Ctrl-C), not from the code that raised it."""
    if not isinstance(e, KeyboardInterrupt):
        return False
    return _sigint["depth"] == 0 or _sigint["seen"] > 0


def foreign_failure(e: BaseException) -> str | None:
    """What to report when third-party code raised `e`: its first line, or None when `e` must propagate (a real
    Ctrl-C). SystemExit and a plugin's own KeyboardInterrupt are that code's failure, never the end of the run."""
    if user_stopped(e):
        return None
    if isinstance(e, SystemExit):
        return f"SystemExit({e.code!r}) (a method must not end the process)"
    if isinstance(e, KeyboardInterrupt):
        return "KeyboardInterrupt raised by the method itself (not by Ctrl-C)"
    return first_line(e)
