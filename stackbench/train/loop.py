"""The run itself, in named steps: resume configuration, data, one step, one epoch, validation, checkpoint and
the three ways out (finished, stopped by --max-steps, interrupted by Ctrl-C, deferred to a step's end)."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch.nn import functional as F

from ..datafolder import atomic_write_json, writable_folder
from ..errors import StackbenchError, first_line
from ..progress import LOG_EVERY_S, Progress, log, quiet_libraries
from .aux import WithMaskHead, mask_loss
from .config import TrainConfig, build_model, lr_factor, make_optimizer, model_name
from .data import (
    EpochSampler,
    SourceDataset,
    collate,
    open_sources,
    seed_of,
    to_input,
    train_augment,
    val_geometry,
)
from .folder import (
    CHECKPOINT,
    STATE,
    file_digests,
    prepare_out,
    read_state,
    write_log,
    write_run,
)

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
    _fresh_state_for(mp)
    # rng_types=[]: our sampler carries its own seeded generator, nothing to synchronise.
    return Accelerator(cpu=not cuda, mixed_precision=mp, rng_types=[],
                       dataloader_config=DataLoaderConfiguration(even_batches=True))


def _fresh_state_for(mp: str) -> None:
    """A second run in one process (a notebook, a test session) with another precision: accelerate keeps its state
    per process and refuses the change ("restart your runtime"). A single process may start over; a launched
    multi-process run keeps its state, which its launcher set."""
    from accelerate.state import AcceleratorState, PartialState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, mp) and PartialState._shared_state.get(
            "num_processes", 1) == 1:
        AcceleratorState._reset_state()


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


class _Diverged(StackbenchError):
    """A non-finite loss: the run stops before the optimiser takes the step."""


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
    if config is not None and not resume:
        model_name(config)  # a wrong model name is named before the source is read or the folder made
    existed = out.exists()
    cfg, resumed = _resume_config(config, out, resume, overwrite)
    accelerator = _accelerator(cfg)
    try:
        trainer = _set_up(cfg, out, accelerator, train_source, val_source, progress)
    except BaseException:
        if accelerator.is_main_process and not existed:  # a bad source or model: leave no empty folder behind
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    if resumed:
        trainer.resume(resumed)
    trainer.announce(bool(resumed), progress, log_every)
    try:
        return trainer.fit()
    except _Diverged as e:
        trainer.bar.close()
        if not existed and not (out / CHECKPOINT).exists() and accelerator.is_main_process:
            shutil.rmtree(out, ignore_errors=True)  # nothing worth keeping: leave no folder behind
            raise StackbenchError(f"{e}, then run again") from None
        raise StackbenchError(f"{e}, then start again with --overwrite --out {out} (its last checkpoint, before "
                              "the divergence, is kept until then)") from None


def _set_up(cfg: TrainConfig, out: Path, accelerator, train_source, val_source, progress: bool) -> "_Trainer":
    """The run's sources, model and trainer; nothing is written yet."""
    world = accelerator.num_processes
    if cfg.batch_size % world:
        raise StackbenchError(f"--batch-size {cfg.batch_size} is the global batch; it must be divisible by the "
                              f"{world} processes")
    with quiet_libraries(progress):  # an hf: source's download bars: off with --no-progress and off the terminal
        train_src, val_src = open_sources(cfg, train_source, val_source)
    if cfg.aux_masks and train_src.load(0).object_mask is None:  # before anything is written
        raise StackbenchError(f"--aux-masks {cfg.aux_masks:g}: source {train_src.ref} does not know where its objects "
                              f"are (item 0 has no object mask); use a source that does (shapes) or {_no_aux(cfg)}")
    model = build_model(cfg, train_src.num_classes, train_src.class_names)
    if cfg.aux_masks:
        if getattr(model, "arch", None) != "vit":
            raise StackbenchError(f"--aux-masks {cfg.aux_masks:g}: {model.name} is not a ViT (the mask loss is read "
                                  f"per token); train a ViT (minivit-*, vit-*) or {_no_aux(cfg)}")
        model = WithMaskHead(model)  # the run's module; the classifier inside it is what is saved
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return _Trainer(cfg, out, accelerator, model, _data(cfg, world, train_src, val_src))


def _no_aux(cfg: TrainConfig) -> str:
    """How to train without the mask loss, naming the preset when that is where the weight came from."""
    from .config import PRESETS

    preset = PRESETS.get(cfg.preset or "")
    source = f" (the preset {cfg.preset} sets it)" if preset and preset.aux_masks == cfg.aux_masks else ""
    return f"give --aux-masks 0{source}"


