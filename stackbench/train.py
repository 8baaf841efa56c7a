"""Training the walled models on accelerate: one CPU, one GPU, or many (`accelerate launch` / `torchrun`).

    from stackbench.train import preset, train
    summary = train(preset("mini"), "runs/mini")          # or TrainConfig(model=..., source=..., ...)

Reproducibility is by construction, not by luck: the sample order of epoch e is a permutation drawn from a
generator seeded by (seed, e); the augmentation of item i in epoch e is seeded by (seed, e, i); the global torch
RNG (dropout) is re-seeded by (seed, step, process) before every step; the learning rate is a pure function of
the step. So a run stopped after k steps and resumed gives bitwise the same weights (on CPU) as one that never
stopped: the checkpoint (accelerate's save_state: model, optimiser, scheduler, scaler, RNG states) plus the step
counter is the whole state, and the finished batches of the epoch are skipped without being loaded.

Output folder:
    config.json, model.safetensors   save_pretrained weights (loadable with --model OUT; a run stopped by
                                     --max-steps or Ctrl-C leaves its weights so far, train.json finished: false)
    README.md                        model card (cards/model_card.md): recipe, top-1/top-5, wall verdict
    train_log.jsonl                  one line per epoch: loss, top1, top5, images/s, seconds
    train.json                       the run record: config, sources (fingerprints), metrics, wall, env, timing
    checkpoint/                      resumable state (removed by nothing: resume or inspect it later)
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .datafolder import atomic_write_bytes, atomic_write_json
from .errors import StackbenchError, first_line
from .model_card import describe_optimizer, write_card  # noqa: F401 - train.write_card stays importable
from .progress import LOG_EVERY_S, Progress, log, quiet_libraries
from .models.vgg import IMAGENET_MEAN, IMAGENET_STD
from .versions import versions

CHECKPOINT = "checkpoint"
STATE = "trainer_state.json"
LOG = "train_log.jsonl"
RECORD = "train.json"
# What a previous run leaves in its folder: --overwrite removes exactly these, nothing else.
RUN_FILES = ("config.json", "model.safetensors", "README.md", LOG, RECORD, CHECKPOINT, CHECKPOINT + ".tmp")


@dataclass
class TrainConfig:
    """A training recipe. Every field is recorded in train.json and the model card."""

    model: str = "minivgg-masked"          # zoo architecture (randomly initialised with `seed`)
    source: str = "shapes"                 # see stackbench.sources.open_source
    train_split: str | None = "train"
    val_source: str | None = None          # default: `source`
    val_split: str | None = "val"
    num_classes: int | None = None         # default: the source's class count (an explicit mismatch is refused)
    epochs: int = 90
    batch_size: int = 256                  # global: split over the processes
    optimizer: str = "sgd"                 # sgd | adamw
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"                 # step (x gamma every step_epochs) | onecycle | cosine
    step_epochs: int = 30
    gamma: float = 0.1
    warmup_fraction: float = 0.3           # onecycle: share of steps rising to lr
    label_smoothing: float = 0.0
    dropout: float | None = None           # None: the architecture's (vgg16: 0.5, minivgg: 0)
    image_size: int = 224
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop scale
    hflip: bool = True
    val_resize: int = 256                  # Resize(val_resize) + CenterCrop(image_size)
    mixed_precision: str = "auto"          # auto (fp16 on CUDA, none on CPU) | no | fp16 | bf16
    channels_last: bool = True             # faster on CUDA and (measured) on CPU
    workers: int | None = None             # DataLoader workers; None: 0 on CPU, min(8, cores) on CUDA
    cache_images: bool = False             # keep decoded images in memory as uint8 tensors (small sources)
    seed: int = 3
    max_steps: int | None = None           # stop (with a checkpoint) after this many steps; resume later
    save_every: int = 0                    # also checkpoint every N steps (0: at the end of each epoch only)
    preset: str | None = None

    # Fields that may differ between a run and its resumption.
    RESUMABLE_CHANGES = ("max_steps", "save_every", "workers")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["crop_scale"] = list(self.crop_scale)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise StackbenchError(f"training config has unknown keys {', '.join(unknown)}")
        d = dict(d)
        if "crop_scale" in d:
            d["crop_scale"] = tuple(d["crop_scale"])
        return cls(**d)

    def check(self) -> "TrainConfig":
        """Refuse settings that cannot train (one line naming the option), before anything is written."""
        finite = lambda v: isinstance(v, (int, float)) and math.isfinite(v)  # noqa: E731
        rules = [
            ("epochs", self.epochs >= 1, "at least 1"), ("batch_size", self.batch_size >= 1, "at least 1"),
            ("lr", finite(self.lr) and self.lr > 0, "a positive number"),
            ("momentum", finite(self.momentum) and 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", finite(self.weight_decay) and self.weight_decay >= 0, "zero or more"),
            ("step_epochs", self.step_epochs >= 1, "at least 1"), ("gamma", finite(self.gamma) and self.gamma > 0,
                                                                   "a positive number"),
            ("warmup_fraction", finite(self.warmup_fraction) and 0 < self.warmup_fraction < 1, "in (0, 1)"),
            ("label_smoothing", finite(self.label_smoothing) and 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("dropout", self.dropout is None or (finite(self.dropout) and 0 <= self.dropout < 1), "in [0, 1)"),
            ("crop_scale", len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
             "two numbers 0 < low <= high <= 1"),
            ("val_resize", self.val_resize >= self.image_size, f"at least the image size {self.image_size}"),
            ("num_classes", self.num_classes is None or self.num_classes >= 2, "at least 2"),
            ("workers", self.workers is None or self.workers >= 0, "zero or more"),
            ("max_steps", self.max_steps is None or self.max_steps >= 1, "at least 1"),
            ("save_every", self.save_every >= 0, "zero or more"),
            ("optimizer", self.optimizer in ("sgd", "adamw"), "sgd or adamw"),
            ("schedule", self.schedule in ("step", "onecycle", "cosine"), "step, onecycle or cosine"),
            ("mixed_precision", self.mixed_precision in ("auto", "no", "fp16", "bf16"), "auto, no, fp16 or bf16"),
        ]
        for name, ok, want in rules:
            if not ok:
                option = {"workers": "num-proc"}.get(name, name.replace("_", "-"))  # the CLI's name for it
                raise StackbenchError(f"--{option} {getattr(self, name)!r}: must be {want}; nothing was written")
        return self

    def replace(self, **changes) -> "TrainConfig":
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, TrainConfig] = {
    # The authors' recipe (their train.py): SGD 0.03/0.9/1e-4, StepLR(30, 0.1), 90 epochs, batch 256, AMP, seed 3,
    # standard ImageNet transforms.
    "paper": TrainConfig(model="vgg16-masked", source="imagefolder:imagenet", epochs=90, batch_size=256,
                         optimizer="sgd", lr=0.03, momentum=0.9, weight_decay=1e-4, schedule="step", step_epochs=30,
                         gamma=0.1, crop_scale=(0.08, 1.0), val_resize=256, mixed_precision="auto", seed=3,
                         preset="paper"),
    # The mini track's model, trained on a 2-core CPU: bf16 autocast (AVX-512 BF16 runs it 1.5-1.9x faster than fp32
    # there), AdamW at 1e-3 with a cosine decay from the first step (2e-3 and 3e-3 stayed at chance for the first
    # 6,400 images; a one-cycle warm-up only delays the start), 8,000 distinct shapes seen 7 times (56,000 images),
    # mild crops (train accuracy tracks val accuracy: the model underfits, more augmentation only slows it).
    "mini": TrainConfig(model="minivgg-masked", source="shapes:8000", val_source="shapes:1000", epochs=7,
                        batch_size=32, optimizer="adamw", lr=1e-3, weight_decay=0.05, schedule="cosine",
                        label_smoothing=0.1, crop_scale=(0.8, 1.0), val_resize=224, mixed_precision="bf16",
                        cache_images=True, seed=3, preset="mini"),
}


def preset(name: str, **overrides) -> TrainConfig:
    if name not in PRESETS:
        raise StackbenchError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)


# ---------------------------------------------------------------------------------------------------- data


def _seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of the parts (SeedSequence mixes them well)."""
    a, b = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(a) << 31 | int(b) >> 1) & ((1 << 63) - 1)


