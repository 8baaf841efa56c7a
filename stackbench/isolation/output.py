"""What a worker prints: its stdout and stderr go through one pipe to the harness, which shows them on its own
stderr line by line under the worker's name, up to a cap; the rest is read and dropped, so a method that floods its
output fills no terminal or CI log (and never blocks on a full pipe)."""
from __future__ import annotations

import os
import re
import sys
import threading

CAP = 64 * 1024  # bytes of a worker's output shown


class Output(threading.Thread):
    """The harness's side: reads the pipe until the worker's end closes."""

    def __init__(self, conn, label: str, cap: int = CAP, stream=None):
        super().__init__(name=f"stackbench-output-{label}", daemon=True)
        self.conn, self.label, self.cap = conn, label, cap
        self.stream = stream
        self.shown = self.dropped = 0

    def run(self) -> None:
        fd, pending = self.conn.fileno(), b""
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._show(line)
            if len(pending) > self.cap:  # one endless line
                self._show(pending)
                pending = b""
        if pending:
            self._show(pending)
        if self.dropped:
            self._write(f"[{self.label}] {self.dropped} more bytes of output not shown (over {self.cap // 1024} KB)")
        self.conn.close()

    def _show(self, line: bytes) -> None:
        if self.shown + len(line) > self.cap:
            if not self.dropped:
                self._write(f"[{self.label}] output over {self.cap // 1024} KB: the rest is not shown")
            self.dropped += len(line) + 1
            return
        self.shown += len(line) + 1
        self._write(f"[{self.label}] {visible(line.decode('utf-8', 'replace'))}")

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stderr
        try:
            stream.write(text + "\n")
            stream.flush()
        except (OSError, ValueError):  # the harness's stderr is gone: keep draining the pipe
            pass


CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """Control characters written out (`\\r`, `\\x1b`): a method's output cannot move the cursor, clear a line
    or colour one, so nothing it prints can pass for a line of stackbench's own."""
    return CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def redirect(conn) -> None:
    """The worker's side: its file descriptors 1 and 2 become the pipe (C libraries' prints included), and
    Python's streams flush at every line."""
    for fd in (1, 2):
        os.dup2(conn.fileno(), fd)
    conn.close()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except (AttributeError, ValueError):
            pass
