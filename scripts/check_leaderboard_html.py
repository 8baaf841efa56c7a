"""Open leaderboard/index.html in a real headless Chromium: it must load without script errors and show every row.

    python scripts/check_leaderboard_html.py [--store leaderboard] [--screenshot board.png]

Needs Debian's chromium (`apt-get install chromium`). Exit 0 when the page holds one table row per stored
submission and per reported row and the browser logged no error; 1 otherwise.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from stackbench import leaderboard as lb

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", type=Path, default=Path(__file__).resolve().parent.parent / "leaderboard")
    ap.add_argument("--screenshot", type=Path, default=None)
    args = ap.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not browser:
        print("no chromium on PATH; install it (apt-get install chromium)")
        return 1
    page = (args.store / "index.html").resolve()
    expected_rows = sum(len(v) for v in lb.board(args.store).values())
    expected_reported = sum(len(r["rows"]) for r in lb.reported(args.store))
    with tempfile.TemporaryDirectory() as profile:
        run = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                             capture_output=True, text=True, timeout=120)
        if args.screenshot:
            subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", "--window-size=1200,1400",
                            f"--screenshot={args.screenshot.resolve()}", page.as_uri()],
                           capture_output=True, text=True, timeout=120)
    dom = run.stdout
    bad = re.compile(r"Uncaught|SyntaxError|ReferenceError|CONSOLE.*error", flags=re.I)
    errors = [line for line in run.stderr.splitlines() if bad.search(line)]
    rows = dom.count('<tr class="row">')
    reported = dom.count('<tr class="reported-row">')
    print(f"{page}: {rows}/{expected_rows} board rows, {reported}/{expected_reported} reported rows, "
          f"{len(errors)} script errors")
    for e in errors:
        print("  " + e)
    return 0 if (rows == expected_rows and reported == expected_reported and not errors and dom) else 1


if __name__ == "__main__":
    sys.exit(main())
