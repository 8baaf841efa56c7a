"""The main jobs: `stackbench demo` (the mini track from nothing, on a CPU) and `stackbench reproduce --preset
paper` (the paper's pipeline on ImageNet, a Stable Diffusion checkpoint and a GPU). Both end in the same report.

    demo(out="stackbench-demo", quick=True)
    reproduce(imagenet="imagefolder:/data/imagenet", split="val", sd_model="stable-diffusion-v1-5/...", out="paper")
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import report
from .axes import Axes
from .constants import DEMO_AXES, DEMO_IMAGES, QUICK_AXES, QUICK_IMAGES
from .errors import OtherRecipe, StackbenchError
from .methods import ATTENTION_METHODS
from .progress import quiet_libraries
from .records import portable
from .refs import one_process

METHODS = report.PAPER_METHODS + report.CONTROLS
# A ViT's demo: the paper's methods on the token grid, LayerCAM, the methods that read the attention, the controls.
VIT_METHODS = report.PAPER_METHODS + ("LayerCAM",) + ATTENTION_METHODS + report.CONTROLS
REFERENCE_RATE = "a fixed reference rate, not measured here"


def methods_for(arch: str) -> tuple[str, ...]:
    """The methods a demo runs on a model of this architecture (vgg, vit)."""
    return VIT_METHODS if arch == "vit" else METHODS


@dataclass
class Step:
    name: str
    what: str
    estimate_s: float
    run: object = field(repr=False, default=None)  # callable doing the step
    basis: str = ""                                 # where the estimate comes from, in words


@dataclass
class Outcome:
    out: Path
    paths: dict
    table: str
    findings: list[str]
    seconds: float


def _mix(folder: Path, fields: dict, progress: bool):
    from .generate.stackmix import StackMixRecipe, generate_stack_mix

    return generate_stack_mix(folder, StackMixRecipe.from_fields(fields), progress=progress)


def _gen(folder: Path, fields: dict, device: str, progress: bool):
    from .generate.stackgen import StackGenRecipe, generate_stack_gen

    heavy = ("diffusers", "transformers") if fields.get("generator") != "shapes" else ()
    with quiet_libraries(progress, also=heavy):  # their loading bars ("Loading pipeline components...")
        return generate_stack_gen(folder, StackGenRecipe.from_fields(fields), device=device, progress=progress)


def _device(device: str) -> str:
    from .refs import pick_device

    return str(pick_device(device))


def run_steps(steps: list[Step], dry_run: bool, echo=print) -> None:
    total = sum(s.estimate_s for s in steps)
    for i, s in enumerate(steps, 1):
        echo(f"[{i}/{len(steps)}] {s.name}: {s.what} (estimate {_dur(s.estimate_s)})")
        if not dry_run:
            s.run()
    if dry_run:
        for s in steps:
            if s.basis:
                echo(f"  {s.name} estimate: {s.basis}")
        echo(f"dry run: {len(steps)} steps, about {_dur(total)} in all (estimates); nothing was run")


def _dur(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def axes_scope(axes, n: int) -> str:
    """Where the board's axes (an `Axes`) are measured in each set of `n` images: every image, a seeded sample, or
    none."""
    from .metrics import images_phrase

    if not axes.measured:
        return "not measured (the paper's protocol: mu alone)"
    if axes.sample is None or axes.sample >= n:
        return "every image per set"
    return f"a seeded sample of {images_phrase(axes.sample)} per set"


def axes_count(axes, n: int) -> int:
    """The images of `n` that get the axes."""
    return 0 if not axes.measured else min(n, axes.sample or n)


def _evaluate_step(out: Path, data: dict[str, Path], model: str, device: str, batch_size: int, progress: bool,
                   n: int, axes, probe: str, methods=METHODS, num_proc: int = 1) -> Step:
    """The evaluation of every method on both sets. Its estimate is a measured cost per image (`stackbench.rates`)
    scaled by a calibration of `probe` (the model's architecture) timed here now; a run that computes every
    method records its own cost for this machine's next estimates."""
    from . import rates
    from .evaluate import evaluate

    units = (n + rates.AXES_UNITS * axes_count(axes, n)) * len(data)
    unit_s, basis = rates.per_unit(probe, device)

    def run():
        before, arch = rates.calibrate(probe, device)  # timed before and after: the load may change during the run
        t0, fresh = time.perf_counter(), True
        for ds, folder in data.items():
            runs = evaluate(list(methods), str(folder), model, out=out / "results" / ds, device=device,
                            batch_size=batch_size, progress=progress, axes=axes, num_proc=num_proc)
            fresh = fresh and all(r.status == "done" for r in runs)  # a resumed run measures nothing
        if fresh:
            seconds = time.perf_counter() - t0
            after = rates.calibrate(probe, device)[0]
            rates.record(device, arch, ref_of(probe), seconds / units, (before + after) / 2)

    return Step("evaluate", f"{len(methods)} methods ({', '.join(methods)}) on both sets with {ref_of(model)}: mu on "
                            f"every image, the board's axes: {axes_scope(axes, n)}",
                unit_s * units, run, basis)


def ref_of(model) -> str:
    """How reports and estimates name a model: its reference, or what `load_model` calls a model object."""
    if isinstance(model, (str, Path)):
        return str(model)
    from .models import load_model

    return load_model(model, device=next(model.parameters()).device).ref


def _check_walled(model) -> str:
    """Before minutes of generation: the demo measures what a walled model cannot see. Returns its architecture."""
    from .models import load_model

    net = load_model(model, device="cpu") if isinstance(model, (str, Path)) else load_model(
        model, device=next(model.parameters()).device)  # an object stays where it is
    if not net.wall.dead_height:
        raise StackbenchError(f"model {ref_of(model)} has no wall (nothing is hidden from it): give a walled model, "
                              "e.g. minivgg-masked")
    return getattr(net, "arch", "vgg")


def _report(out: Path, data: dict[str, Path], title: str, context: dict, methods=METHODS) -> Outcome:
    from .leaderboard import read_reported
    from .resources import resource

    results = {ds: out / "results" / ds for ds in data}
    found = report.collect(results, methods)
    missing = [m for m in methods if m not in found]
    if missing:
        raise StackbenchError(f"no result for {', '.join(missing)} in {out / 'results'}; see the evaluation output")
    # The paper's Table 1 as the board shows it (one reader of reported/*.json), beside the measured numbers: the
    # paper measured a VGG16, so a ViT's report has no reported column.
    reported = None if report.model_of(found).get("arch") == "vit" else {
        r["method"]: r for r in read_reported(resource("board", "reported", "paper.json"))["rows"]}
    paths = report.write(out, found, list(data), results, title, context, reported)
    return Outcome(out, paths, report.table(found, list(data), reported), report.findings(found, list(data)), 0.0)


# What a demo or reproduce folder holds (report.write's files, the data, the results, reproduce's model): a folder
# holding only these is an earlier run to resume; anything else is someone's files, left alone.
OWN_ENTRIES = ("data", "results", "model", "table.md", "axes.md", "mu.png", "report.html", "report.json",
               "overlays-*.png")


@contextlib.contextmanager
def _earlier_run(out: Path):
    """A step that finds an earlier run's dataset of other settings: said about --out, with the fixes this command
    has (it has no --overwrite)."""
    try:
        yield
    except OtherRecipe as e:
        raise StackbenchError(f"--out {out} holds an earlier run with other settings ({e.detail}); give a new "
                              "--out, or the earlier run's settings to resume it") from None


def _check_out(out: Path, dry_run: bool = False) -> None:
    """--out is a folder this run may use (new, empty, or an earlier run's) and, for a real run, can write to."""
    blocking = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise StackbenchError(f"--out {out}: {blocking} is a file; give a folder (new, empty, or an earlier run's)")
    other = sorted(p.name for p in out.iterdir() if not p.name.startswith(".") and  # .DS_Store and the like
                   not any(p.match(g) for g in OWN_ENTRIES)) if out.is_dir() else []
    if other:
        raise StackbenchError(f"--out {out} already holds other files ({', '.join(other[:3])}"
                              f"{', ...' if len(other) > 3 else ''}); give a new or empty folder, or an earlier run's "
                              "folder to resume it")
    if not dry_run:  # before the first step, not at its first file
        from .datafolder import writable_folder

        writable_folder(out)


def demo(out: str | Path = "stackbench-demo", quick: bool = False, model: str = "minivgg-masked",
         num_images: int | None = None, device: str = "auto", progress: bool = True, dry_run: bool = False,
         echo=print, axes_images: int | None = None, num_proc: int = 1) -> Outcome | None:
    """The mini track from nothing: generate mini STACK-MIX and STACK-GEN, evaluate the paper's eight methods and
    the four controls with the shipped minivgg-masked (mu on every image, the board's axes on `axes_images` of each
    set: DEMO_AXES, QUICK_AXES with `quick`), write the report. A second run reuses what is done."""
    from .evaluate.inputs import check_num_proc
    from .generate import load_preset

    one_process("demo")
    check_num_proc(num_proc)
    t0 = time.perf_counter()
    out = Path(out)
    if num_images is not None and (isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1):
        raise StackbenchError(f"--num-images {num_images!r}: must be a whole number of at least 1")
    n = num_images or (QUICK_IMAGES if quick else DEMO_IMAGES)
    axes = Axes(sample=axes_images or (QUICK_AXES if quick else DEMO_AXES))
    dev = _device(device)
    arch = _check_walled(model)
    methods = methods_for(arch)
    _check_out(out, dry_run)
    data = {"stack-mix": out / "data" / "stack-mix", "stack-gen": out / "data" / "stack-gen"}
    # The default run is exactly the leaderboard's mini track data (the presets as they are: the paper's 100 images).
    mix, gen = load_preset("stack-mix", "mini"), load_preset("stack-gen", "mini")
    if quick or num_images:
        mix, gen = {**mix, "num_images": n, "per_class": None}, {**gen, "num_images": n}
    steps = [
        Step("stack-mix", f"{n} mini STACK-MIX images (generation/stack-mix/mini.json)", n / 80,
             lambda: _mix(data["stack-mix"], mix, progress), REFERENCE_RATE),
        Step("stack-gen", f"{n} mini STACK-GEN scenes (generation/stack-gen/mini.json)", n / 80,
             lambda: _gen(data["stack-gen"], gen, dev, progress), REFERENCE_RATE),
        _evaluate_step(out, data, model, dev, 16, progress, n, axes, probe=model, methods=methods, num_proc=num_proc),
    ]
    from .isolation import worker_pool

    # the methods' workers' forkserver imports while the data is made; the built-ins' worker serves both sets
    with quiet_libraries(progress), _earlier_run(out), worker_pool(None if dry_run else methods):
        run_steps(steps, dry_run, echo)
    if dry_run:
        return None
    track = "mini-vit" if arch == "vit" else "mini"
    result = _report(out, data, f"stackbench demo: CAM-based methods see through walls ({track} track)",
                     {"model": ref_of(model), "images per set": n, "board axes": axes_scope(axes, n),
                      "device": dev, "datasets": "mini STACK-MIX (fit layout, "
                      "shapes test split), mini STACK-GEN (shapes scenes)", "methods": ", ".join(methods)}, methods)
    result.seconds = time.perf_counter() - t0
    return result


def _paper_gen(sd_model: str, num_images: int, verify_model: str | None, steps: int | None,
               gen_size: int | None) -> dict:
    """The paper's STACK-GEN preset with reproduce's options ("preset": the preset's CLIP verifier; None: none)."""
    from .generate import load_preset

    gen = {**load_preset("stack-gen", "paper"), "model": sd_model, "num_images": num_images}
    if verify_model != "preset":
        gen["verify_model"] = verify_model
        if not verify_model:
            gen["min_verify"] = None
    return {**gen, **({"steps": steps} if steps else {}), **({"gen_size": gen_size} if gen_size else {})}


def reproduce(imagenet: str, sd_model: str, out: str | Path = "stackbench-paper", split: str | None = None,
              model: str | None = None, train: bool = False, train_source: str | None = None,
              num_images: int = 100, verify_model: str | None = "preset", steps: int | None = None,
              gen_size: int | None = None, device: str = "auto", progress: bool = True, dry_run: bool = False,
              echo=print, axes="none", num_proc: int = 1) -> Outcome | None:
    """The paper's pipeline: STACK-MIX from ImageNet validation images, STACK-GEN with the given Stable Diffusion
    checkpoint, the walled VGG16 (loaded, or trained with the paper preset), the eight methods and the controls, the
    report. `axes`: "none" (the paper's Table 1 is mu), "all", or an `Axes` (e.g. a seeded sample)."""
    from .evaluate.inputs import check_num_proc
    from .generate import load_preset

    one_process("reproduce")
    check_num_proc(num_proc)
    if bool(model) == bool(train):
        raise StackbenchError("give exactly one of --model REF (a trained walled model) or --train")
    axes = Axes.of(axes)
    t0 = time.perf_counter()
    out = Path(out)
    dev = _device(device)
    _check_out(out, dry_run)
    gpu = dev.startswith("cuda")
    data = {"stack-mix": out / "data" / "stack-mix", "stack-gen": out / "data" / "stack-gen"}
    mix = {**load_preset("stack-mix", "paper"), "source": imagenet, "split": split, "num_images": num_images,
           "per_class": None}
    gen = _paper_gen(sd_model, num_images, verify_model, steps, gen_size)
    model_dir = out / "model"
    model_ref = model or str(model_dir)
    plan = [
        Step("stack-mix", f"{num_images} STACK-MIX images from {imagenet} (split {split or 'default'}), cut layout",
             num_images / 50, lambda: _mix(data["stack-mix"], mix, progress), REFERENCE_RATE),
        Step("stack-gen", f"{num_images} STACK-GEN scenes with {sd_model}, {gen.get('steps', 30)} steps, regional "
                          "prompts" + (f", CLIP-verified with {gen['verify_model']}" if gen.get("verify_model")
                                       else ""),
             num_images * (1.5 if gen.get("verify_model") else 1.0) * (1.0 if gpu else 60.0),
             lambda: _gen(data["stack-gen"], gen, dev, progress), REFERENCE_RATE),
    ]
    if train:
        from .train import preset as train_preset
        from .train import train as run_train

        cfg = train_preset("paper", source=train_source or imagenet)
        plan.append(Step("train", f"vgg16-masked with the paper preset on {cfg.source} ({cfg.epochs} epochs)",
                         (cfg.epochs * 1.28e6 / (2500 if gpu else 1)),
                         lambda: run_train(cfg, model_dir, progress=progress), REFERENCE_RATE))
    # The model's cost is its architecture's: time that (the weights need not exist yet, nor be read).
    probe = "vgg16-masked" if train or model_ref.startswith("paper:") else model_ref
    plan.append(_evaluate_step(out, data, model_ref, dev, 16, progress, num_images, axes, probe=probe,
                               num_proc=num_proc))
    with quiet_libraries(progress), _earlier_run(out):
        run_steps(plan, dry_run, echo)
    if dry_run:
        return None
    result = _report(out, data, "stackbench reproduce: the paper's Table 1 in your setting",
                     {"model": portable(model_ref, out), "images per set": num_images, "device": dev,
                      "STACK-MIX source": imagenet, "STACK-GEN generator": sd_model, "methods": ", ".join(METHODS),
                      "board axes": axes_scope(axes, num_images)})
    result.seconds = time.perf_counter() - t0
    return result
