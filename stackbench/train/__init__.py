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

Modules: `config` (settings, presets, model, optimiser, schedule), `data` (datasets, sampler, collation), `folder`
(the output folder: checkpoint state, log, record, card, weights) and `loop` (the run in named steps).
"""
from ..cards.model import write_card
from ..models.vgg import IMAGENET_MEAN, IMAGENET_STD
from .config import PRESETS, TrainConfig, build_model, default_preset, lr_factor, make_optimizer, preset
from .data import (
                   EpochSampler,
                   SourceDataset,
                   collate,
                   open_sources,
                   to_input,
                   train_augment,
                   train_transform,
                   val_geometry,
                   val_transform,
)
from .folder import CHECKPOINT, LOG, RECORD, RUN_FILES, STATE, export_weights, save_weights, stored_config
from .loop import defer_sigint, evaluate_topk, train

__all__ = ["CHECKPOINT", "IMAGENET_MEAN", "IMAGENET_STD", "LOG", "PRESETS", "RECORD", "RUN_FILES", "STATE",
           "EpochSampler", "SourceDataset", "TrainConfig", "build_model", "collate", "defer_sigint", "evaluate_topk",
           "default_preset", "export_weights", "lr_factor", "make_optimizer", "open_sources", "preset", "save_weights",
           "stored_config", "to_input", "train", "train_augment", "train_transform", "val_geometry", "val_transform",
           "write_card"]
