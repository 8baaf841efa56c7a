"""A training run's settings (`TrainConfig`, the presets), its model, optimiser and learning-rate schedule."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields

import torch
from torch import nn

from ..errors import StackbenchError
from ..progress import log


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
    # Dense supervision (ViTs): an auxiliary training-only head on every live token predicts the object's coverage of
    # its 4x4 sub-cells from the source's object masks (binary cross-entropy), added with this weight; 0: off. The
    # head is not part of the saved classifier.
    aux_masks: float = 0.0
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
            ("aux_masks", finite(self.aux_masks) and self.aux_masks >= 0, "zero or more"),
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
    # The mini-vit track's model (minivit-masked: patch 16, 64 wide, 4 blocks, an hMLP stem, sin-cos positions and a
    # conv head over the live tokens; see models.zoo) with the object-mask loss, fp32: 16,000 shapes seen 10 times
    # (160,000 images), AdamW 1e-3 with a 2% warm-up then cosine, batch 32. The recipe of a measurement on a 2-core
    # CPU (FIELD_NOTES, 2026-12-05): every class-token ViT tried stayed at chance; this one reached 91% in about 12
    # training minutes. Training leaves the dead tokens out (`WalledViT.live_logits`).
    "mini-vit": TrainConfig(model="minivit-masked", source="shapes:16000", val_source="shapes:1000", epochs=10,
                            batch_size=32, optimizer="adamw", lr=1e-3, weight_decay=0.05, schedule="onecycle",
                            warmup_fraction=0.02, label_smoothing=0.1, crop_scale=(0.8, 1.0), val_resize=224,
                            mixed_precision="auto", cache_images=True, aux_masks=1.0, seed=3, preset="mini-vit"),
}


def default_preset(model: str | None) -> str:
    """The recipe a model name starts from: mini for the minivgg models (and no model), mini-vit for the minivit
    models, paper otherwise."""
    model = model or "minivgg"
    return "mini" if model.startswith("minivgg") else "mini-vit" if model.startswith("minivit") else "paper"


def preset(name: str, **overrides) -> TrainConfig:
    if name not in PRESETS:
        raise StackbenchError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)




def model_name(cfg: TrainConfig) -> str | None:
    """The zoo name `cfg.model` starts from (None for ARCH:PATH / ARCH:hf:REPO, another library's weights),
    checked: an unknown name is one clear line, before any data is read."""
    from ..models import get_entry
    from ..refs import model_ref

    ref = model_ref(cfg.model)
    if ref.scheme == "arch":
        return None
    name = ref.body if ref.scheme == "random" else cfg.model
    get_entry(name)
    return name


def build_model(cfg: TrainConfig, num_source_classes: int, class_names=None):
    """`cfg.model`: a zoo name (randomly initialised with `cfg.seed`), or ARCH:PATH / ARCH:hf:REPO (another
    library's ViT weights with ARCH's wall, fine-tuned)."""
    from ..models import create_model

    name = model_name(cfg)
    pretrained = name is None
    n = cfg.num_classes or num_source_classes
    if n != num_source_classes:
        raise StackbenchError(f"--num-classes {n} does not match the source {cfg.source}, which has "
                              f"{num_source_classes} classes; leave --num-classes out to size the head to the source")
    if num_source_classes < 2:
        raise StackbenchError(f"source {cfg.source} has {num_source_classes} class; a classifier needs at least 2")
    model = _pretrained(cfg, n) if pretrained else create_model(name, seed=cfg.seed, num_classes=n)
    model.class_names = list(class_names) if class_names is not None else None  # saved as id2label / label2id
    if cfg.dropout is not None:
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = float(cfg.dropout)
    return model


def _pretrained(cfg: TrainConfig, n: int) -> nn.Module:
    """The ViT checkpoint `cfg.model` names, walled; its head replaced by a fresh seeded one when the source has
    another number of classes (everything below the head is what fine-tuning starts from)."""
    from ..models import load_model

    model = load_model(cfg.model)
    if model.num_classes != n:
        old = model.num_classes
        with torch.random.fork_rng(devices=[]):  # seeded, and the global RNG left as it was
            torch.manual_seed(cfg.seed)
            head = nn.Linear(model.head.in_features, n)
            nn.init.trunc_normal_(head.weight, std=0.02)  # WalledViT's head init (timm's)
            nn.init.zeros_(head.bias)
        model.head, model.num_classes = head, n
        # save_pretrained writes this config: it must build the new head, and the old class names are gone
        model._hub_mixin_config = {**model._hub_mixin_config, "num_classes": n, "id2label": None, "label2id": None}
        log.info(f"{cfg.model}: its head has {old} classes and the source {cfg.source} has {n}; training a fresh "
            f"{n}-class head (seed {cfg.seed}) on the loaded ViT")
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
