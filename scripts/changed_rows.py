"""The board rows a pull request changes, one `TRACK ROW` line each, for the board's workflow to re-run.

    python scripts/changed_rows.py BASE [--store leaderboard]

A row changes when its record or rows file does, or its plugin code (methods/ROW/); a changed tracks.json changes
every row of the tracks it defines. Rows the pull request deletes are not listed (there is nothing to re-run).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def changed_rows(base: str, store: Path) -> list[tuple[str, str]]:
    from stackbench.leaderboard import stored_rows

    diff = subprocess.run(["git", "diff", "--name-only", f"{base}...HEAD", "--", str(store)], capture_output=True,
                          text=True, check=True).stdout.split()
    rows = {(p.relative_to(store / "results").parts[0], p.stem) for p in stored_rows(store)}
    out = set()
    for name in diff:
        parts = Path(name).relative_to(store).parts
        if parts[0] == "results" and len(parts) == 5:
            out |= {(t, r) for t, r in rows if (t, r) == (parts[1], Path(parts[4]).stem)}
        elif parts[0] == "methods" and len(parts) > 1:
            out |= {(t, r) for t, r in rows if r == parts[1]}
        elif parts == ("tracks.json",):
            out |= rows
    return sorted(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("base", help="the branch the pull request goes into, e.g. origin/main")
    ap.add_argument("--store", type=Path, default=Path("leaderboard"))
    args = ap.parse_args()
    for track, row in changed_rows(args.base, args.store):
        print(track, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
