"""The tracks a board ranks on: each a model and pinned datasets (tracks.json), built on first use into a cache."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..datafolder import fingerprint
from ..errors import StackbenchError, close_matches, first_line
from ..progress import log
from .store import resolve_store

# ------------------------------------------------------------------------------------------------ tracks

@dataclass
class Track:
    """One leaderboard track: which datasets, which model, which protocol; pins make it exactly reproducible."""

    name: str
    model: str
    datasets: dict  # dataset name -> {"preset": NAME, "fingerprint": sha256 | None} or {"path": DIR}
    model_fingerprint: str | None = None  # the official weights' content fingerprint (records: model.fingerprint)
    target: str = "predicted"
    postprocess: str = "gradcam-lib"
    seed: int = 0
    batch_size: int = 8
    description: str = ""
    extra: dict = field(default_factory=dict)

    def dataset_folder(self, name: str, cache: Path | None = None, progress: bool = False) -> Path:
        """The track's dataset folder: given, or regenerated deterministically from its preset (once, cached),
        and checked against the pinned fingerprint."""
        spec = self.datasets[name]
        if "path" in spec:
            folder = Path(spec["path"])
        else:
            folder = (cache or cache_dir()) / self.name / f"{name}-{spec['preset']}"
            pin = spec.get("fingerprint")
            generation = folder / "generation.json"
            complete = generation.is_file() and json.loads(generation.read_text()).get("status") == "complete"
            if complete and pin and fingerprint(folder) != pin:
                # made by another stackbench from the same recipe: resuming would keep its shards, so start over
                shutil.rmtree(folder)
                complete = False
            if not complete:  # missing, or a killed build (resumed)
                _generate(name, spec["preset"], folder, progress)
        pin = spec.get("fingerprint")
        if pin and fingerprint(folder) != pin:
            raise StackbenchError(f"track {self.name}: dataset {name} at {folder} has fingerprint "
                                  f"{fingerprint(folder)[:12]}, the track pins {pin[:12]}; " + (
                                      "it was just regenerated from its preset: check your library versions against "
                                      "the board's (generation.json lists them)" if "path" not in spec else
                                      "give the track's own dataset"))
        return folder


def cache_dir() -> Path:
    return Path(os.environ.get("STACKBENCH_CACHE", Path.home() / ".cache" / "stackbench"))


def _generate(kind: str, preset: str, folder: Path, progress: bool) -> None:
    from ..generate.build import build_dataset

    if progress:
        log.info(f"generating the track's {kind} dataset ({preset}) into {folder}")
    build_dataset(kind, folder, preset=preset, progress=progress, overwrite=True)


def load_tracks(store: Path | None = None) -> dict[str, Track]:
    path = resolve_store(store) / "tracks.json"
    if not path.is_file():
        raise StackbenchError(f"{path} is missing: a board's folder defines its tracks there; give a board's folder, "
                              "or a new or empty one (submit starts a board in it)")
    try:
        raw = json.loads(path.read_text())
        return {name: Track(name=name, **_renamed(spec)) for name, spec in raw["tracks"].items()}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise StackbenchError(f"{path} is not a tracks file ({first_line(e, 80)}); restore it from the board's "
                              "repository") from None


def _renamed(spec: dict) -> dict:
    """A track as tracks files before 0.1 spelled it (`model_sha256`, which was always the weights' fingerprint)."""
    spec = dict(spec)
    if "model_sha256" in spec and "model_fingerprint" not in spec:
        spec["model_fingerprint"] = spec.pop("model_sha256")
    return spec


def get_track(track: str | Track, store: Path | None = None) -> Track:
    if isinstance(track, Track):
        return track
    tracks = load_tracks(store)
    if track not in tracks:
        raise StackbenchError(f"unknown track {track!r}{close_matches(track, tracks)}; tracks: {', '.join(tracks)}")
    return tracks[track]


