"""Progress the way people read it: plain lines off the terminal, no third-party bars with --no-progress."""
import io
import logging

import datasets

from stackbench import progress as P


def _lines(monkeypatch, terminal: bool, **kw) -> str:
    monkeypatch.setattr(P, "on_terminal", lambda: terminal)
    buf = io.StringIO()
    logger = logging.getLogger("stackbench.test-progress")
    handler = logging.StreamHandler(buf)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with P.Progress(10, "evaluate toy", logger=logger, **kw) as bar:
            for _ in range(5):
                bar.update(2, postfix="GradCAM 40/s, HiResCAM 90/s")
    finally:
        logger.removeHandler(handler)
    return buf.getvalue()


def test_off_the_terminal_plain_lines_without_escape_codes(monkeypatch):
    out = _lines(monkeypatch, terminal=False, every=3600)
    lines = out.splitlines()
    # the first update and the end, nothing in between (the next line is due after `every` seconds)
    assert len(lines) == 2 and lines[0].startswith("evaluate toy: 2/10 img") and "10/10 img (done" in lines[1]
    assert "GradCAM 40/s" in lines[1] and "\x1b[" not in out and "\r" not in out
    assert len(_lines(monkeypatch, terminal=False, every=3600, every_n=2).splitlines()) == 4  # updates 1, 2, 4; end
    assert _lines(monkeypatch, terminal=False, enabled=False) == ""


def test_on_a_terminal_one_bar_and_no_log_lines(monkeypatch):
    import tqdm.auto

    made = []

    class Bar:
        def __init__(self, **kw):
            made.append(kw)

        def update(self, n):
            pass

        def set_postfix_str(self, s, refresh=True):
            made[-1]["postfix"] = s

        def close(self):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    assert _lines(monkeypatch, terminal=True) == ""
    assert len(made) == 1 and made[0]["desc"] == "evaluate toy" and "HiResCAM" in made[0]["postfix"]


def test_no_library_bars_with_no_progress_and_restored_after(capfd, monkeypatch):
    monkeypatch.setattr(P, "on_terminal", lambda: True)
    ds = datasets.Dataset.from_dict({"a": list(range(10))})
    assert not datasets.are_progress_bars_disabled()
    with P.quiet_libraries(progress=False):
        ds.to_parquet(io.BytesIO())
    assert "Creating parquet" not in capfd.readouterr().err
    assert not datasets.are_progress_bars_disabled()  # restored
    monkeypatch.setattr(P, "on_terminal", lambda: False)
    with P.quiet_libraries(progress=True):  # off the terminal they would write escape codes into the log
        ds.to_parquet(io.BytesIO())
    assert "Creating parquet" not in capfd.readouterr().err


def test_setup_logging_writes_plain_lines_to_the_current_stderr(capsys):
    P.setup_logging()
    P.setup_logging()  # idempotent: one handler
    P.log.info("hello")
    assert capsys.readouterr().err == "hello\n"
    assert sum(isinstance(h, P._Stderr) for h in P.log.handlers) == 1