def train_augment(cfg: TrainConfig):
    """RandomResizedCrop + flip on uint8 CHW tensors (torchvision.transforms.v2: measured ~1.7x faster than the PIL
    path on CPU, which matters when the CPU is also the trainer). Its output stays uint8: see `to_input`."""
    from torchvision.transforms import v2

    steps = [v2.ToImage(), v2.RandomResizedCrop(cfg.image_size, scale=tuple(cfg.crop_scale), antialias=True)]
    if cfg.hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def val_geometry(cfg: TrainConfig):
    """Resize(val_resize) + CenterCrop, on uint8 CHW tensors (or PIL images); uint8 out."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(cfg.val_resize, antialias=True), v2.CenterCrop(cfg.image_size), v2.ToImage()])


def to_input(x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 image (3, H, W) or batch (N, 3, H, W) -> float32 scaled to [0, 1] and ImageNet-normalised, on x's device.

    These are v2.ToDtype(scale=True) and v2.Normalize's own kernels, elementwise, so a batch gets bitwise what each
    image would get alone. Done once per batch (timm's prefetcher does the same): a quarter of the bytes to collate
    and move to the GPU, and two float passes per batch instead of three per image."""
    from torchvision.transforms.v2 import functional as TF

    x = x.as_subclass(torch.Tensor)  # a plain tensor: tv_tensors' __torch_function__ costs per op
    x = TF.normalize(TF.to_dtype(x, torch.float32, scale=True), IMAGENET_MEAN, IMAGENET_STD, inplace=True)
    # The layout change last: the broadcast ops above run ~2x faster on the contiguous layout (measured).
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


