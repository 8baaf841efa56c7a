"""Evaluation on several processes: `--num-proc` started here and `accelerate launch`'s (gloo), chunks merged into
the record and rows one process writes; a killed process resumed from the finished chunks."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from test_leaderboard import data  # noqa: F401 - fixture

from stackbench.errors import StackbenchError
from stackbench.evaluate import evaluate
from stackbench.evaluate.parts import PARTS, Layout
from stackbench.methods import SaliencyMethod
from stackbench.records import stable

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["GradCAM", "ScoreCAM", "Opti-CAM"]
SLOW = '''
import time
SECONDS = 0.4
from stackbench.methods import get_method_class

GradCAM = get_method_class("GradCAM")


class SlowGradCAM(GradCAM):
    name = "SlowGradCAM"

    def explain(self, batch):
        time.sleep(SECONDS)
        return super().explain(batch)
'''

BROKEN = '''
import torch
from stackbench.methods import get_method_class

GradCAM = get_method_class("GradCAM")


class BrokenCAM(GradCAM):
    name = "BrokenCAM"

    def explain(self, batch):
        maps = super().explain(batch)
        for j, i in enumerate(batch.index):
            if i in (3, 4):  # process 2 meets item 3 first, process 1 item 4
                maps[j] = float("nan")
        return maps
'''


def _env(threads: int = 1) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    return {**env, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}


def _same(one: Path, two: Path, names) -> None:
    """The rows files are the same bytes; the records the same but for when they were made and how long it took."""
    for m in names:
        assert (one / f"{m}.parquet").read_bytes() == (two / f"{m}.parquet").read_bytes(), m
        a, b = (json.loads((d / f"{m}.json").read_text()) for d in (one, two))
        assert stable(a) == stable(b), m
    assert not (two / PARTS).exists()  # nothing of the parts is left behind


@pytest.fixture(scope="module")
def one(data, tmp_path_factory):
    """The reference: one process with one thread (the threads each of the processes below has)."""
    out = tmp_path_factory.mktemp("one")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = evaluate(METHODS, str(data / "mix"), "minivgg-masked", out=out, batch_size=2, progress=False,
                        device="cpu", figure=False)
    finally:
        torch.set_num_threads(threads)
    assert all(r.status == "done" for r in runs), [r.error for r in runs]
    return out


def test_chunks_are_whole_batches_whatever_the_processes():
    lay = Layout(100, 8)
    assert lay.per_chunk == 8 and lay.count == 13 and lay.span(12) == (96, 100)
    assert lay.mine(0, 2) == [0, 2, 4, 6, 8, 10, 12] and lay.mine(1, 2) == [1, 3, 5, 7, 9, 11]
    big = Layout(10_000, 8)  # 1250 batches: 64 chunks at most, each of whole batches
    assert big.per_chunk % 8 == 0 and big.count <= 64 and big.span(big.count - 1)[1] == 10_000


def test_two_processes_write_what_one_writes(one, data, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("two")  # beside `one`: the records name the dataset by the same relative path
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # one each
    try:
        runs = evaluate(METHODS, str(data / "mix"), "minivgg-masked", out=tmp_path, batch_size=2,
                        progress=False, device="cpu", figure=False, num_proc=2)
    finally:
        torch.set_num_threads(threads)
    assert all(r.status == "done" for r in runs), [r.error for r in runs]
    assert all(r.record["timing"]["processes"] == 2 for r in runs)
    _same(one, tmp_path, METHODS)
    with pytest.raises(StackbenchError, match="--num-proc 0"):
        evaluate(["GradCAM"], str(data / "mix"), "minivgg-masked", out=tmp_path / "x", num_proc=0)
    assert not (tmp_path / "x").exists()


def test_accelerate_launch_writes_what_one_process_writes(one, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("acc")
    # --multi_gpu is accelerate's launcher of several processes (torchrun's); without a GPU they use gloo on the CPU
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
           "-m", "stackbench", "evaluate", "--dataset", str(data / "mix"), "--model", "minivgg-masked",
           "--batch-size", "2", "--device", "cpu", "--no-progress", "--out", str(out)]
    for m in METHODS[:2]:
        cmd[cmd.index("evaluate") + 1:cmd.index("evaluate") + 1] = ["--method", m]
    r = subprocess.run(cmd, cwd=ROOT, env=_env(1), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("| GradCAM") == 1, r.stdout  # the main process alone prints the summary
    _same(one, out, METHODS[:2])
    assert json.loads((out / "GradCAM.json").read_text())["timing"]["processes"] == 2


def _children(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(pid).children(recursive=True) if "_child(" in " ".join(p.cmdline())]


def test_a_killed_process_resumes_to_the_same_rows(data, tmp_path):
    plugin = tmp_path / "slow.py"
    plugin.write_text(SLOW)
    args = [sys.executable, "-m", "stackbench", "evaluate", "--method", f"{plugin}:SlowGradCAM", "--dataset",
            str(data / "mix"), "--model", "minivgg-masked", "--batch-size", "1", "--device", "cpu"]
    ref = subprocess.run(args + ["--out", str(tmp_path / "ref"), "--no-progress"], env=_env(1), capture_output=True,
                         text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "killed"
    p = subprocess.Popen(args + ["--out", str(out), "--num-proc", "2"], env=_env(2), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    t0, killed = time.time(), None
    while killed is None and time.time() - t0 < 240 and p.poll() is None:
        if list(out.glob(f"{PARTS}/*/SlowGradCAM-*/00001.json")):  # process 2 finished its first chunk
            (child,) = _children(p.pid)
            child.send_signal(signal.SIGKILL)
            killed = child.pid
        time.sleep(0.05)
    _, err = p.communicate(timeout=240)
    assert killed and p.returncode == 2, err[-2000:]
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "process 2 of 2: was killed (signal 9, SIGKILL)" in lines[0], err[-2000:]
    assert "run the same command again" in lines[0] and "Traceback" not in err
    assert not (out / "SlowGradCAM.json").exists()  # no record from part of the images
    again = subprocess.run(args + ["--out", str(out), "--num-proc", "2"], env=_env(2), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming: " in again.stderr, again.stderr[-2000:]
    assert (out / "SlowGradCAM.parquet").read_bytes() == (tmp_path / "ref" / "SlowGradCAM.parquet").read_bytes()
    a, b = (json.loads((d / "SlowGradCAM.json").read_text()) for d in (out, tmp_path / "ref"))
    assert {k: v for k, v in stable(a).items() if k != "dataset"} == \
        {k: v for k, v in stable(b).items() if k != "dataset"}
    assert not (out / PARTS).exists()


def test_a_failure_is_named_by_its_first_item_in_dataset_order(data, tmp_path):
    plugin = tmp_path / "broken.py"
    plugin.write_text(BROKEN)
    errors = []
    for n in (1, 2):
        (bad, good) = evaluate([f"{plugin}:BrokenCAM", "HiResCAM"], str(data / "mix"), "minivgg-masked",
                               out=tmp_path / str(n), batch_size=1, progress=False, device="cpu", figure=False,
                               axes="none", num_proc=n)
        assert bad.status == "failed" and good.status == "done", (bad.error, good.error)
        errors.append(bad.error)
        assert not (tmp_path / str(n) / "BrokenCAM.json").exists() and not (tmp_path / str(n) / PARTS).exists()
    ids = [str(i) for i in __import__("stackbench").open_dataset(str(data / "mix"))["id"]]
    assert errors[0] == errors[1] and f"first offending item: {ids[3]!r}" in errors[0], errors


class Mean(SaliencyMethod):  # a class of the caller's, sent to the started process by value
    name = "Mean"
    needs = frozenset({"activations"})

    def explain(self, batch):
        return batch.activations.mean(dim=1)


def test_objects_go_to_the_started_processes(data, tmp_path_factory):
    import stackbench

    ds, net = stackbench.open_dataset(str(data / "mix")), stackbench.load_model("minivgg-masked")
    outs = [tmp_path_factory.mktemp(f"objects{n}") for n in (1, 2)]
    threads = torch.get_num_threads()
    for n, out in zip((1, 2), outs, strict=True):
        torch.set_num_threads(n)  # one thread per process in both
        try:
            runs = evaluate([Mean, "HiResCAM"], ds, net, out=out, batch_size=2, progress=False, figure=False,
                            axes="none", num_proc=n)
        finally:
            torch.set_num_threads(threads)
        assert [r.status for r in runs] == ["done", "done"], [r.error for r in runs]
    _same(*outs, ["Mean", "HiResCAM"])


def test_a_second_run_into_the_same_folder_is_refused(data, tmp_path):
    from stackbench.datafolder import folder_lock

    out = tmp_path / "busy"
    out.mkdir()
    with folder_lock(out):  # another evaluation holds it
        with pytest.raises(StackbenchError, match="is in use by another stackbench evaluate"):
            evaluate(["HiResCAM"], str(data / "mix"), "minivgg-masked", out=out, progress=False, axes="none")
    assert list(out.iterdir()) == []
    (out / PARTS).write_text("not a folder")
    with pytest.raises(StackbenchError, match="is not a folder: remove it"):
        evaluate(["HiResCAM"], str(data / "mix"), "minivgg-masked", out=out, progress=False, axes="none")


def test_fewer_chunks_than_processes_keep_each_process_share_of_threads(data, tmp_path):
    threads = torch.get_num_threads()
    outs = []
    for n, t in ((1, 1), (2, 2)):  # 8 images in one batch: one chunk, so one process, with half the threads
        torch.set_num_threads(t)
        try:
            (run,) = evaluate(["GradCAM"], str(data / "mix"), "minivgg-masked", out=tmp_path / f"p{n}",
                              batch_size=8, progress=False, figure=False, num_proc=n)
        finally:
            torch.set_num_threads(threads)
        outs.append(run.record_path.with_suffix(".parquet").read_bytes())
    assert outs[0] == outs[1]


def test_damaged_parts_are_scored_again(data, tmp_path, monkeypatch):
    from stackbench.evaluate.parts import Parts

    args = dict(out=tmp_path / "d", batch_size=2, progress=False, figure=False, save_maps=True)
    monkeypatch.setattr(Parts, "remove", lambda self, r: None)  # a run that stopped before tidying up
    (run,) = evaluate(["GradCAM"], str(data / "mix"), "minivgg-masked", **args)
    rows = run.record_path.with_suffix(".parquet").read_bytes()
    maps = (tmp_path / "d" / "GradCAM.maps.npz").read_bytes()
    run.record_path.unlink()
    parts = next((tmp_path / "d" / PARTS).iterdir())
    (parts / "chunk-00001.json").write_text("garbage{{")
    next(parts.glob("GradCAM-*/00002.npz")).write_bytes(b"\0" * 10)
    monkeypatch.undo()
    (again,) = evaluate(["GradCAM"], str(data / "mix"), "minivgg-masked", **args)
    assert again.status == "done", again.error
    assert again.record_path.with_suffix(".parquet").read_bytes() == rows
    assert (tmp_path / "d" / "GradCAM.maps.npz").read_bytes() == maps and not (tmp_path / "d" / PARTS).exists()


def test_started_processes_end_with_the_one_that_started_them(data, tmp_path):
    plugin = tmp_path / "slow.py"
    plugin.write_text(SLOW.replace("SECONDS = 0.4", "SECONDS = 1.0"))  # the other's share: 10 s and more
    p = subprocess.Popen([sys.executable, "-m", "stackbench", "evaluate", "--method", f"{plugin}:SlowGradCAM",
                          "--dataset", str(data / "mix"), "--model", "minivgg-masked", "--batch-size", "1",
                          "--device", "cpu", "--no-progress", "--num-proc", "2", "--out", str(tmp_path / "o")],
                         env=_env(2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0, children = time.time(), []
    while not children and time.time() - t0 < 120 and p.poll() is None:
        children = _children(p.pid) if list(tmp_path.glob(f"o/{PARTS}/*/SlowGradCAM-*/*.json")) else []
        time.sleep(0.05)
    assert children, "no started process seen"
    p.kill()  # outright: it stops nobody itself
    p.wait()
    gone, alive = psutil.wait_procs(children, timeout=3)
    assert not alive, [c.pid for c in alive]

