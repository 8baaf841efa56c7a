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
    limits: dict = field(default_factory=dict)  # a method's time and memory (stackbench.isolation.Limits)
    description: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def method_limits(self):
        """What a method may spend on this track's rows (a method past it fails its row)."""
        from ..isolation import Limits

        return Limits.from_dict(self.limits)

    def dataset_folder(self, name: str, cache: Path | None = None, progress: bool = False,
                       given: str | None = None) -> Path:
        """The track's dataset folder: `given` (a folder or hf:REPO@REV holding the pinned data), the track's own
        path, or regenerated deterministically from its preset (once, cached); checked against the pin."""
        spec = self.datasets[name]
        pin = spec.get("fingerprint")
        if given is not None:
            return self.given_folder(name, given)
        if "path" in spec:
            folder = Path(spec["path"])
        else:
            folder = (cache or cache_dir()) / self.name / f"{name}-{spec['preset']}"
            generation = folder / "generation.json"
            complete = generation.is_file() and json.loads(generation.read_text()).get("status") == "complete"
            if complete and pin and fingerprint(folder) != pin:
                # made by another stackbench from the same recipe: resuming would keep its shards, so start over
                shutil.rmtree(folder)
                complete = False
            if not complete:  # missing, or a killed build (resumed)
                _generate(name, spec["preset"], folder, progress)
        if pin and fingerprint(folder) != pin:
            if "path" in spec:
                raise StackbenchError(f"track {self.name}: dataset {name} at {folder}: {self._mismatch(name, folder)};"
                                      " give the track's own dataset")
            raise StackbenchError(f"track {self.name}: dataset {name}, regenerated from its preset into {folder}, is "
                                  f"not the pinned data: {self._mismatch(name, folder)}; {_versions_note(spec)}. Use "
                                  f"the pinned data itself: --dataset {name}=PATH or hf:REPO@REV (a copy whose "
                                  f"fingerprint is {pin[:12]})")
        return folder

    def given_folder(self, name: str, ref: str) -> Path:
        """A user's copy of dataset `name` (a folder or hf:REPO@REV), checked: a dataset folder whose fingerprint is
        the pin. Every refusal is one line that starts with the option as given."""
        from ..datafolder import list_shards, resolve

        what, fix = f"--dataset {name}={ref}", f"give a copy of the track's {name} data (its folder or hf:REPO@REV)"
        try:
            local = not ref.startswith("hf:")
            if local and not Path(ref).is_dir():
                raise StackbenchError("is a file" if Path(ref).exists() else "no such folder")
            folder, _ = resolve(ref)
            if not list_shards(folder):
                raise StackbenchError("not a dataset folder (no data/*.parquet)")
            pin = self.datasets[name].get("fingerprint")
            if pin and fingerprint(folder) != pin:
                raise StackbenchError(self._mismatch(name, folder))
        except OSError as e:
            raise StackbenchError(f"{what:.200}: cannot be read ({first_line(e, 60)}); {fix}") from None
        except StackbenchError as e:
            raise StackbenchError(f"{what:.200}: {str(e).splitlines()[0][:300]}; {fix}") from None
        return folder

    def _mismatch(self, name: str, folder: Path) -> str:
        """What differs between a folder and the pin: the first item whose pixels differ and how many do."""
        from ..datafolder import item_pixels

        spec = self.datasets[name]
        head = f"fingerprint {fingerprint(folder)[:12]}, the track pins {spec['fingerprint'][:12]}"
        pinned = spec.get("item_pixels")
        if not pinned:
            return head
        got = item_pixels(folder)
        if len(got) != len(pinned):
            return f"{head} ({len(got)} items, the pin has {len(pinned)})"
        bad = [i for (i, px), want in zip(got, pinned, strict=True) if px != want]
        if not bad:
            return f"{head} (every item's pixels are the pinned ones: another column differs)"
        return f"{head}: item {bad[0]} is the first whose pixels differ; {len(bad)} of {len(got)} items differ"


def _versions_note(spec: dict) -> str:
    """Whether this machine has the library versions the pinned data was made with."""
    from ..versions import versions

    made = spec.get("versions") or {}
    here = versions(*[k for k in made if k not in ("stackbench", "python")], python=False)
    other = [f"{k} {here[k]} (the pin's: {v})" for k, v in made.items() if k in here and here[k] != v]
    if other:
        return "this machine's " + ", ".join(other) + " may render other pixels"
    return ("this machine has the library versions the pin was made with" + (f" ({', '.join(made)})" if made else "")
            + ", so the difference is a CPU dependence stackbench does not know of: please report it")


def pin(folder: Path) -> dict:
    """What a track pins of a dataset folder: its fingerprint, each item's pixel digest (so a mismatch names the
    item) and the library versions that rendered it."""
    from ..datafolder import item_pixels, read_generation

    made = read_generation(folder).get("versions") or {}
    keep = ("numpy", "pillow", "pyarrow", "datasets", "torch")
    return {"fingerprint": fingerprint(folder), "item_pixels": [px for _, px in item_pixels(folder)],
            "versions": {k: made[k] for k in keep if k in made}}


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


def given_datasets(t: Track, datasets) -> dict[str, str]:
    """`--dataset NAME=REF` overrides ({name: ref} or (name, ref) pairs), checked before any work: names of the
    track's datasets, each once, each a dataset folder whose fingerprint is the pin. -> {name: local folder}."""
    pairs = list(datasets.items() if isinstance(datasets, dict) else datasets or ())
    seen: set[str] = set()
    for name, ref in pairs:  # every name first: a wrong one is said before any folder is read
        if name not in t.datasets:
            raise StackbenchError(f"--dataset {name:.80}={ref:.80}: track {t.name} has no dataset {name[:80]!r}"
                                  f"{close_matches(name, t.datasets)}; its datasets: {', '.join(t.datasets)}")
        if not isinstance(ref, str) or not ref:
            raise StackbenchError(f"--dataset {name}=: give a folder or hf:REPO@REV after the '='")
        if name in seen:
            raise StackbenchError(f"--dataset {name} is given twice; give each dataset once")
        seen.add(name)
    return {name: str(t.given_folder(name, ref)) for name, ref in pairs}


def get_track(track: str | Track, store: Path | None = None) -> Track:
    if isinstance(track, Track):
        return track
    tracks = load_tracks(store)
    if track not in tracks:
        raise StackbenchError(f"unknown track {track!r}{close_matches(track, tracks)}; tracks: {', '.join(tracks)}")
    return tracks[track]