def train_transform(cfg: TrainConfig):
    """One image, PIL or uint8 -> the normalised float tensor the trainer feeds (augment, then `to_input`)."""
    from torchvision.transforms import v2

    return v2.Compose([train_augment(cfg), v2.Lambda(to_input)])  # picklable, for DataLoader workers


def val_transform(cfg: TrainConfig):
    """One image, PIL or uint8 -> the normalised float tensor validation feeds (Resize + CenterCrop, `to_input`)."""
    from torchvision.transforms import v2

    return v2.Compose([val_geometry(cfg), v2.Lambda(to_input)])


class SourceDataset(torch.utils.data.Dataset):
    """A stackbench Source as a torch Dataset. Indices are (epoch, i) pairs: the augmentation of item i in epoch
    e is seeded by (seed, e, i), so it does not depend on order, workers, processes or resumption. A bad item
    (SkipImage) becomes None and is dropped by `collate`; it never stops the run."""

    def __init__(self, source, transform, seed: int, cache: bool = False):
        self.source, self.transform, self.seed, self.cache = source, transform, int(seed), cache
        self._images: dict[int, object] = {}
        self.skipped: set[int] = set()

    def __len__(self) -> int:
        return len(self.source)

    def _image(self, i: int):
        from .sources import SkipImage

        if i in self._images:
            return self._images[i]
        try:
            it = self.source.load(i)
        except SkipImage:
            self.skipped.add(i)
            return None
        img = (_to_uint8_chw(it.image), int(it.label))
        if self.cache:
            self._images[i] = img
        return img

    def __getitem__(self, key):
        epoch, i = key if isinstance(key, tuple) else (0, key)
        img = self._image(int(i))
        if img is None:
            return None
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only (what the transforms draw from): torch.manual_seed also seeds every
            # accelerator backend, ~90x slower on a CUDA build (measured), once per image.
            torch.default_generator.manual_seed(_seed(self.seed, epoch, i))
            x = self.transform(img[0])
        return x, img[1]


def _to_uint8_chw(image) -> torch.Tensor:
    """PIL -> (3, H, W) uint8 RGB tensor: a quarter of the memory of float, what the v2 transforms are fastest on."""
    a = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    return torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous()


def collate(batch):
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    x = torch.stack([b[0] for b in batch]).as_subclass(torch.Tensor)  # uint8: `to_input` runs per batch
    return x, torch.tensor([b[1] for b in batch], dtype=torch.long)


