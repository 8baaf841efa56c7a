"""Publishing and loading back, with the network boundary (HfApi) replaced by a recorder."""
import json
import shutil

import huggingface_hub
import pytest
import torch
from click.testing import CliRunner

from stackbench import StackbenchError
from stackbench import datafolder as df
from stackbench.cli import main
from stackbench.generate import generate_stack_mix
from stackbench.hub import upload as hub
from stackbench.models import create_model, load_model

TOKEN = "hf_SECRETtokenNEVERprintedXYZ123"


class RecordingApi:
    """Stands in for huggingface_hub.HfApi at the network boundary; keeps every call."""

    calls: list = []

    def __init__(self, *args, **kwargs):
        RecordingApi.calls.append(("__init__", args, kwargs))

    def __getattr__(self, name):
        def record(*args, **kwargs):
            RecordingApi.calls.append((name, args, kwargs))
            if name == "create_commit":
                return huggingface_hub.CommitInfo(commit_url=f"https://hf.co/{args[0]}/commit/1", commit_message="",
                                                  commit_description="", oid="1" * 40)
        return record


@pytest.fixture
def recorder(monkeypatch):
    RecordingApi.calls = []
    monkeypatch.setattr(hub, "HfApi", RecordingApi)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return RecordingApi


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ds") / "stack-mix"
    generate_stack_mix(folder, source="shapes", split="test", per_class=1, seed=0, progress=False, shard_size=4)
    return folder


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A model folder as `stackbench train` leaves it: weights, train.json and the card that points to it."""
    from stackbench.cards.model import write_card

    folder = tmp_path_factory.mktemp("model") / "mini"
    create_model("minivgg-masked", seed=0).save_pretrained(folder)
    src = {"kind": "shapes", "ref": "shapes:20@0", "split": "val", "n_items": 20, "fingerprint": "sha256:0"}
    summary = {"model": "minivgg-masked", "num_classes": 10, "config": {"optimizer": "adamw", "lr": 0.001},
               "sources": {"train": src, "val": src}, "metrics": {"top1": 0.5, "top5": 0.9, "val_n": 20}}
    (folder / "train.json").write_text(json.dumps(summary))
    write_card(folder, summary)
    return folder


def test_dry_run_lists_exactly_the_files_and_sends_nothing(dataset, recorder):
    r = CliRunner().invoke(main, ["publish", "dataset", str(dataset), "--repo-id", "me/stack-mix", "--dry-run"])
    assert r.exit_code == 0, r.output
    listed = [line.split()[0] for line in r.output.splitlines() if line.startswith("  ")]
    on_disk = sorted(p.relative_to(dataset).as_posix() for p in dataset.rglob("*") if p.is_file())
    assert listed == on_disk
    assert "dry run: nothing sent" in r.output and recorder.calls == []


def test_publish_dataset_is_one_commit_and_never_leaks_the_token(dataset, recorder, tmp_path):
    r = CliRunner().invoke(main, ["publish", "dataset", str(dataset), "--repo-id", "me/stack-mix", "--private",
                                  "--revision", "v1"])
    assert r.exit_code == 0, r.output
    names = [c[0] for c in recorder.calls]
    assert names.count("create_commit") == 1 and "upload_folder" not in names
    created = ("create_repo", ("me/stack-mix",), {"repo_type": "dataset", "private": True, "exist_ok": True})
    assert created in recorder.calls
    commit = next(c for c in recorder.calls if c[0] == "create_commit")
    assert commit[2]["revision"] == "v1" and commit[2]["repo_type"] == "dataset"
    sent = sorted(op.path_in_repo for op in commit[2]["operations"])
    assert sent == sorted(p.relative_to(dataset).as_posix() for p in dataset.rglob("*") if p.is_file())
    # the token appears nowhere: not in output, not in any call, not in any file of the folder
    assert TOKEN not in r.output and TOKEN not in repr(recorder.calls)
    for p in dataset.rglob("*"):
        if p.is_file():
            assert TOKEN.encode() not in p.read_bytes()


def test_publish_model_checks_the_wall_and_loads(model_folder, recorder, tmp_path):
    plan = hub.plan_model(model_folder, "me/mini")
    assert {"config.json", "model.safetensors", "README.md", "train.json"} <= {f for f, _ in plan.files}
    assert any("PASS" in c for c in plan.checks)
    hub.publish(plan)
    assert [c[0] for c in recorder.calls].count("create_commit") == 1
    commit = next(c for c in recorder.calls if c[0] == "create_commit")
    assert "train.json" in {op.path_in_repo for op in commit[2]["operations"]}  # the record the card points to
    # a folder whose card points to a train.json it lost is refused before anything is sent
    lost = tmp_path / "lost"
    shutil.copytree(model_folder, lost)
    (lost / "train.json").unlink()
    recorder.calls.clear()
    with pytest.raises(StackbenchError, match="points to train.json, which is missing"):
        hub.plan_model(lost, "me/mini")
    assert recorder.calls == []


def test_broken_card_or_missing_shard_is_refused_before_any_call(dataset, recorder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    text = (broken / "README.md").read_text()
    (broken / "README.md").write_text(text.replace("---\n", "---\nlicense: [unclosed\n", 1))
    with pytest.raises(StackbenchError, match="does not parse"):
        hub.plan_dataset(broken, "me/x")
    missing = tmp_path / "missing"
    shutil.copytree(dataset, missing)
    df.list_shards(missing)[0].unlink()
    r = CliRunner().invoke(main, ["publish", "dataset", str(missing), "--repo-id", "me/x"])
    assert r.exit_code == 2 and "shards but generation.json records" in r.output
    assert recorder.calls == []


def _cache(root, repo_type, repo, files, ref="main", commit="a" * 40):
    """The huggingface_hub cache layout: refs/<ref> -> commit, snapshots/<commit>/<files>."""
    base = root / f"{repo_type}s--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / ref).write_text(commit)
    snap = base / "snapshots" / commit
    for src in files:
        rel = src.relative_to(files[0].parent) if src.parent == files[0].parent else src.name
        dst = snap / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    return snap


def test_hf_references_resolve_through_huggingface_hub(tmp_path, monkeypatch, model_folder, dataset):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    _cache(tmp_path / "cache", "model", "me/mini", [model_folder / "config.json", model_folder / "model.safetensors"],
           ref="v1", commit="b" * 40)
    model = load_model("hf:me/mini@v1")
    local = load_model(str(model_folder))
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(model(x), local(x)) and model.ref == "hf:me/mini@v1"

    snap = tmp_path / "cache" / "datasets--me--stack-mix" / "snapshots" / ("c" * 40)
    shutil.copytree(dataset, snap)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("c" * 40)
    ds, info = df.open_dataset("hf:me/stack-mix")
    assert info["fingerprint"] == df.fingerprint(dataset) and info["n"] == len(ds)
    assert info["revision"] == "c" * 40  # pinned to the commit, not the moving branch name
    with pytest.raises(StackbenchError, match="could not fetch"):
        load_model("hf:me/absent")
