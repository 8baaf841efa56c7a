"""Methods run apart from the measurement (stackbench.isolation), tested as a hostile submitter would attack it:
every attack in tests/attacks.py once changed the board's numbers or stopped the run. Now each either fails its
own row with one line, or, where it only changed its own worker's objects, is measured as the honest method it
imitates; the honest rows of the same run never move."""
import copy
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from test_evaluate import make_folder

from stackbench.axes import Views
from stackbench.errors import StackbenchError
from stackbench.evaluate import evaluate
from stackbench.isolation import Limits, method_handle, wire
from stackbench.isolation.handed import handed, wall_of
from stackbench.models import load_model
from stackbench.models.variants import orient
from stackbench.wall import MOVING

ATTACKS = str(Path(__file__).with_name("attacks.py"))
MODEL = "minivgg-masked@random"


def spec(name):
    return f"{ATTACKS}:{name}"


def rows(run):
    return pq.read_table(run.record_path.with_suffix(".parquet")).to_pandas().drop(columns=["map_sha256"])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("mix"), n=4)


@pytest.fixture(scope="module")
def honest(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("honest")
    return {r.name: r for r in evaluate(["GradCAM", "HiResCAM", spec("HiResCAM15")], folder, MODEL, out=out,
                                        progress=False, batch_size=2, figure=False)}


@pytest.fixture(scope="module")
def attacked(folder, tmp_path_factory):
    """Every attack and two honest methods in one run, 3 s per image, 512 MB."""
    out = tmp_path_factory.mktemp("attacked")
    marker = out / "forged"
    os.environ["STACKBENCH_FORGE_MARKER"] = str(marker)
    names = ["DeletionTamper", "ScaleDense", "ClearMask", "PatchMu", "ReplaceOther", "Sleeper", "Hog", "Phone",
             "Spawner", "Crash", "Forge"]
    runs = evaluate([spec(n) for n in names] + ["GradCAM", "HiResCAM"], folder, MODEL, out=out, progress=False,
                    batch_size=2, figure=False, limits=Limits(seconds_per_image=3, memory_mb=512))
    return {r.name: r for r in runs}, marker


def test_honest_rows_in_an_attacked_run_are_the_rows_of_a_clean_run(attacked, honest):
    runs, _ = attacked
    for name in ("GradCAM", "HiResCAM"):
        assert runs[name].status == "done", runs[name].error
        a = pq.read_table(runs[name].record_path.with_suffix(".parquet")).to_pandas()
        b = pq.read_table(honest[name].record_path.with_suffix(".parquet")).to_pandas()
        assert a.equals(b)  # map hashes included: the same bytes


def test_patching_the_harness_from_explain_changes_only_the_worker(attacked, honest):
    runs, _ = attacked
    # the deletion tamper ranked #1 on the mini board; now its row is that of its honest twin, bit for bit
    assert runs["DeletionTamper"].status == "done"
    assert rows(runs["DeletionTamper"]).equals(rows(honest["HiResCAM15"]))
    # metrics.mu patched to 0 in its own process: its mu is GradCAM's
    assert runs["PatchMu"].record["metrics"]["mu"]["mean"] == honest["GradCAM"].record["metrics"]["mu"]["mean"] > 0
    # another method's explain replaced: only its own worker's GradCAM class changed
    assert rows(runs["ReplaceOther"]).equals(rows(honest["HiResCAM"]))


def test_a_method_that_changes_the_model_it_was_given_fails_its_row(attacked):
    runs, _ = attacked
    r = runs["ScaleDense"]
    assert r.status == "failed" and "changed the model it was given" in r.error and "weight" in r.error
    assert r.record is None and not (Path(r.record_path or "x.json")).exists()
    # the VGG it is handed has no mask buffer to clear (the wall is zero weights): nothing to attack
    assert runs["ClearMask"].status == "done"


def test_limits_and_crashes_fail_one_row_each_with_one_line(attacked):
    runs, marker = attacked
    errors = {n: runs[n].error for n in ("Sleeper", "Hog", "Phone", "Spawner", "Crash", "Forge")}
    assert all(runs[n].status == "failed" for n in errors), errors
    assert "took over 6 s for 2 image(s), the limit (3 s per image); its worker was stopped" in errors["Sleeper"]
    assert "memory" in errors["Hog"] and "512 MB" in errors["Hog"]
    assert "no network for saliency methods" in errors["Phone"]
    assert "no new processes for saliency methods" in errors["Spawner"]
    assert "ended its worker process (SIGSEGV)" in errors["Crash"]
    assert "unreadable reply" in errors["Forge"] and not marker.exists()  # the pickle was never loaded
    assert all("\n" not in e and "Traceback" not in e for e in errors.values())


def test_a_vit_whose_dead_tokens_are_cleared_fails_its_row(folder, tmp_path):
    (r,) = evaluate([spec("ClearMask")], folder, "minivit-masked@random", out=tmp_path, progress=False,
                    batch_size=2, figure=False, limits=Limits(seconds_per_image=30))
    assert r.status == "failed" and "changed the model it was given (dead_tokens)" in r.error


@pytest.mark.parametrize("g", ["identity", *MOVING])
def test_the_handed_model_names_no_wall_and_computes_the_same(g):
    net = orient(load_model(MODEL), g) if g != "identity" else load_model(MODEL)
    h = handed(net)
    assert not hasattr(h, "wall") and not any(b.dtype == torch.bool for b in h.buffers())
    # its backbone finds the crop from the zero weights alone: the same lines as the wall says
    assert wall_of(h).live_slice(16) == net.wall.live_slice(16)
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(h.eval()(x), net.eval()(x))
    assert torch.equal(next(h.parameters()), next(net.parameters()))  # shared, not copied


def test_the_worker_backbone_crops_by_the_weights_alone():
    """The worker's backbone keeps the crop (the same bytes as the harness's forward) but no Wall object, and the
    crop's lines come from the handed weights and nothing else: weights that hide the wall give no crop, whatever
    the harness's own backbone does."""
    from stackbench.isolation.handed import Handed
    from stackbench.isolation.worker import Server

    views = Views(load_model(MODEL), 0, ["rot90"])

    def worker_backbone(h):
        server = Server()
        server.load(1, ("spec", "GradCAM", {}))
        server.model("t", h.skeleton, h.numbers.clone(), h.layout, h.crop)
        server.view(1, "t", 0)
        return server.views[1, "t"][0]

    bb = worker_backbone(views.handed("rot90"))
    assert bb._wall.dead_height == 0 and bb.live_lines == views.backbone("rot90").live_lines < 224
    hidden = copy.deepcopy(handed(views.backbone("rot90").model))
    dense = next(m for m in hidden.modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        dense.weight.add_(1e-30)  # the same logits to float precision; no zero band left
    assert worker_backbone(Handed(hidden, crop=True)).live_lines == 224


def test_views_hand_out_opaque_tokens():
    views = Views(load_model(MODEL), 0, MOVING)
    tokens = {views.token(v) for v in ("canonical", "random", *MOVING)}
    assert len(tokens) == 8 and not tokens & {"canonical", "random", *MOVING}


def test_a_plugin_is_imported_only_in_a_worker(tmp_path):
    marker = tmp_path / "imported"
    plugin = tmp_path / "loud.py"
    plugin.write_text(f"import os\nopen({str(marker)!r} + str(os.getpid()), 'w').close()\n"
                      "from stackbench.methods.gradient import GradCAM\n"
                      "class Loud(GradCAM):\n    name = 'Loud'\n")
    h = method_handle(f"{plugin}:Loud")
    assert h.name == "Loud" and h.needs == {"activations", "gradients"}
    assert h.info["code"]["file"] == "loud.py" and len(h.info["code"]["sha256"]) == 64
    made = list(tmp_path.glob("imported*"))
    assert made and all(p.name != f"imported{os.getpid()}" for p in made)  # ran, but not here
    with pytest.raises(StackbenchError, match="unknown option"):
        method_handle(f"{plugin}:Loud", sigma=3)
    with pytest.raises(StackbenchError, match="failed to import"):
        (tmp_path / "broken.py").write_text("raise SystemExit(3)\n")
        method_handle(f"{tmp_path / 'broken.py'}:X")
    (tmp_path / "gone.py").write_text("import os\nos._exit(0)\n")
    with pytest.raises(StackbenchError, match=r"gone.py:X' failed to import: it ended its worker process"):
        method_handle(f"{tmp_path / 'gone.py'}:X")


def test_replies_are_read_without_unpickling():
    import pickle

    with pytest.raises(wire.BadReply):
        wire.decode(pickle.dumps({"kind": "maps"}))
    h, a = wire.decode(wire.encode({"kind": "maps"}, np.ones((2, 3, 3), np.float64)))
    assert a.dtype == np.float64 and a.shape == (2, 3, 3) and a.flags.writeable
    bad = wire.encode({"kind": "maps"}, np.ones((2, 3, 3), np.float32))[:-4]
    with pytest.raises(wire.BadReply, match="do not match"):
        wire.decode(bad)
    with pytest.raises(wire.BadReply):
        wire.decode(wire.encode({"kind": "maps", "dtype": "object", "shape": [1]}))


def test_limits_are_checked_and_recorded(folder, tmp_path):
    with pytest.raises(StackbenchError, match="seconds_per_image"):
        Limits(seconds_per_image=-1)
    with pytest.raises(StackbenchError, match="limits"):
        evaluate(["GradCAM"], folder, MODEL, out=tmp_path, progress=False, limits={"seconds_per_image": 3})
    (r,) = evaluate(["GradCAM"], folder, MODEL, out=tmp_path, progress=False, figure=False,
                    limits=Limits(seconds_per_image=30, memory_mb=2048))
    assert r.record["env"]["isolation"] == "worker process; 30 s per image, 2048 MB"


def test_builtins_share_a_worker_that_outlives_another_builtins_failure(folder, tmp_path, honest):
    """A job's built-ins explain in one worker (kernels compiled once); when one of them is stopped at its limit,
    the worker goes with it, and the others go on in a new one with the rows of a clean run."""
    from stackbench.isolation import worker_pool

    with worker_pool() as pool:
        runs = {r.name: r for r in evaluate(["GradCAM", "Opti-CAM"], folder, MODEL, out=tmp_path / "a", batch_size=2,
                                            progress=False, figure=False, limits=Limits(seconds_per_image=0.02))}
        assert runs["Opti-CAM"].status == "failed" and "took over" in runs["Opti-CAM"].error
        assert runs["GradCAM"].status == "done"
        assert rows(runs["GradCAM"]).equals(rows(honest["GradCAM"]))
        first = pool.processes()
        (again,) = evaluate(["GradCAM"], folder, MODEL, out=tmp_path / "b", progress=False, figure=False,
                            batch_size=2, limits=Limits(seconds_per_image=0.02))
        assert again.status == "done" and pool.processes() == first and len(first) == 1  # the same worker
    assert pool.processes() == []


def test_a_worker_keeps_its_freed_memory_for_the_next_call():
    """A fresh worker once gave every large temporary back to the system and faulted it in again on the next call
    (670,000 page faults and 25% more time per Opti-CAM call); it now keeps them as a long-running process does."""
    from stackbench.isolation import WorkerPool
    from stackbench.methods.passes import make_batch

    if not Path("/proc/self/stat").exists():
        pytest.skip("page faults are read from Linux's /proc")
    views = Views(load_model(MODEL), 0, [])
    h = method_handle("Opti-CAM", steps=5)
    x01 = torch.rand(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    batch = make_batch(views.backbone("canonical"), x01, "predicted", [0] * 4, list(range(4)), list("abcd"), 0,
                       False, {"forward": 0.0, "backward": 0.0})
    pool = WorkerPool()
    try:
        s = pool.session(h, Limits())
        token = views.token("canonical")
        s.view(token, views.handed("canonical"), 0)
        s.explain([(token, batch.message())])  # the first call allocates
        stat = Path(f"/proc/{pool.processes()[0]}/stat")
        faults = []
        for _ in range(3):
            before = int(stat.read_text().rsplit(")", 1)[1].split()[7])
            s.explain([(token, batch.message())])
            faults.append(int(stat.read_text().rsplit(")", 1)[1].split()[7]) - before)
    finally:
        pool.close()
    assert min(faults) < 1000, f"{faults} page faults in repeated calls"


HARNESS = """
import sys, torch
from stackbench.axes import Views
from stackbench.isolation import Limits, WorkerPool, method_handle
from stackbench.methods.passes import make_batch
from stackbench.models import load_model

views = Views(load_model({model!r}), 0, [])
x01 = torch.rand(1, 3, 224, 224)
clock = {{"forward": 0.0, "backward": 0.0}}
batch = make_batch(views.backbone("canonical"), x01, "predicted", [0], [0], ["a"], 0, False, clock)
s = WorkerPool().session(method_handle({spec!r}), Limits(seconds_per_image=None))
s.view(views.token("canonical"), views.handed("canonical"), 0)
print(s.worker.process.pid, flush=True)
s.explain([(views.token("canonical"), batch.message())])  # sleeps for ever
"""


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


@pytest.mark.parametrize("attack", ["Sleeper", "CSleeper"])
def test_a_hanging_worker_ends_with_a_harness_killed_outright(tmp_path, attack):
    """SIGKILL gives the harness no chance to stop its workers: a method hanging in its worker (in Python, or in a
    C call that holds Python's lock) must not outlive it."""
    import signal
    import subprocess
    import sys
    import time

    if not Path("/proc/self/status").exists():
        pytest.skip("reads Linux's /proc")
    script = tmp_path / "harness.py"
    script.write_text(HARNESS.format(model=MODEL, spec=spec(attack)))
    harness = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(harness.stdout.readline())
        time.sleep(0.5)
        assert not _gone(pid)
    finally:
        harness.send_signal(signal.SIGKILL)
        harness.wait()
    deadline = time.monotonic() + 20
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(pid), f"worker {pid} outlived its harness"


def test_what_a_method_prints_is_shown_under_its_name_up_to_a_cap(folder, tmp_path, capfd):
    """A method's prints (2 MB here) reach the terminal under its name, the first 64 KB of them; the row is scored."""
    (r,) = evaluate([spec("Shouter")], folder, MODEL, out=tmp_path, progress=False, batch_size=4, figure=False)
    err = capfd.readouterr().err
    assert r.status == "done"
    shown = [line for line in err.splitlines() if line.startswith("[Shouter] x")]
    assert 500 < len(shown) <= 64 * 1024 // 100 and "the rest is not shown" in err
    assert "more bytes of output not shown" in err


def test_a_plugin_named_like_a_builtin_is_refused_beside_it(folder, tmp_path):
    for methods in (["GradCAM", spec("Impostor")], [spec("Impostor"), "GradCAM"]):
        with pytest.raises(StackbenchError, match="two methods are named GradCAM"):
            evaluate(methods, folder, MODEL, out=tmp_path, progress=False, figure=False)
    assert not any(tmp_path.iterdir())


def test_an_exception_whose_message_raises_is_one_line(folder, tmp_path, capfd):
    (r, g) = evaluate([spec("BadStr"), "GradCAM"], folder, MODEL, out=tmp_path, progress=False, figure=False)
    assert r.status == "failed" and "raised Weird: (its message could not be read" in r.error
    assert g.status == "done" and "Traceback" not in capfd.readouterr().err


def _sent(monkeypatch):
    """The ops the harness sends its workers, in order."""
    from stackbench.isolation.session import Worker

    ops, send = [], Worker._send

    def record(self, message):
        ops.append(message)
        return send(self, message)

    monkeypatch.setattr(Worker, "_send", record)
    return ops


def test_a_batch_is_one_request_per_method_whatever_its_views(folder, tmp_path, monkeypatch, honest):
    """Each view once asked for on its own: a round trip per view and batch, the harness's threads spinning on
    the cores the method needed (a GradCAM row of the mini board 0.6 s dearer). Now one request per batch carries
    the main pass, every hidden orientation's and the randomisation's; the rows are those of a clean run."""
    ops = _sent(monkeypatch)
    (r,) = evaluate(["GradCAM"], folder, MODEL, out=tmp_path, progress=False, batch_size=2, figure=False)
    asked = [m for m in ops if m[0] == "explain"]
    assert len(asked) == 2  # 4 images, 2 batches
    for _op, _slot, calls in asked:  # the main pass, a pass per orientation, the randomisation
        assert len(calls) == 2 + len({t for t, _ in calls[1:-1]}) and len({t for t, _ in calls}) == len(calls)
    assert rows(r).equals(rows(honest["GradCAM"]))


@pytest.mark.parametrize("sleep", [False, True])
def test_a_failure_in_a_later_pass_of_a_request_names_that_pass(folder, tmp_path, sleep):
    h = method_handle(spec("LateFailure"), sleep=sleep)
    limits = Limits(seconds_per_image=1.5 if sleep else None)
    (r,) = evaluate([h], folder, MODEL, out=tmp_path, progress=False, batch_size=2, figure=False, limits=limits)
    assert r.status == "failed" and " in the hidden-wall (" in r.error, r.error
    if sleep:
        assert "took over" in r.error and "image(s), the limit (1.5 s per image)" in r.error
    else:
        assert "raised ValueError: late in the hidden-wall (" in r.error and "first offending item: 'mix-00" in r.error


def test_a_jobs_evaluations_of_one_model_hand_it_once(folder, tmp_path, monkeypatch, honest):
    """A verify run re-runs 42 rows of one model: each once packed and handed its views afresh (0.2 s a row).
    Within a job, an evaluation of the same model and seed reuses the last one's views, which its shared worker
    still holds; another model's views replace them, and the worker forgets the old ones."""
    from stackbench.isolation import worker_pool

    ops = _sent(monkeypatch)
    handed = lambda: [m[1] for m in ops if m[0] == "model"]  # noqa: E731
    with worker_pool() as pool:
        (a,) = evaluate(["GradCAM"], folder, MODEL, out=tmp_path / "a", progress=False, batch_size=2, figure=False)
        first = handed()
        (b,) = evaluate(["HiResCAM"], folder, MODEL, out=tmp_path / "b", progress=False, batch_size=2, figure=False)
        assert handed() == first and len(first) == len(set(first)) >= 3  # canonical, random, an orientation
        assert rows(a).equals(rows(honest["GradCAM"])) and rows(b).equals(rows(honest["HiResCAM"]))
        (c,) = evaluate(["GradCAM"], folder, MODEL, out=tmp_path / "c", progress=False, batch_size=2, figure=False,
                        seed=1)
        assert c.status == "done"
        dropped = [t for m in ops if m[0] == "drop" for t in m[1]]
        assert sorted(dropped) == sorted(first)
        (worker,) = pool._shared.values()
        assert set(worker.models) == set(handed()[len(first):])  # only the new views' models are held


def test_what_a_method_prints_cannot_move_the_cursor():
    """A carriage return or an escape sequence in a method's output once overwrote the harness's line with a fake
    one; they are shown written out."""
    import io
    import multiprocessing as mp

    from stackbench.isolation.output import Output

    r, w = mp.Pipe(duplex=False)
    shown = io.StringIO()
    out = Output(r, "Liar", stream=shown)
    out.start()
    os.write(w.fileno(), b"ok\r[stackbench] verify: 42 reproduced\x1b[2K\x07\n")
    w.close()
    out.join(5)
    assert shown.getvalue() == "[Liar] ok\\r[stackbench] verify: 42 reproduced\\x1b[2K\\x07\n"


@pytest.mark.parametrize("name", ["a/b", "two words", "line\nbreak", " GradCAM", "x" * 65])
def test_a_method_name_is_one_word(tmp_path, name):
    """Two names once wrote one file (`a/b` and `a_b`), and a newline in a name started a line of its own in the
    summary table; such names are refused, by the worker's description as by a class in this process."""
    from stackbench.methods import SaliencyMethod

    plugin = tmp_path / "named.py"
    plugin.write_text(f"from stackbench.methods import SaliencyMethod\nclass Named(SaliencyMethod):\n"
                      f"    name = {name!r}\n")
    with pytest.raises(StackbenchError, match="is not a method name") as e:
        method_handle(f"{plugin}:Named")
    assert "\n" not in str(e.value)
    local = type("Named", (SaliencyMethod,), {"name": name, "explain": lambda self, batch: None})
    with pytest.raises(StackbenchError, match="is not a method name"):
        method_handle(local())