class EpochSampler(torch.utils.data.Sampler):
    """Yields (epoch, index): a permutation seeded by (seed, epoch) when shuffling, index order otherwise."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, int(seed), shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(_seed(self.seed, self.epoch)))
        else:
            order = torch.arange(self.n)
        return iter([(self.epoch, int(i)) for i in order])


def open_sources(cfg: TrainConfig, train_source=None, val_source=None):
    """(train, val) Source objects from the config (or given ones), with their class lists checked."""
    from .sources import open_source

    train_src = train_source if train_source is not None else open_source(cfg.source, split=cfg.train_split)
    if val_source is None:
        val_source = open_source(cfg.val_source or cfg.source, split=cfg.val_split)
    if list(val_source.class_names) != list(train_src.class_names):
        raise StackbenchError(f"validation source {val_source.ref} has other classes than training source "
                              f"{train_src.ref} ({val_source.num_classes} vs {train_src.num_classes}); give a "
                              "--val-source with the same class list")
    if len(train_src) == 0:
        raise StackbenchError(f"training source {train_src.ref} (split {cfg.train_split}) has no items")
    if len(val_source) == 0:
        raise StackbenchError(f"validation source {val_source.ref} (split {cfg.val_split}) has no items; "
                              "give --val-source/--val-split")
    return train_src, val_source


def build_model(cfg: TrainConfig, num_source_classes: int, class_names=None):
    from .models import create_model, get_entry

    name = cfg.model[: -len("@random")] if cfg.model.endswith("@random") else cfg.model
    get_entry(name)  # unknown names: one clear line
    n = cfg.num_classes or num_source_classes
    if n != num_source_classes:
        raise StackbenchError(f"--num-classes {n} does not match the source {cfg.source}, which has "
                              f"{num_source_classes} classes; leave --num-classes out to size the head to the source")
    if num_source_classes < 2:
        raise StackbenchError(f"source {cfg.source} has {num_source_classes} class; a classifier needs at least 2")
    model = create_model(name, seed=cfg.seed, num_classes=n)
    model.class_names = list(class_names) if class_names is not None else None  # saved as id2label / label2id
    if cfg.dropout is not None:
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = float(cfg.dropout)
    return model


# ---------------------------------------------------------------------------------------------------- schedule


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning-rate multiplier at optimiser step `step` (a pure function: resumption cannot change it)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "step":
        return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_epochs)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    if cfg.schedule == "onecycle":  # linear warm-up from lr/25, cosine down to ~0 (torch's OneCycleLR shape)
        up = max(1, int(cfg.warmup_fraction * total))
        if step < up:
            return (1 + 24 * step / up) / 25
        t = min(1.0, (step - up) / max(1, total - up))
        return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * t))
    raise StackbenchError(f"unknown schedule {cfg.schedule!r}; use step, onecycle or cosine")


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise StackbenchError(f"unknown optimizer {cfg.optimizer!r}; use sgd or adamw")


# ---------------------------------------------------------------------------------------------------- output folder


def _prepare_out(out: Path, resume: bool, overwrite: bool) -> None:
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
    if not overwrite:
        what = "another training run" if ours else "other files"
        raise StackbenchError(f"output folder {out} holds {what} ({', '.join(present[:4])}); pass --resume to "
                              "continue it, --overwrite to replace it, or choose another --out")
    foreign = [p for p in present if p not in RUN_FILES]
    if foreign:
        raise StackbenchError(f"output folder {out} holds files that are not a training run ({', '.join(foreign[:4])});"
                              " --overwrite only replaces a previous run: choose another --out")
    for p in ours:
        path = out / p
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _file_digests(folder: Path) -> dict[str, str]:
    from .models import file_sha256

    return {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != STATE}


def stored_config(out: Path) -> TrainConfig:
    """The settings of the run in `out` (to resume it with changes); one clear line when there is none."""
    try:
        return TrainConfig.from_dict(json.loads((out / CHECKPOINT / STATE).read_text())["config"])
    except (OSError, ValueError, KeyError, TypeError):
        raise StackbenchError(f"nothing to resume in {out}: no readable {CHECKPOINT}/{STATE}; start a new run "
                              "without --resume") from None


def _read_state(out: Path) -> dict:
    ck = out / CHECKPOINT
    fix = f"the checkpoint in {ck} is corrupt or incomplete"
    hint = "; delete it and start again with --overwrite"
    try:
        state = json.loads((ck / STATE).read_text())
        digests = state["files"]
        TrainConfig.from_dict(state["config"])
    except (OSError, ValueError, KeyError, TypeError, StackbenchError) as e:
        raise StackbenchError(f"{fix} ({STATE}: {type(e).__name__}: {e}){hint}") from None
    from .models import file_sha256

    for name, digest in digests.items():
        path = ck / name
        if not path.is_file():
            raise StackbenchError(f"{fix} ({name} is missing){hint}")
        if file_sha256(path) != digest:
            raise StackbenchError(f"{fix} ({name} does not match its recorded sha256){hint}")
    return state


# ---------------------------------------------------------------------------------------------------- the run


def _accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    cuda = torch.cuda.is_available()
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "fp16" if cuda else "no"
    if mp not in ("no", "fp16", "bf16"):
        raise StackbenchError(f"unknown mixed precision {mp!r}; use auto, no, fp16 or bf16")
    # rng_types=[]: our sampler carries its own seeded generator, nothing to synchronise.
    return Accelerator(cpu=not cuda, mixed_precision=mp, rng_types=[],
                       dataloader_config=DataLoaderConfiguration(even_batches=True))


@torch.no_grad()
def evaluate_topk(model, loader, accelerator, ks=(1, 5)) -> dict:
    """Top-k accuracy (and mean loss) over the whole loader of uint8 batches, summed over processes."""
    model.eval()
    sums = torch.zeros(2 + len(ks), dtype=torch.float64, device=accelerator.device)
    for batch in loader:
        if batch is None:
            continue
        x, y = batch
        with accelerator.autocast():
            logits = model(to_input(x))
        logits, y = accelerator.gather_for_metrics((logits.float(), y))
        sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
        sums[1] += y.numel()
        top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
        hit = top == y[:, None]
        for j, k in enumerate(ks):
            sums[2 + j] += hit[:, :k].any(1).sum().double()
    n = max(float(sums[1]), 1.0)
    return {"val_loss": float(sums[0]) / n, **{f"top{k}": float(sums[2 + j]) / n for j, k in enumerate(ks)},
            "val_n": int(sums[1])}


class _Stop(Exception):
    """max_steps reached."""


def train(config: TrainConfig, out_dir: str | Path, resume: bool = False, overwrite: bool = False,
          train_source=None, val_source=None, progress: bool = True, log_every: int | None = None) -> dict:
    """Train `config.model` on `config.source` into `out_dir`; returns the run summary (also train.json).

    resume=True continues the run in out_dir (its stored config is used; `config` may be None, or must agree
    except for max_steps/save_every/workers). train_source/val_source: Source objects instead of the refs.
    A KeyboardInterrupt saves a checkpoint and re-raises. With config.max_steps the run stops after that many
    steps (summary["finished"] is False) and can be resumed. Either way a stopped run leaves a loadable model
    folder beside its checkpoint. `progress`: a bar on a terminal, else a log line at the first step and then
    every `log_every` steps (every 30 s when None); lines go to the `stackbench` logger.
    """
    out = Path(out_dir)
    accelerator = None
    if config is not None:
        config.check()  # before the output folder is touched
    from accelerate import PartialState

    state0 = PartialState(cpu=not torch.cuda.is_available())
    if state0.is_main_process:
        _prepare_out(out, resume, overwrite)
    state0.wait_for_everyone()
    resumed = None
    if resume:
        resumed = _read_state(out)
        stored = TrainConfig.from_dict(resumed["config"])
        if config is not None:
            diff = [f.name for f in fields(TrainConfig) if f.name not in TrainConfig.RESUMABLE_CHANGES
                    and getattr(config, f.name) != getattr(stored, f.name)]
            if diff:
                raise StackbenchError(f"--resume: the run in {out} was started with other settings ({', '.join(diff)}"
                                      f"); resume it with its own settings (give only --resume --out) or "
                                      "start a new run with --overwrite")
            stored = dataclasses.replace(stored, **{k: getattr(config, k) for k in TrainConfig.RESUMABLE_CHANGES})
        else:
            stored = dataclasses.replace(stored, max_steps=None)  # where it stopped is no part of the recipe
        config = stored
        if resumed.get("finished"):
            raise StackbenchError(f"the run in {out} already finished ({resumed['global_step']} steps); nothing to "
                                  "resume")
    if config is None:
        raise StackbenchError("train() needs a config (or resume=True with a checkpoint)")
    cfg = config
    out.mkdir(parents=True, exist_ok=True)

    accelerator = _accelerator(cfg)
    world, rank = accelerator.num_processes, accelerator.process_index
    if cfg.batch_size % world:
        raise StackbenchError(f"--batch-size {cfg.batch_size} is the global batch; it must be divisible by the "
                              f"{world} processes")
    with quiet_libraries(progress):  # an hf: source's download bars: off with --no-progress and off the terminal
        train_src, val_src = open_sources(cfg, train_source, val_source)
    model = build_model(cfg, train_src.num_classes, train_src.class_names)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    workers = cfg.workers if cfg.workers is not None else (min(8, os.cpu_count() or 1) if torch.cuda.is_available()
                                                           else 0)
    per_proc = cfg.batch_size // world
    train_ds = SourceDataset(train_src, train_augment(cfg), cfg.seed, cache=cfg.cache_images)
    val_ds = SourceDataset(val_src, val_geometry(cfg), cfg.seed, cache=cfg.cache_images)
    sampler = EpochSampler(len(train_ds), cfg.seed, shuffle=True)
    loader_kw = dict(num_workers=workers, collate_fn=collate, pin_memory=torch.cuda.is_available(),
                     persistent_workers=workers > 0)
    train_dl = torch.utils.data.DataLoader(train_ds, batch_size=per_proc, sampler=sampler, drop_last=False, **loader_kw)
    val_dl = torch.utils.data.DataLoader(val_ds, batch_size=per_proc, sampler=EpochSampler(len(val_ds), 0, False),
                                         **loader_kw)
    steps_per_epoch = math.ceil(len(train_ds) / cfg.batch_size)
    optimizer = make_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, steps_per_epoch))
    # The scheduler is stepped by us once per global step (accelerate would step it once per process).
    model, optimizer, train_dl, val_dl = accelerator.prepare(model, optimizer, train_dl, val_dl)
    accelerator.register_for_checkpointing(scheduler)

    src_info = {"train": train_src.describe(), "val": val_src.describe()}
    run = {"epoch": 0, "batch_in_epoch": 0, "global_step": 0, "log": [], "partial": [0.0, 0.0, 0.0, 0.0],
           "seconds": 0.0, "finished": False}
    if resumed:
        if resumed.get("sources") and resumed["sources"]["train"]["fingerprint"] != src_info["train"]["fingerprint"]:
            raise StackbenchError(f"--resume: the training source changed since the run in {out} started (its "
                                  "fingerprint differs); resume with the same source or start again with --overwrite")
        try:
            accelerator.load_state(str(out / CHECKPOINT))
        except Exception as e:  # noqa: BLE001 - any failure to read the state is the same user error
            raise StackbenchError(f"the checkpoint in {out / CHECKPOINT} is corrupt or incomplete "
                                  f"({first_line(e, 160)}); delete "
                                  "it and start again with --overwrite") from None
        for k in run:
            run[k] = resumed.get(k, run[k])

    def save_checkpoint(finished: bool = False):
        """accelerate's save_state into checkpoint.tmp, then a rename: an interrupted save never loses the last
        good checkpoint."""
        tmp, final = out / (CHECKPOINT + ".tmp"), out / CHECKPOINT
        if accelerator.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            state = {**run, "finished": finished, "config": cfg.to_dict(), "sources": src_info,
                     "world_size": world, "files": _file_digests(tmp)}
            atomic_write_json(tmp / STATE, state)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        accelerator.wait_for_everyone()

    unwrapped = accelerator.unwrap_model(model)
    main = accelerator.is_main_process
    if main:
        log.info(f"training {unwrapped.name} ({unwrapped.count_parameters() / 1e6:.1f}M params) on "
                 f"{train_src.ref} [{len(train_ds)} items, {train_src.num_classes} classes], {cfg.epochs} epochs x "
                 f"{steps_per_epoch} steps, batch {cfg.batch_size} on {world} process(es), {accelerator.device}"
                 + (f", resuming at step {run['global_step']}" if resumed else ""))
    bar = _progress(cfg, unwrapped.name, len(train_ds), run["global_step"], progress and main, log_every)

    t_start = time.perf_counter() - run["seconds"]
    # Ctrl-C is deferred to the end of the running step, so the checkpoint holds a whole step (a forward alone
    # already moves batch-norm statistics); a second Ctrl-C stops at once and keeps the last checkpoint.
    interrupted: list[bool] = []
    in_step = [False]

    def on_sigint(signum, frame):
        if interrupted or not in_step[0]:
            raise KeyboardInterrupt
        interrupted.append(True)
        log.warning("Ctrl-C: finishing this step, then saving a checkpoint and the model (Ctrl-C again to stop at "
                    "once)")

    def check_interrupt():
        flag = float(bool(interrupted))
        if world > 1:  # every process stops at the same step
            flag = float(accelerator.reduce(torch.tensor([flag], device=accelerator.device), "sum")[0])
        if flag:
            raise KeyboardInterrupt

    import signal
    import threading

    old_handler = None
    if threading.current_thread() is threading.main_thread():
        old_handler = signal.signal(signal.SIGINT, on_sigint)
    try:
        while run["epoch"] < cfg.epochs:
            epoch = run["epoch"]
            skip = run["batch_in_epoch"]
            loader = accelerator.skip_first_batches(train_dl, skip) if skip else train_dl
            loader.set_epoch(epoch)  # accelerate's loaders pass their own epoch counter to the sampler: set it
            model.train()
            t_epoch = time.perf_counter()
            data_wait = 0.0
            t_wait = time.perf_counter()
            for batch in loader:
                data_wait += time.perf_counter() - t_wait
                if cfg.max_steps is not None and run["global_step"] >= cfg.max_steps:
                    raise _Stop
                in_step[0] = True
                torch.manual_seed(_seed(cfg.seed, run["global_step"], rank))  # dropout: a function of the step
                if batch is not None:
                    x, y = batch
                    x = to_input(x, cfg.channels_last)
                    with accelerator.autocast():
                        logits = model(x)
                        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                    accelerator.backward(loss)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    with torch.no_grad():
                        p = run["partial"]
                        p[0] += float(loss.detach()) * y.numel()
                        p[1] += float((logits.argmax(1) == y).sum())
                        p[2] += y.numel()
                scheduler.step()
                run["global_step"] += 1
                run["batch_in_epoch"] += 1
                bar.update(min(cfg.batch_size, bar.total - bar.n), postfix=_postfix(cfg, run, epoch, steps_per_epoch,
                                                                                    scheduler.get_last_lr()[0]))
                in_step[0] = False
                check_interrupt()
                if cfg.save_every and run["global_step"] % cfg.save_every == 0:
                    run["seconds"] = time.perf_counter() - t_start
                    save_checkpoint()
                t_wait = time.perf_counter()
            # End of epoch: train stats summed over processes, then validation.
            sums = accelerator.reduce(torch.tensor(run["partial"][:3], dtype=torch.float64,
                                                   device=accelerator.device), "sum").tolist()
            epoch_seconds = time.perf_counter() - t_epoch
            metrics = evaluate_topk(model, val_dl, accelerator)
            seconds = time.perf_counter() - t_epoch
            row = {"epoch": epoch + 1, "step": run["global_step"], "loss": sums[0] / max(sums[2], 1),
                   "train_top1": sums[1] / max(sums[2], 1), **metrics,
                   "lr": scheduler.get_last_lr()[0],
                   "images_per_s": sums[2] / max(epoch_seconds, 1e-9) if not skip else None,
                   "data_fraction": data_wait / max(epoch_seconds, 1e-9) if not skip else None,
                   "seconds": seconds, "resumed_mid_epoch": bool(skip)}
            run["log"].append(row)
            run.update(epoch=epoch + 1, batch_in_epoch=0, partial=[0.0, 0.0, 0.0, 0.0])
            if main:
                log.info(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f}, val top-1 {row['top1']:.2%}, top-5 "
                         f"{row['top5']:.2%}, {seconds:.0f} s")
                _write_log(out, run["log"])
            run["seconds"] = time.perf_counter() - t_start
            save_checkpoint()
            if cfg.max_steps is not None and run["global_step"] >= cfg.max_steps and run["epoch"] < cfg.epochs:
                raise _Stop
    except _Stop:
        run["seconds"] = time.perf_counter() - t_start
        bar.close()
        save_checkpoint()
        summary = _leave_model(accelerator, model, val_dl, cfg, out, run, src_info, steps_per_epoch, (train_ds, val_ds))
        if main:
            log.info(f"stopped after {run['global_step']} steps (--max-steps); the model so far is in {out} "
                     f"(stackbench evaluate --model {out}); continue with: stackbench train --resume --out {out}")
        return {**summary, "global_step": run["global_step"], "out": str(out), "log": run["log"]}
    except KeyboardInterrupt:
        run["seconds"] = time.perf_counter() - t_start
        bar.close()
        if in_step[0]:  # stopped inside a step: its state is half-updated; keep the last checkpoint
            saved = json.loads((out / CHECKPOINT / STATE).read_text()) if (out / CHECKPOINT / STATE).is_file() else None
            where = f"the last checkpoint (step {saved['global_step']})" if saved else "no checkpoint"
            log.warning(f"interrupted inside a step: kept {where}; continue with: stackbench train --resume --out "
                        f"{out}")
            raise
        save_checkpoint()
        _leave_model(accelerator, model, val_dl, cfg, out, run, src_info, steps_per_epoch, (train_ds, val_ds))
        log.warning(f"interrupted: checkpoint saved at step {run['global_step']} in {out / CHECKPOINT}, the model "
                    f"so far in {out}; continue with: stackbench train --resume --out {out}")
        raise
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
    bar.close()
    run["seconds"] = time.perf_counter() - t_start
    summary = None
    if main:
        summary = _finish(unwrapped, cfg, out, run, src_info, world, str(accelerator.device),
                          accelerator.mixed_precision, steps_per_epoch,
                          sorted(train_ds.skipped), sorted(val_ds.skipped))
    save_checkpoint(finished=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary if summary is not None else {"finished": True, "out": str(out)}


def _progress(cfg: TrainConfig, name: str, n_items: int, step: int, enabled: bool, log_every: int | None) -> Progress:
    """The run's one bar (terminal) or its log lines (elsewhere: at the first step, then every `log_every` steps,
    or every 30 s when None)."""
    total = cfg.epochs * n_items
    every = LOG_EVERY_S if log_every is None else float("inf")
    return Progress(total, f"train {name}", unit="img", enabled=enabled, initial=min(step * cfg.batch_size, total),
                    every=every, every_n=log_every)


def _postfix(cfg: TrainConfig, run: dict, epoch: int, steps_per_epoch: int, lr: float) -> str:
    """Step, epoch, the epoch's mean loss so far and the learning rate (what people watch to see it learn)."""
    p = run["partial"]
    loss = f"{p[0] / p[2]:.3f}" if p[2] else "-"
    return (f"step {run['global_step']}/{cfg.epochs * steps_per_epoch}, epoch {epoch + 1}/{cfg.epochs}, loss {loss}, "
            f"lr {lr:.3g}")