def _resume_config(config: TrainConfig | None, out: Path, resume: bool,
                   overwrite: bool) -> tuple[TrainConfig, dict | None]:
    """The run's config, checked, and the checkpoint's state when resuming (None otherwise); the main process
    prepares the output folder (refusing one that holds something else) before the others go on."""
    if config is not None:
        config.check()  # before the output folder is touched
    from accelerate import PartialState

    state0 = PartialState(cpu=not torch.cuda.is_available())
    if state0.is_main_process:
        prepare_out(out, resume, overwrite)
        writable_folder(out)  # made here, once, before the other processes go on
    state0.wait_for_everyone()
    resumed = read_state(out) if resume else None
    if resumed is not None:
        config = _resumed_config(config, resumed, out)
    if config is None:
        raise StackbenchError("train() needs a config (or resume=True with a checkpoint)")
    return config, resumed


def _resumed_config(config: TrainConfig | None, resumed: dict, out: Path) -> TrainConfig:
    """A resumed run's stored config, with the changes a resumption may make (TrainConfig.RESUMABLE_CHANGES)."""
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
    if resumed.get("finished"):
        raise StackbenchError(f"the run in {out} already finished ({resumed['global_step']} steps); nothing to "
                              "resume")
    return stored


@dataclass
class _Data:
    """A run's sources, datasets and loaders (not yet prepared by accelerate)."""

    train_src: object
    val_src: object
    train_ds: SourceDataset
    val_ds: SourceDataset
    train_dl: torch.utils.data.DataLoader
    val_dl: torch.utils.data.DataLoader
    steps_per_epoch: int


def _data(cfg: TrainConfig, world: int, train_src, val_src) -> _Data:
    """Datasets and loaders; each of the `world` processes loads its share of the global batch."""
    cuda = torch.cuda.is_available()
    workers = cfg.workers if cfg.workers is not None else (min(8, os.cpu_count() or 1) if cuda else 0)
    per_proc = cfg.batch_size // world
    train_ds = SourceDataset(train_src, train_augment(cfg), cfg.seed, cache=cfg.cache_images, masks=cfg.aux_masks > 0)
    val_ds = SourceDataset(val_src, val_geometry(cfg), cfg.seed, cache=cfg.cache_images)
    sampler = EpochSampler(len(train_ds), cfg.seed, shuffle=True)
    loader_kw = dict(num_workers=workers, collate_fn=collate, pin_memory=cuda, persistent_workers=workers > 0)
    train_dl = torch.utils.data.DataLoader(train_ds, batch_size=per_proc, sampler=sampler, drop_last=False, **loader_kw)
    val_dl = torch.utils.data.DataLoader(val_ds, batch_size=per_proc, sampler=EpochSampler(len(val_ds), 0, False),
                                         **loader_kw)
    return _Data(train_src, val_src, train_ds, val_ds, train_dl, val_dl, math.ceil(len(train_ds) / cfg.batch_size))


@dataclass
class _Run:
    """Where a run stands: with accelerate's saved state, all a checkpoint holds (trainer_state.json's first keys,
    in this order)."""

    epoch: int = 0
    batch_in_epoch: int = 0  # steps of `epoch` done: a resumed run skips their batches without loading them
    global_step: int = 0
    log: list = field(default_factory=list)  # one row per finished epoch
    # The epoch so far: loss sum, hits, images (the fourth is unused; checkpoints have always held four).
    partial: list = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    seconds: float = 0.0  # wall time over all of the run's sessions
    finished: bool = False

    @classmethod
    def from_state(cls, state: dict) -> _Run:
        default = cls()
        return cls(**{f.name: state.get(f.name, getattr(default, f.name)) for f in fields(cls)})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # shallow: `log` stays the run's own list


class _Sigint:
    """What `defer_sigint` yields: `requested` (a Ctrl-C waits for the end of the step: the caller acts on it
    between steps) and `in_step` (inside `step()`; left True when a step raised: its state is half-updated)."""

    def __init__(self):
        self.requested = False
        self.in_step = False

    def handle(self, signum, frame) -> None:
        if self.requested or not self.in_step:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("Ctrl-C: finishing this step, then saving a checkpoint and the model (Ctrl-C again to stop at "
                    "once)")

    @contextlib.contextmanager
    def step(self):
        self.in_step = True
        yield  # no `finally`: a step that raised stays marked as unfinished
        self.in_step = False


