"""Pin a track's datasets: regenerate each from its preset and write its fingerprint, every item's pixel digest and
the library versions that rendered it into leaderboard/tracks.json (a maintainer's step, after the rendering
changed: then re-seed the board with scripts/seed_leaderboard.py --replace).

    python scripts/pin_track.py [--track mini]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from stackbench.generate.build import build_dataset
from stackbench.leaderboard.tracks import pin

STORE = Path(__file__).resolve().parent.parent / "leaderboard"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--track", default="mini")
    args = ap.parse_args()
    path = STORE / "tracks.json"
    tracks = json.loads(path.read_text())
    spec = tracks["tracks"][args.track]
    with tempfile.TemporaryDirectory() as tmp:
        for name, ds in spec["datasets"].items():
            folder = build_dataset(name, Path(tmp) / name, preset=ds["preset"])
            new = pin(folder)
            print(f"{args.track}/{name}: {ds.get('fingerprint', '')[:12] or 'unpinned'} -> {new['fingerprint'][:12]}")
            ds.update(new)
    path.write_text(json.dumps(tracks, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