def _leave_model(accelerator, model, val_dl, cfg, out: Path, run: dict, src_info: dict, steps_per_epoch: int,
                 sets: tuple) -> dict:
    """A stopped run (--max-steps, Ctrl-C) leaves what a finished one does beside its checkpoint: a loadable model
    folder (config.json, model.safetensors), its card and train.json (finished: false), so `stackbench evaluate
    --model OUT` works on it; a resumed run replaces them. Its top-1/top-5 are measured on the weights it leaves
    (the last epoch's, when it stopped at an epoch's end)."""
    last = run["log"][-1] if run["log"] else {}
    metrics = last if last.get("step") == run["global_step"] else evaluate_topk(model, val_dl, accelerator)
    summary = {"finished": False}
    if accelerator.is_main_process:
        summary = _finish(accelerator.unwrap_model(model), cfg, out, run, src_info, accelerator.num_processes,
                          str(accelerator.device), accelerator.mixed_precision, steps_per_epoch,
                          sorted(sets[0].skipped), sorted(sets[1].skipped), stopped_metrics=metrics)
    accelerator.wait_for_everyone()
    return summary


def _write_log(out: Path, log: list[dict]) -> None:
    atomic_write_bytes(out / LOG, "".join(json.dumps(r, sort_keys=True) + "\n" for r in log).encode())


