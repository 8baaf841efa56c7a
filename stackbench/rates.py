"""Measured rates behind the time estimates of `stackbench demo --dry-run` and `reproduce --dry-run`.

An estimate is a measured cost scaled to this machine as it is now: the cost per image of the evaluate step (every
method at batch 16) was measured on some machine together with a calibration there (one forward + backward of the
model over CALIB_IMAGES images); the dry run times the same calibration here, now, and scales. A demo that runs
for real records its own measurement for this machine (in the cache), which later estimates use instead of the
shipped reference. The calibration captures the load of the machine and the model's size (vgg16 vs minivgg).
"""
from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

from .progress import machine

CALIB_IMAGES = 4
# The evaluate step's cost in units of one image with mu only; an image that also gets the board's axes (three
# more explanations, deletion steps) costs AXES_UNITS (the split measured for the demo's first estimates).
AXES_UNITS = 2.5 / 1.2
# The shipped measurements, per architecture (a ViT runs other methods, at another cost per forward), used until this
# machine has its own: the default `stackbench demo` from a fresh clone (100 images per set, axes on 20; 5 min 47 s)
# and `stackbench demo --model minivit-masked@random` (221 s by its own clock), their rates.json entries copied
# here. Measured on a 2-core machine with nothing else running (the load is the demo's own); the calibration
# carries another machine's speed and load over.
REFERENCES = {
    "vgg": {"unit_s": 1.174, "calib_s": 0.1201, "machine": "AMD EPYC, 2 cores, idle", "date": "2026-11-28",
            "model": "minivgg-masked"},
    "vit": {"unit_s": 0.7613, "calib_s": 0.03373, "machine": "AMD EPYC, 2 cores, idle", "date": "2026-11-29",
            "model": "minivit-masked@random"},
}


def cache_file() -> Path:
    return Path(os.environ.get("STACKBENCH_CACHE", Path.home() / ".cache" / "stackbench")) / "rates.json"


def machine_key(device: str, arch: str) -> str:
    """The machine without its load (the calibration carries the load), and the architecture measured."""
    return f"{machine().split(', load')[0]} [{device.split(':')[0]}] {arch}"


def calibrate(model: str, device: str) -> tuple[float, str]:
    """(seconds of one forward + backward of `model` (its architecture, randomly initialised: the same cost) over
    CALIB_IMAGES images here, now: the best of three after a warm-up; the model's architecture)."""
    import torch

    from .models import create_model, load_model

    if isinstance(model, torch.nn.Module):  # a model object: a copy (the backward must not touch its gradients)
        net = copy.deepcopy(model)
    else:
        try:
            net = create_model(str(model).split("@")[0], seed=0)
        except Exception:  # noqa: BLE001 - a folder, hf: or paper: reference: load it (its size is its cost)
            net = load_model(model)
    net = net.to(device).eval()
    x = torch.rand(CALIB_IMAGES, 3, *net.input_size, device=device)
    times = []
    for _ in range(4):  # the first is a warm-up (kernel selection, allocations): not counted
        t0 = time.perf_counter()
        xi = x.clone().requires_grad_(True)
        net(xi).max(dim=1).values.sum().backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times[1:]), getattr(net, "arch", "vgg")


def recorded(device: str, arch: str) -> dict | None:
    try:
        return json.loads(cache_file().read_text()).get(machine_key(device, arch))
    except (OSError, ValueError, AttributeError):
        return None


def record(device: str, arch: str, model: str, unit_s: float, calib_s: float) -> None:
    """Keep this machine's measured cost for the next estimates (best effort: a read-only cache is no error)."""
    from .datafolder import atomic_write_json

    path = cache_file()
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
        data[machine_key(device, arch)] = {"unit_s": unit_s, "calib_s": calib_s, "machine": machine(),
                                           "model": model, "date": time.strftime("%Y-%m-%d")}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, data)
    except (OSError, ValueError, TypeError):
        pass


def per_unit(model: str, device: str) -> tuple[float, str]:
    """(seconds per unit of the evaluate step here, now; where that comes from, in words)."""
    now, arch = calibrate(model, device)
    base = recorded(device, arch) or REFERENCES.get(arch, REFERENCES["vgg"])
    unit = base["unit_s"] * now / base["calib_s"]
    when = f" on {base['date']}" if base.get("date") else ""
    name = str(model).split("@")[0] if isinstance(model, (str, Path)) else type(model).__name__
    return unit, (f"measured on {base['machine']}{when} with {base['model']}, scaled by a calibration timed here "
                  f"now ({machine()}: {now:.2f} s for a forward + backward of {name} over "
                  f"{CALIB_IMAGES} images; {base['calib_s']:.2f} s there)")