@contextlib.contextmanager
def defer_sigint():
    """Ctrl-C inside a `.step()` of what this yields is deferred to the step's end, so a checkpoint holds whole steps
    (a forward alone already moves batch-norm statistics); a second one, or one outside a step, raises
    KeyboardInterrupt at once. Signal handlers are the main thread's only: elsewhere nothing is installed; the old
    handler is restored on exit."""
    sigint = _Sigint()
    old_handler = None
    if threading.current_thread() is threading.main_thread():
        old_handler = signal.signal(signal.SIGINT, sigint.handle)
    try:
        yield sigint
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)


class _Trainer:
    """One run's parts and its named steps: a step, an epoch, validation, a checkpoint, and the three ways out
    (finished, stopped by --max-steps, interrupted by Ctrl-C)."""

    def __init__(self, cfg: TrainConfig, out: Path, accelerator, model, data: _Data):
        self.cfg, self.out, self.accelerator, self.data = cfg, out, accelerator, data
        self.main = accelerator.is_main_process
        optimizer = make_optimizer(cfg, model)
        steps_per_epoch = data.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, steps_per_epoch))
        # The scheduler is stepped by us once per global step (accelerate would step it once per process).
        self.model, self.optimizer, self.train_dl, self.val_dl = accelerator.prepare(model, optimizer, data.train_dl,
                                                                                     data.val_dl)
        accelerator.register_for_checkpointing(self.scheduler)
        self.src_info = {"train": data.train_src.describe(), "val": data.val_src.describe()}
        self.run = _Run()
        self.unwrapped, self.bar, self.t_start = None, None, 0.0

    def resume(self, resumed: dict) -> None:
        """Continue from the checkpoint: the same training data, accelerate's state, the run's position."""
        out = self.out
        sources = resumed.get("sources")
        if sources and sources["train"]["fingerprint"] != self.src_info["train"]["fingerprint"]:
            raise StackbenchError(f"--resume: the training source changed since the run in {out} started (its "
                                  "fingerprint differs); resume with the same source or start again with --overwrite")
        try:
            self.accelerator.load_state(str(out / CHECKPOINT))
        except Exception as e:  # noqa: BLE001 - any failure to read the state is the same user error
            raise StackbenchError(f"the checkpoint in {out / CHECKPOINT} is corrupt or incomplete "
                                  f"({first_line(e, 160)}); delete "
                                  "it and start again with --overwrite") from None
        self.run = _Run.from_state(resumed)

    def announce(self, resuming: bool, progress: bool, log_every: int | None) -> None:
        """The run's first log line, and its progress bar (or log lines)."""
        cfg, acc, data = self.cfg, self.accelerator, self.data
        unwrapped = acc.unwrap_model(self.model)
        if isinstance(unwrapped, WithMaskHead):
            unwrapped = unwrapped.model  # the classifier is what is saved and recorded, not the mask head
        self.unwrapped = unwrapped
        if self.main:
            log.info(f"training {unwrapped.name} ({unwrapped.count_parameters() / 1e6:.2f}M params) on "
                     f"{data.train_src.ref} [{len(data.train_ds)} items, {data.train_src.num_classes} classes], "
                     f"{cfg.epochs} epochs x {data.steps_per_epoch} steps, batch {cfg.batch_size} on "
                     f"{acc.num_processes} process(es), {acc.device}"
                     + (f", with the object-mask loss (weight {cfg.aux_masks:g})" if cfg.aux_masks else "")
                     + (f", resuming at step {self.run.global_step}" if resuming else ""))
        self.bar = _progress(cfg, unwrapped.name, len(data.train_ds), self.run.global_step, progress and self.main,
                             log_every)

    def fit(self) -> dict:
        """Epochs to the last, then the finished run's summary; --max-steps returns a stopped run's summary, Ctrl-C
        re-raises once the run is left resumable."""
        self.t_start = time.perf_counter() - self.run.seconds
        with defer_sigint() as sigint:
            try:
                while self.run.epoch < self.cfg.epochs:
                    self._epoch(sigint)
            except _Stop:
                return self._stopped()
            except KeyboardInterrupt:
                self._interrupted(sigint.in_step)
                raise
        return self._finished()

    def _epoch(self, sigint: _Sigint) -> None:
        """The rest of epoch `run.epoch` (a resumed one skips its finished batches), then its validation."""
        cfg, run = self.cfg, self.run
        epoch, skip = run.epoch, run.batch_in_epoch
        loader = self.accelerator.skip_first_batches(self.train_dl, skip) if skip else self.train_dl
        loader.set_epoch(epoch)  # accelerate's loaders pass their own epoch counter to the sampler: set it
        self.model.train()
        t_epoch = time.perf_counter()
        data_wait = 0.0
        t_wait = time.perf_counter()
        for batch in loader:
            data_wait += time.perf_counter() - t_wait
            if cfg.max_steps is not None and run.global_step >= cfg.max_steps:
                raise _Stop
            with sigint.step():
                self._step(batch, epoch)
            self._agree_on_interrupt(sigint)
            if cfg.save_every and run.global_step % cfg.save_every == 0:
                self._clock()
                self._save_checkpoint()
            t_wait = time.perf_counter()
        self._end_epoch(self._validate(epoch, skip, t_epoch, data_wait))

    def _step(self, batch, epoch: int) -> None:
        """One optimiser step; its loss, hits and images are added to the epoch's running sums."""
        cfg, run, acc = self.cfg, self.run, self.accelerator
        torch.manual_seed(seed_of(cfg.seed, run.global_step, acc.process_index))  # dropout: a function of the step
        if batch is not None:
            x, y, *masks = batch
            x = to_input(x, cfg.channels_last)
            with acc.autocast():
                logits = self.model(x)
                if masks:  # WithMaskHead: (logits, the mask head's per-token logits)
                    logits, pred = logits
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                if masks:
                    loss = loss + cfg.aux_masks * mask_loss(pred, masks[0], self.unwrapped)
            if not torch.isfinite(loss.detach()):  # before the step: the weights stay those of the last good one
                bad = float(loss.detach())
                raise _Diverged(f"training diverged at step {run.global_step + 1} (loss {bad:g}); nothing "
                                f"of this step was kept: lower --lr ({cfg.lr:g})"
                                + (f" or --aux-masks ({cfg.aux_masks:g})" if masks else ""))
            acc.backward(loss)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                p = run.partial
                p[0] += float(loss.detach()) * y.numel()
                p[1] += float((logits.argmax(1) == y).sum())
                p[2] += y.numel()
        self.scheduler.step()
        run.global_step += 1
        run.batch_in_epoch += 1
        self.bar.update(min(cfg.batch_size, self.bar.total - self.bar.n),
                        postfix=_postfix(cfg, run, epoch, self.data.steps_per_epoch, self.scheduler.get_last_lr()[0]))

    def _agree_on_interrupt(self, sigint: _Sigint) -> None:
        """Between steps: a deferred Ctrl-C stops the run here, on every process at the same step."""
        flag = float(sigint.requested)
        if self.accelerator.num_processes > 1:
            flag = float(self.accelerator.reduce(torch.tensor([flag], device=self.accelerator.device), "sum")[0])
        if flag:
            raise KeyboardInterrupt

    def _validate(self, epoch: int, skip: int, t_epoch: float, data_wait: float) -> dict:
        """The epoch's log row: its train stats summed over processes, then validation."""
        acc, run = self.accelerator, self.run
        sums = acc.reduce(torch.tensor(run.partial[:3], dtype=torch.float64, device=acc.device), "sum").tolist()
        epoch_seconds = time.perf_counter() - t_epoch
        metrics = evaluate_topk(self.model, self.val_dl, acc)
        seconds = time.perf_counter() - t_epoch
        return {"epoch": epoch + 1, "step": run.global_step, "loss": sums[0] / max(sums[2], 1),
                "train_top1": sums[1] / max(sums[2], 1), **metrics,
                "lr": self.scheduler.get_last_lr()[0],
                "images_per_s": sums[2] / max(epoch_seconds, 1e-9) if not skip else None,
                "data_fraction": data_wait / max(epoch_seconds, 1e-9) if not skip else None,
                "seconds": seconds, "resumed_mid_epoch": bool(skip)}

    def _end_epoch(self, row: dict) -> None:
        """The row logged, the next epoch begun, a checkpoint; --max-steps stops here when it falls on this end."""
        cfg, run = self.cfg, self.run
        run.log.append(row)
        run.epoch, run.batch_in_epoch, run.partial = row["epoch"], 0, [0.0, 0.0, 0.0, 0.0]
        if self.main:
            what = "loss (class + mask)" if cfg.aux_masks else "loss"
            log.info(f"epoch {row['epoch']}/{cfg.epochs}: {what} {row['loss']:.4f}, val top-1 {row['top1']:.2%}, top-5 "
                     f"{row['top5']:.2%}, {row['seconds']:.0f} s")
            write_log(self.out, run.log)
        self._clock()
        self._save_checkpoint()
        if cfg.max_steps is not None and run.global_step >= cfg.max_steps and run.epoch < cfg.epochs:
            raise _Stop

    def _clock(self) -> None:
        self.run.seconds = time.perf_counter() - self.t_start

    def _save_checkpoint(self, finished: bool = False) -> None:
        """accelerate's save_state into checkpoint.tmp, then a rename: an interrupted save never loses the last
        good checkpoint."""
        acc = self.accelerator
        tmp, final = self.out / (CHECKPOINT + ".tmp"), self.out / CHECKPOINT
        if acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {**self.run.to_dict(), "finished": finished, "config": self.cfg.to_dict(), "sources": self.src_info,
                     "world_size": acc.num_processes, "files": file_digests(tmp)}
            atomic_write_json(tmp / STATE, state)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        acc.wait_for_everyone()

    def _stopped(self) -> dict:
        """--max-steps: a checkpoint and the model so far; the summary says finished: false."""
        run, out = self.run, self.out
        self._clock()
        self.bar.close()
        self._save_checkpoint()
        summary = self._leave_model()
        if self.main:
            log.info(f"stopped after {run.global_step} steps (--max-steps); the model so far is in {out} "
                     f"(stackbench evaluate --model {out}); continue with: stackbench train --resume --out {out}")
        return {**summary, "global_step": run.global_step, "out": str(out), "log": run.log}

    def _interrupted(self, in_step: bool) -> None:
        """Ctrl-C between steps: a checkpoint and the model so far. Inside a step (a second Ctrl-C) its state is
        half-updated: the last checkpoint is kept. The caller re-raises."""
        out = self.out
        self._clock()
        self.bar.close()
        if in_step:
            saved = json.loads((out / CHECKPOINT / STATE).read_text()) if (out / CHECKPOINT / STATE).is_file() else None
            where = f"the last checkpoint (step {saved['global_step']})" if saved else "no checkpoint"
            log.warning(f"interrupted inside a step: kept {where}; continue with: stackbench train --resume --out "
                        f"{out}")
            return
        self._save_checkpoint()
        self._leave_model()
        log.warning(f"interrupted: checkpoint saved at step {self.run.global_step} in {out / CHECKPOINT}, the model "
                    f"so far in {out}; continue with: stackbench train --resume --out {out}")

    def _finished(self) -> dict:
        """The last epoch done: the model, its record and card (main process), a checkpoint marked finished."""
        acc = self.accelerator
        self.bar.close()
        self._clock()
        summary = self._record() if self.main else None
        self._save_checkpoint(finished=True)
        acc.wait_for_everyone()
        acc.end_training()
        return summary if summary is not None else {"finished": True, "out": str(self.out)}

    def _leave_model(self) -> dict:
        """A stopped run (--max-steps, Ctrl-C) leaves what a finished one does beside its checkpoint: a loadable
        model folder (config.json, model.safetensors), its card and train.json (finished: false), so `stackbench
        evaluate --model OUT` works on it; a resumed run replaces them. Its top-1/top-5 are measured on the weights
        it leaves (the last epoch's, when it stopped at an epoch's end)."""
        run = self.run
        last = run.log[-1] if run.log else {}
        metrics = last if last.get("step") == run.global_step else evaluate_topk(self.model, self.val_dl,
                                                                                  self.accelerator)
        summary = self._record(stopped_metrics=metrics) if self.main else {"finished": False}
        self.accelerator.wait_for_everyone()
        return summary

    def _record(self, stopped_metrics: dict | None = None) -> dict:
        """`write_run` on this run: weights, wall check, train.json, card (the main process's part)."""
        acc, data = self.accelerator, self.data
        return write_run(self.unwrapped, self.cfg, self.out, self.run.to_dict(), self.src_info, acc.num_processes,
                       str(acc.device), acc.mixed_precision, data.steps_per_epoch, sorted(data.train_ds.skipped),
                       sorted(data.val_ds.skipped), stopped_metrics=stopped_metrics)


def _progress(cfg: TrainConfig, name: str, n_items: int, step: int, enabled: bool, log_every: int | None) -> Progress:
    """The run's one bar (terminal) or its log lines (elsewhere: at the first step, then every `log_every` steps,
    or every 30 s when None)."""
    total = cfg.epochs * n_items
    every = LOG_EVERY_S if log_every is None else float("inf")
    return Progress(total, f"train {name}", unit="img", enabled=enabled, initial=min(step * cfg.batch_size, total),
                    every=every, every_n=log_every)


def _postfix(cfg: TrainConfig, run: _Run, epoch: int, steps_per_epoch: int, lr: float) -> str:
    """Step, epoch, the epoch's mean loss so far and the learning rate (what people watch to see it learn)."""
    p = run.partial
    loss = f"{p[0] / p[2]:.3f}" if p[2] else "-"
    return (f"step {run.global_step}/{cfg.epochs * steps_per_epoch}, epoch {epoch + 1}/{cfg.epochs}, loss {loss}, "
            f"lr {lr:.3g}")