def _finish(model, cfg, out, run, src_info, world, device, mixed_precision, steps_per_epoch, train_skips,
            val_skips, stopped_metrics: dict | None = None) -> dict:
    """Main process: weights, wall check, record, card. `stopped_metrics`: a stopped run's top-1/top-5 on the
    weights it leaves (None: a finished run, its last epoch's)."""
    from .models import weights_fingerprint
    from .wall import check, dead_zone

    model = model.float().to(memory_format=torch.contiguous_format).cpu().eval()
    zone = dead_zone(model, model.input_size, seed=cfg.seed)
    result = check(model, model.input_size, seed=cfg.seed, zone=zone)
    first = model[-1][0]
    dead_max = first.dead_weight_norm() if hasattr(first, "dead_weight_norm") else None
    wall = {"declared": model.wall.describe(), "traced_rows": [min(zone.rows), max(zone.rows)] if zone.rows else [],
            "check": result.describe(), "identical": bool(result.identical), "dead_weight_max": dead_max,
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

    from .datafolder import atomic_write_bytes
    from .models import file_sha256, load_model

    model = load_model(str(model_ref))
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
             for k, v in model.state_dict().items()}
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # One metadata key only: safetensors writes the metadata map in no fixed order, and the bytes must not vary.
    atomic_write_bytes(dest, save(state, metadata={"format": "pt"}))
    return file_sha256(dest)
