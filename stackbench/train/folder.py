"""The run's output folder: what a run may replace, the checkpoint's state, the log, the record and card, the
weights (written whole or not at all)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from ..cards.model import describe_optimizer, write_card
from ..datafolder import atomic_write_bytes, atomic_write_json
from ..errors import StackbenchError
from ..models import file_sha256, load_model, weights_fingerprint
from ..versions import versions
from ..wall import check, dead_zone
from .config import TrainConfig, make_optimizer

CHECKPOINT = "checkpoint"
STATE = "trainer_state.json"
LOG = "train_log.jsonl"
RECORD = "train.json"
# What a previous run leaves in its folder: --overwrite removes exactly these, nothing else.
RUN_FILES = ("config.json", "model.safetensors", "README.md", LOG, RECORD, CHECKPOINT, CHECKPOINT + ".tmp")


# ---------------------------------------------------------------------------------------------------- output folder


def prepare_out(out: Path, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise StackbenchError("--resume and --overwrite contradict each other; give one")
    if resume:
        if not (out / CHECKPOINT / STATE).is_file():
            raise StackbenchError(f"nothing to resume in {out}: no {CHECKPOINT}/{STATE}; start a new run without "
                                  "--resume")
        return
    if out.exists() and not out.is_dir():
        raise StackbenchError(f"output {out} is a file; give a folder for --out")
    for stale in out.glob(".weights-*"):  # the staging folder of a run killed while saving its weights
        shutil.rmtree(stale, ignore_errors=True)
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not present:
        return
    ours = [p for p in present if p in RUN_FILES]
    if not overwrite and not ours:  # neither --resume nor --overwrite would take it: say only what will work
        raise StackbenchError(f"output folder {out} holds other files ({', '.join(present[:4])}), not a training "
                              "run; choose another --out")
    if not overwrite:
        raise StackbenchError(f"output folder {out} holds another training run ({', '.join(present[:4])}); pass "
                              "--resume to continue it, --overwrite to replace it, or choose another --out")
    foreign = [p for p in present if p not in RUN_FILES]
    if foreign:
        raise StackbenchError(f"output folder {out} holds files that are not a training run ({', '.join(foreign[:4])});"
                              " --overwrite only replaces a previous run: choose another --out")
    for p in ours:
        path = out / p
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def file_digests(folder: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != STATE}


def stored_config(out: Path) -> TrainConfig:
    """The settings of the run in `out` (to resume it with changes); one clear line when there is none."""
    try:
        return TrainConfig.from_dict(json.loads((out / CHECKPOINT / STATE).read_text())["config"])
    except (OSError, ValueError, KeyError, TypeError):
        raise StackbenchError(f"nothing to resume in {out}: no readable {CHECKPOINT}/{STATE}; start a new run "
                              "without --resume") from None


def read_state(out: Path) -> dict:
    ck = out / CHECKPOINT
    fix = f"the checkpoint in {ck} is corrupt or incomplete"
    hint = "; delete it and start again with --overwrite"
    try:
        state = json.loads((ck / STATE).read_text())
        digests = state["files"]
        TrainConfig.from_dict(state["config"])
    except (OSError, ValueError, KeyError, TypeError, StackbenchError) as e:
        raise StackbenchError(f"{fix} ({STATE}: {type(e).__name__}: {e}){hint}") from None
    for name, digest in digests.items():
        path = ck / name
        if not path.is_file():
            raise StackbenchError(f"{fix} ({name} is missing){hint}")
        if file_sha256(path) != digest:
            raise StackbenchError(f"{fix} ({name} does not match its recorded sha256){hint}")
    return state




def write_log(out: Path, log: list[dict]) -> None:
    atomic_write_bytes(out / LOG, "".join(json.dumps(r, sort_keys=True) + "\n" for r in log).encode())


def write_run(model, cfg, out, run, src_info, world, device, mixed_precision, steps_per_epoch, train_skips,
            val_skips, stopped_metrics: dict | None = None) -> dict:
    """Main process: weights, wall check, record, card. `stopped_metrics`: a stopped run's top-1/top-5 on the
    weights it leaves (None: a finished run, its last epoch's)."""
    model = model.float().to(memory_format=torch.contiguous_format).cpu().eval()
    zone = dead_zone(model, model.input_size, seed=cfg.seed)
    result = check(model, model.input_size, seed=cfg.seed, zone=zone)
    first = next((m for m in model.modules() if hasattr(m, "dead_weight_norm")), None)  # a VGG's walled layer
    dead_max = first.dead_weight_norm() if first is not None else None
    wall = {"declared": str(model.wall), "traced_rows": [min(zone.rows), max(zone.rows)] if zone.rows else [],
            "check": str(result), "identical": bool(result.identical), "dead_weight_max": dead_max,
            "verdict": "PASS" if result.holds(model.wall) else "FAIL"}
    last = stopped_metrics or (run["log"][-1] if run["log"] else {})
    summary = {
        "schema": "stackbench.train/1", "finished": stopped_metrics is None, "out": str(out), "model": model.name,
        "weights_fingerprint": weights_fingerprint(model), "num_classes": model.num_classes, "config": cfg.to_dict(),
        "sources": src_info, "skipped": {"train": train_skips, "val": val_skips},
        "metrics": {"top1": last.get("top1"), "top5": last.get("top5"), "val_loss": last.get("val_loss"),
                    "val_n": last.get("val_n"), "split": f"{src_info['val']['ref']} ({src_info['val']['split']})"},
        "wall": wall, "steps": run["global_step"], "steps_per_epoch": steps_per_epoch,
        "optimizer": describe_optimizer(make_optimizer(cfg, model)),  # the run's class and settings, as torch has them
        "timing": {"seconds": run["seconds"], "device": device, "processes": world,
                   "mixed_precision": mixed_precision, "torch_threads": torch.get_num_threads()},
        "env": versions("torch", "torchvision", "accelerate"), "log": run["log"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(out / RECORD, {k: v for k, v in summary.items() if k != "out"})  # no path of this machine
    write_card(out, summary)
    save_weights(model, out)  # last: a loadable folder means its record and card are there (finished or not)
    return summary




def save_weights(model, out: Path) -> None:
    """save_pretrained through a staging folder: model.safetensors, then config.json (what makes the folder
    loadable) appear whole, or not at all."""
    stage = Path(tempfile.mkdtemp(dir=out, prefix=".weights-"))
    config = dict(model._hub_mixin_config)
    names = getattr(model, "class_names", None)
    if names:  # transformers' convention: what the outputs mean travels with the weights
        config.update(id2label={str(i): n for i, n in enumerate(names)}, label2id={n: i for i, n in enumerate(names)})
    try:
        model.save_pretrained(stage, config=config)
        for name in ("model.safetensors", "config.json"):
            os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def export_weights(model_ref: str | Path, dest: str | Path, dtype: torch.dtype = torch.float16) -> str:
    """Write a trained model's state_dict as one safetensors file with its floating tensors cast to `dtype` (the
    zoo's shipped weights: fp16 halves the file; 0 is exact in fp16, so the wall columns stay zero). Returns the
    file's sha256, which goes into the zoo entry's Weights(sha256=...)."""
    from safetensors.torch import save

    model = load_model(str(model_ref))
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
             for k, v in model.state_dict().items()}
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # One metadata key only: safetensors writes the metadata map in no fixed order, and the bytes must not vary.
    atomic_write_bytes(dest, save(state, metadata={"format": "pt"}))
    return file_sha256(dest)
