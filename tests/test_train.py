"""`stackbench train`: learning, the wall after training, bitwise resume, Ctrl-C, refusals, two processes."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from stackbench.cli import main
from stackbench.errors import StackbenchError
from stackbench.models import load_model, weights_fingerprint
from stackbench.sources import open_source
from stackbench.train import (
    CHECKPOINT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LOG,
    RECORD,
    STATE,
    SourceDataset,
    build_model,
    collate,
    export_weights,
    lr_factor,
    preset,
    to_input,
    train,
    train_augment,
    val_transform,
)
from stackbench.train.data import seed_of as _seed

F_cross_entropy = F.cross_entropy
ROOT = Path(__file__).resolve().parent.parent
# 20 shapes images, 2 epochs of 2 steps; augmentation and dropout on, so resumption must restore their seeds.
TINY = preset("mini", source="shapes:20", val_source="shapes:20", epochs=2, batch_size=10, dropout=0.3)


def same_weights(a: Path, b: Path) -> bool:
    sa, sb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "full"
    return out, train(TINY, out, progress=False)


def train_loss(model, cfg) -> float:
    """Loss over the 20 training images without augmentation (batch statistics, no dropout)."""
    ds = SourceDataset(open_source(cfg.source, split="train"), val_transform(cfg), cfg.seed)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    model.train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


def test_training_lowers_the_loss_and_keeps_the_wall(full_run):
    out, summary = full_run
    before = train_loss(build_model(TINY, 10), TINY)
    trained = load_model(str(out))
    assert summary["weights_fingerprint"] == weights_fingerprint(trained)
    assert train_loss(trained, TINY) < before - 0.03  # 4 AdamW steps: 0.050 on shapes/3 (2.310 -> 2.261)
    first = trained[-1][0]
    assert first.dead.any() and torch.count_nonzero(first.weight[:, first.dead]) == 0
    assert summary["wall"]["verdict"] == "PASS" and summary["wall"]["identical"]
    assert summary["wall"]["traced_rows"] == [170, 223]


def test_output_folder(full_run):
    out, summary = full_run
    rows = [json.loads(line) for line in (out / LOG).read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert {"loss", "top1", "top5", "images_per_s", "seconds"} <= set(r) and 0 <= r["top1"] <= r["top5"] <= 1
    record = json.loads((out / RECORD).read_text())
    assert record["config"]["source"] == "shapes:20" and record["sources"]["train"]["fingerprint"].startswith("sha256:")
    assert record["metrics"]["top1"] == rows[-1]["top1"] and record["metrics"]["val_n"] == 20
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: stackbench" in card
    assert f"{100 * rows[-1]['top1']:.2f}%" in card and f"{100 * rows[-1]['top5']:.2f}%" in card
    assert "verdict: **PASS**" in card and '"lr": 0.001' in card
    state = json.loads((out / CHECKPOINT / STATE).read_text())
    assert state["finished"] and state["global_step"] == 4
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl"} <= set(state["files"])


def test_export_weights_is_byte_stable_fp16_and_walled(full_run, tmp_path):
    # How the zoo's shipped file is made: the same run gives the same bytes (its sha256 is recorded in the zoo).
    out, _ = full_run
    digest = export_weights(out, tmp_path / "a.safetensors")
    assert digest == export_weights(out, tmp_path / "b.safetensors")
    state = load_file(str(tmp_path / "a.safetensors"))
    trained = load_model(str(out))
    assert state.keys() == trained.state_dict().keys()
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    first = trained[-1][0]
    (key,) = [k for k, v in state.items() if v.ndim == 2 and v.shape[1] == first.dead.numel()]
    assert torch.count_nonzero(state[key][:, first.dead]) == 0
    assert torch.allclose(state[key].float(), first.weight.detach(), atol=1e-3)


def test_ctrl_c_then_max_steps_then_resume_is_bitwise_identical(full_run, tmp_path, caplog, monkeypatch):
    ref, _ = full_run
    out = tmp_path / "run"
    calls = []

    def ctrl_c_in_second_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # a real Ctrl-C (SIGINT) in the middle of the second step
            os.kill(os.getpid(), signal.SIGINT)
        return F_cross_entropy(*args, **kwargs)

    monkeypatch.setattr(F, "cross_entropy", ctrl_c_in_second_step)
    with pytest.raises(KeyboardInterrupt):
        train(TINY, out, progress=False)
    monkeypatch.undo()
    assert "stackbench train --resume --out" in caplog.text  # the `stackbench` logger (the CLI shows it on stderr)
    # The step in flight finished first: the checkpoint holds two whole steps (the end of epoch 1, before validation).
    assert json.loads((out / CHECKPOINT / STATE).read_text())["global_step"] == 2
    assert load_model(str(out)).class_names[:3] == ["circle", "square", "triangle"]  # Ctrl-C left a model too
    with pytest.raises(StackbenchError, match="holds another training run"):
        train(TINY, out, progress=False)
    # Resume and stop mid-epoch 2 (step 3), then finish.
    part = train(TINY.replace(max_steps=3), out, resume=True, progress=False)
    assert part["finished"] is False and part["global_step"] == 3
    _stopped_run_is_a_model(out, part, tmp_path)
    bad = tmp_path / "corrupt"
    shutil.copytree(out, bad)
    with open(bad / CHECKPOINT / "optimizer.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(StackbenchError, match="corrupt or incomplete .*optimizer.bin"):
        train(None, bad, resume=True, progress=False)
    summary = train(None, out, resume=True, progress=False)
    assert same_weights(ref, out)
    assert [r["loss"] for r in summary["log"]] == [r["loss"] for r in full_run[1]["log"]]
    with pytest.raises(StackbenchError, match="already finished"):
        train(None, out, resume=True, progress=False)


def _stopped_run_is_a_model(out: Path, part: dict, tmp_path: Path) -> None:
    """A stopped run leaves a loadable model folder (its classes named), a card and train.json beside its checkpoint,
    and evaluate takes it: --target label works on a dataset of its classes, and top-1 is measured by name."""
    from stackbench.evaluate import evaluate
    from stackbench.generate import generate_stack_mix

    written = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", RECORD, CHECKPOINT} <= written
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"]["0"] == "circle" and config["label2id"]["circle"] == 0
    record = json.loads((out / RECORD).read_text())
    assert record["finished"] is False and record["steps"] == 3 and record["metrics"]["val_n"] == 20
    assert record["weights_fingerprint"] == weights_fingerprint(load_model(str(out)))
    generate_stack_mix(tmp_path / "mix", source="shapes", split="test", num_images=2, layout="fit", progress=False)
    (run,) = evaluate(["HiResCAM"], str(tmp_path / "mix"), str(out), target="label", out=tmp_path / "ev",
                      progress=False, figure=False)
    assert run.status == "done" and run.record["accuracy"]["classes"] == "names"
    # paths in records are relative to the record's folder; train.json names no folder of this machine
    assert (run.record["model"]["ref"], run.record["dataset"]["ref"]) == ("../run", "../mix") and "out" not in record


def test_refusals(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    args = ["train", "--model", "minivgg-masked", "--source", "shapes:20", "--out", str(tmp_path)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and r.output.count("\n") == 1
    # only what would work: neither --resume nor --overwrite takes a folder of someone else's files
    assert "holds other files (notes.txt), not a training run; choose another --out" in r.output
    assert "--resume" not in r.output and "--overwrite" not in r.output
    r = CliRunner().invoke(main, ["train", "--model", "minivgg-masked", "--source", "shapes:20", "--out",
                                  str(tmp_path / "notes.txt" / "run")])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "cannot be written (NotADirectoryError" in r.output
    with pytest.raises(StackbenchError, match="not a training run"):
        train(TINY, tmp_path, overwrite=True, progress=False)
    with pytest.raises(StackbenchError, match="nothing to resume"):
        train(TINY, tmp_path / "empty", resume=True, progress=False)
    with pytest.raises(StackbenchError, match="--num-classes 1000 does not match .* 10 classes"):
        build_model(TINY.replace(num_classes=1000), 10)
    (tmp_path / "ck" / CHECKPOINT).mkdir(parents=True)
    (tmp_path / "ck" / CHECKPOINT / STATE).write_text("{not json")
    with pytest.raises(StackbenchError, match="corrupt or incomplete"):
        train(None, tmp_path / "ck", resume=True, progress=False)


def test_a_run_that_cannot_start_leaves_no_folder_and_names_a_wrong_model_first(tmp_path):
    new, mine = tmp_path / "new", tmp_path / "mine"
    with pytest.raises(StackbenchError, match="at least 20 items"):
        train(TINY.replace(source="shapes:5"), new, progress=False)
    assert not new.exists()  # the folder this run made, removed: nothing half-made is left behind
    mine.mkdir()
    with pytest.raises(StackbenchError, match="at least 20 items"):
        train(TINY.replace(source="shapes:5"), mine, progress=False)
    assert mine.is_dir()  # a folder the user had stays
    # the model is checked before the source (the paper preset's ImageNet is not here): the line names the model
    r = CliRunner().invoke(main, ["train", "--model", "minivgg-maskd", "--out", str(new)])
    assert r.exit_code == 2 and "unknown model 'minivgg-maskd'" in r.output and "imagenet" not in r.output
    assert not new.exists()


def test_batch_normalisation_is_bitwise_torchvisions_per_image_pipeline():
    # The trainer augments uint8 images and normalises whole batches (`to_input`); that must be exactly what
    # torchvision's one-image pipeline gives, seeded per (seed, epoch, item), or the shipped model's recipe changed.
    from torchvision.transforms import v2

    cfg = preset("mini", crop_scale=(0.3, 1.0))
    src = open_source("shapes:20", split="train")
    n = 6
    reference = v2.Compose([v2.ToImage(), v2.RandomResizedCrop(224, scale=(0.3, 1.0), antialias=True),
                            v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    ds = SourceDataset(src, train_augment(cfg), cfg.seed)
    before = torch.get_rng_state()
    x, y = collate([ds[(2, i)] for i in range(n)])
    assert torch.equal(torch.get_rng_state(), before)  # items draw from their own seeds, never the caller's RNG
    assert x.dtype == torch.uint8 and y.tolist() == list(src.labels()[:n])
    batch = to_input(x, channels_last=True)
    assert batch.is_contiguous(memory_format=torch.channels_last)
    flipped = 0
    for i in range(n):
        torch.manual_seed(_seed(cfg.seed, 2, i))
        expected = reference(src.load(i).image).as_subclass(torch.Tensor)
        assert torch.equal(batch[i], expected), i
        flipped += not torch.equal(x[i], ds[(3, i)][0])  # another epoch, another crop
    assert flipped == n
    # Validation: geometry per image, normalisation per batch, as torchvision's one-image pipeline.
    cfg = preset("paper")
    val_reference = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224), v2.ToImage(),
                                v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    image = src.load(0).image.resize((300, 260))
    assert torch.equal(val_transform(cfg)(image), val_reference(image).as_subclass(torch.Tensor))


def test_presets_and_schedules():
    paper = preset("paper")
    assert (paper.model, paper.optimizer, paper.lr, paper.momentum, paper.weight_decay, paper.epochs,
            paper.batch_size, paper.seed) == ("vgg16-masked", "sgd", 0.03, 0.9, 1e-4, 90, 256, 3)
    assert [lr_factor(paper, e * 10, 10) for e in (0, 29, 30, 59, 60, 89)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    mini = preset("mini")
    f = [lr_factor(mini, s, 250) for s in range(mini.epochs * 250)]
    assert f[0] == 1 and all(a >= b for a, b in zip(f, f[1:], strict=False)) and f[-1] < 1e-4
    one = mini.replace(schedule="onecycle", warmup_fraction=0.25)
    f = [lr_factor(one, s, 94) for s in range(one.epochs * 94)]
    assert f[0] == pytest.approx(1 / 25) and max(f) == pytest.approx(1, abs=1e-3) and f[-1] < 0.01
    with pytest.raises(StackbenchError, match="unknown preset"):
        preset("imagenet")


def test_two_processes_gloo(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "stackbench",
           "train", "--model", "minivgg-masked", "--source", "shapes:20", "--val-source", "shapes:20", "--epochs", "1",
           "--batch-size", "10", "--no-progress", "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    record = json.loads((out / RECORD).read_text())
    assert record["timing"]["processes"] == 2 and record["steps"] == 2 and record["metrics"]["val_n"] == 20
    assert record["wall"]["verdict"] == "PASS" and load_model(str(out)).num_classes == 10
    # Each process saved its own RNG state; the main process alone wrote the rest and printed the result.
    state = json.loads((out / CHECKPOINT / STATE).read_text())
    assert state["world_size"] == 2 and {"random_states_0.pkl", "random_states_1.pkl"} <= set(state["files"])
    assert r.stdout.count("; wrote ") == 1 and r.stderr.count("epoch 1/1") == 1 and "\x1b[" not in r.stderr
