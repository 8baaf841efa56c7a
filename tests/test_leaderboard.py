"""The leaderboard store: submit, verify, build, show — on a small track the test defines."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from stackbench import StackbenchError
from stackbench import leaderboard as lb
from stackbench.cli import main
from stackbench.errors import Refused
from stackbench.generate import generate_stack_mix
from stackbench.generate.stackgen import StackGenRecipe, generate_stack_gen

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = '''
from stackbench.methods import TargetLayerCAM

class PositiveGradCAM(TargetLayerCAM):
    name = "PositiveGradCAM"
    needs = frozenset({"activations", "gradients"})
    def weights(self, A, G):
        return G.clamp(min=0).mean(dim=(2, 3))
'''


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("lbdata")
    generate_stack_mix(base / "mix", source="shapes", split="test", num_images=8, layout="fit", progress=False)
    generate_stack_gen(base / "gen", StackGenRecipe(generator="shapes", num_images=8), progress=False)
    return base


@pytest.fixture
def store(tmp_path, data):
    s = tmp_path / "board"
    (s / "reported").mkdir(parents=True)
    shutil.copy(ROOT / "leaderboard" / "reported" / "paper.json", s / "reported" / "paper.json")
    tracks = {"tracks": {"test": {"description": "a tiny track", "model": "minivgg-masked@random",
                                  "datasets": {"stack-mix": {"path": str(data / "mix")},
                                               "stack-gen": {"path": str(data / "gen")}},
                                  "batch_size": 8}}}
    (s / "tracks.json").write_text(json.dumps(tracks))
    return s


def submit(store, method, **kw):
    return lb.submit(method, "test", store=store, progress=False, device="cpu", **kw)


def test_submitted_plugin_appears_in_the_built_table(store, tmp_path):
    plugin = tmp_path / "my_cams.py"
    plugin.write_text(PLUGIN)
    paths = submit(store, f"{plugin}:PositiveGradCAM", author="A. Researcher", url="https://example.org/pgc")
    assert [p.parent.parent.name for p in paths] == ["stack-mix", "stack-gen"]
    submit(store, "HiResCAM")
    built = lb.build(store)
    md = (store / "README.md").read_text()
    assert "PositiveGradCAM" in md and "HiResCAM" in md and "[link](https://example.org/pgc)" in md
    # HiResCAM is blind behind the wall: mu exactly 0; on this untrained model no map explains anything (its
    # probabilities do not move as pixels go: SRG about 0), so both rows are listed as uninformative, not ranked
    rows = [line for line in md.splitlines() if line.startswith("| - | HiResCAM |")]
    assert rows and "0.0 ± 0.0" in rows[0] and "uninformative" in rows[0] and "faithfulness" in rows[0]
    assert "### Ranked" not in md and "### Uninformative" in md
    assert "Reported: Taimeskhanov" in md and "| EigenCAM | 51.7 ± 19.7 | 55.8 ± 21.6 |" in md
    html = (store / "index.html").read_text()
    assert html.count("<tr class='row'>") == 2 and html.count("<tr class='reported-row'>") == 8
    assert (store / "mu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # deterministic: the same store renders the same bytes
    before = {p.name: p.read_bytes() for p in built}
    lb.build(store)
    assert {p.name: p.read_bytes() for p in built} == before
    # and the CLI shows it
    r = CliRunner().invoke(main, ["leaderboard", "show", "--store", str(store)])
    assert r.exit_code == 0 and "PositiveGradCAM" in r.output


def test_a_new_board_builds_without_warnings(store):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels" on an empty chart
        built = lb.build(store)
    assert {p.name for p in built} >= {"README.md", "index.html", "mu.png", "axes.png"}


def test_a_folder_of_other_files_is_not_a_board(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StackbenchError, match="tracks.json is missing: .*give a board's folder, or a new or empty one"):
        lb.submit("GradCAM", store=tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_name_on_the_board_needs_replace(store):
    submit(store, "GradCAM")
    with pytest.raises(StackbenchError, match="already on the test board"):
        submit(store, "GradCAM")
    # with progress, off the terminal: a line per dataset and per pass, no escape codes
    r = CliRunner().invoke(main, ["submit", "--method", "GradCAM", "--track", "test", "--store", str(store), "--device",
                                  "cpu", "--replace"])
    assert r.exit_code == 0, r.output
    assert "dataset stack-mix (1/2)" in r.stderr and "dataset stack-gen (2/2)" in r.stderr
    assert "\x1b[" not in r.stderr and "\r" not in r.stderr


def test_untrusted_strings_render_inert(store):
    evil = "<img src=x onerror=alert(1)>"
    paths = submit(store, "GradCAM", name=evil, description="</td><script>alert(2)</script>",
                   author="[x](javascript:y)")
    for p in paths:  # a name with markup or path separators stays a file inside the store
        assert store.resolve() in p.resolve().parents
    with pytest.raises(StackbenchError, match="only http"):
        submit(store, "GradCAM", name="other", url="javascript:alert(1)")
    with pytest.raises(StackbenchError, match="may not contain spaces.*percent-encode"):
        submit(store, "GradCAM", name="other", url="https://example.org/my paper.pdf")
    lb.build(store)
    html = (store / "index.html").read_text()
    assert "<img src=x" not in html and "<script>alert" not in html
    assert not re.search(r"href\s*=\s*['\"]?\s*javascript:", html, flags=re.I)
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    md = (store / "README.md").read_text()
    assert "<img" not in md and "<script" not in md and "](javascript:" not in md
    with pytest.raises(StackbenchError, match="outside|empty"):
        lb.row_path(store, "test", "stack-mix", "m", "")
    for p in paths:  # a hand-edited record (e.g. from a pull request) with a javascript: link is refused
        rec = json.loads(p.read_text())
        rec["submission"]["url"] = "javascript:alert(3)"
        p.write_text(json.dumps(rec))
    before = (store / "index.html").read_bytes()
    with pytest.raises(Refused, match="submission.url 'javascript:alert.3.': only http"):
        lb.build(store)
    assert (store / "index.html").read_bytes() == before


def test_verify_reruns_and_catches_a_hand_edited_number(store):
    paths = submit(store, "GradCAM")
    verdicts = lb.verify("test", store=store, device="cpu")
    assert len(verdicts) == 2 and all(v.passed for v in verdicts), [v.message for v in verdicts]
    rec = json.loads(paths[0].read_text())
    rec["metrics"]["mu"]["mean"] *= 0.5  # a better-looking number
    paths[0].write_text(json.dumps(rec))
    rec = json.loads(paths[1].read_text())
    rec["accuracy"]["top1"] = 1.0  # a model that looks perfect
    paths[1].write_text(json.dumps(rec))
    r = CliRunner().invoke(main, ["leaderboard", "verify", "--track", "test", "--store", str(store), "--no-rerun"])
    assert r.exit_code == 1
    assert "FAILED      test/stack-mix/minivgg-masked_random/GradCAM: " in r.stdout and "metrics.mu.mean" in r.stdout
    assert r.stdout.count("test/stack-mix/minivgg-masked_random/GradCAM") == 1  # the row named once
    assert "accuracy.top1 = 1.0 but the per-image rows give" in r.stdout
    assert "verify: 1/2 row" in r.stderr and "verify: 2/2 row" in r.stderr  # progress as the rows come


def test_verify_catches_edited_rows_and_a_missing_field(store):
    paths = submit(store, "HiResCAM")
    rows = paths[0].with_suffix(".parquet")
    rows.write_bytes(rows.read_bytes()[:-10] + b"0123456789")
    rec = json.loads(paths[1].read_text())
    del rec["model"]["fingerprint"]
    paths[1].write_text(json.dumps(rec))
    verdicts = {v.row: v for v in lb.verify("test", store=store, rerun=False)}
    assert verdicts["test/stack-mix/minivgg-masked_random/HiResCAM"].failed
    assert "does not match rows.sha256" in verdicts["test/stack-mix/minivgg-masked_random/HiResCAM"].message
    assert "field model.fingerprint is missing" in verdicts["test/stack-gen/minivgg-masked_random/HiResCAM"].message


def test_two_concurrent_submits_both_land(store):
    cmd = [sys.executable, "-m", "stackbench", "submit", "--track", "test", "--store", str(store), "--device", "cpu",
           "--no-progress", "--method"]
    procs = [subprocess.Popen(cmd + [m], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for m in ("GradCAM", "XGradCAM")]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    stored = {p.stem for p in lb.stored_rows(store, "test")}
    assert stored == {"GradCAM", "XGradCAM"}
    assert not any(v.failed for v in lb.verify("test", store=store, rerun=False))
    assert not (store / ".lock").exists() and sorted(p.name for p in store.iterdir() if p.name.startswith("."))  == []


def test_publish_leaderboard_as_a_parquet_dataset(store, monkeypatch):
    import datasets

    from stackbench import hub
    from stackbench.leaderboard.hub import plan_leaderboard

    submit(store, "GradCAM")
    plan = plan_leaderboard(store, "me/board")
    names = {f for f, _ in plan.files}
    assert {"README.md", "data/results.parquet", "data/rows.parquet", "tracks.json"} <= names
    assert any(f.startswith("results/test/stack-mix/") and f.endswith("GradCAM.json") for f in names)
    results = datasets.load_dataset("parquet", data_files=str(store / ".hub" / "data" / "results.parquet"),
                                    split="train", cache_dir=str(store.parent / "hf-cache"))
    assert len(results) == 2 and set(results["dataset"]) == {"stack-mix", "stack-gen"}
    assert json.loads(results[0]["record"])["schema"] == "stackbench.result/3"
    calls = []

    class Api:
        def __getattr__(self, name):
            return lambda *a, **k: calls.append((name, a, k))

    hub.publish(plan, api=Api())
    assert [c[0] for c in calls].count("create_commit") == 1
    # A row taken out of the store is not published again from the previous staging folder.
    gone = next(p for p in lb.stored_rows(store) if p.parent.parent.name == "stack-gen")
    gone.unlink()
    gone.with_suffix(".parquet").unlink()
    staged = {f for f, _ in plan_leaderboard(store, "me/board").files if f.startswith("results/")}
    assert staged and not any("/stack-gen/" in f for f in staged)
    rec = json.loads(lb.stored_rows(store)[0].read_text())
    rec["metrics"]["mu"]["mean"] = 0.0
    lb.stored_rows(store)[0].write_text(json.dumps(rec))
    with pytest.raises(StackbenchError, match="does not verify"):
        plan_leaderboard(store, "me/board")


# Rows of the committed board that CI re-runs (GradCAM: the model's gradients, on both sets, about 12 s each on 2
# cores with every axis); every other row is still checked for schema, rows hash, aggregates and pins, and is re-run
# by `stackbench leaderboard verify --track mini` (the controls and GradCAM were, for verified.json).
def test_a_stale_track_cache_is_rebuilt_not_resumed(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stackbench.datafolder import fingerprint, list_shards

    track = lb.load_tracks(ROOT / "leaderboard")["mini"]
    pin = track.datasets["stack-mix"]["fingerprint"]
    folder = track.dataset_folder("stack-mix", cache=tmp_path)
    assert fingerprint(folder) == pin
    # what an older stackbench left: the same recipe (so a resume would keep it), another row
    shard = list_shards(folder)[0]
    table = pq.read_table(shard)
    boxes = table["top_box"].to_pylist()
    boxes[0] = [0, 0, 1, 1]
    i = table.schema.get_field_index("top_box")
    pq.write_table(table.set_column(i, table.schema.field(i), pa.array(boxes, table.schema.field(i).type)), shard)
    assert fingerprint(folder) != pin
    assert fingerprint(track.dataset_folder("stack-mix", cache=tmp_path)) == pin


def test_committed_mini_board_verifies():
    from stackbench.methods import get_method_class, list_methods

    rows = lb.stored_rows(ROOT / "leaderboard", "mini")
    on_vgg = {n for n in list_methods() if "vgg" in get_method_class(n).architectures}
    assert {p.stem for p in rows} == on_vgg, "every built-in method that runs on a VGG is on the mini board"
    # The committed board was built from records that all pass the static checks, and marks the rows its last
    # verify reproduced. (tests/test_workflow.py re-runs its GradCAM rows as the board's pull-request check does.)
    assert not any(v.failed for v in lb.verify("mini", store=ROOT / "leaderboard", rerun=False))
    assert "reproduced" in (ROOT / "leaderboard" / "README.md").read_text()


def _mini_track(**changes) -> lb.Track:
    """The committed mini track with its stack-mix pin changed as given."""
    import copy

    t = copy.deepcopy(lb.load_tracks(ROOT / "leaderboard")["mini"])
    t.datasets = {"stack-mix": {**t.datasets["stack-mix"], **changes}}
    return t


def test_a_regenerated_dataset_off_its_pin_names_the_item_and_the_remedy(tmp_path):
    real = lb.load_tracks(ROOT / "leaderboard")["mini"].datasets["stack-mix"]
    pixels = list(real["item_pixels"])
    pixels[28] = "0" * 16
    t = _mini_track(fingerprint="f" * 64, item_pixels=pixels)
    with pytest.raises(StackbenchError) as e:
        t.dataset_folder("stack-mix", cache=tmp_path)
    msg = str(e.value)
    assert "item stack-mix-0-000028 is the first whose pixels differ; 1 of 100 items differ" in msg
    assert "has the library versions the pin was made with" in msg and "check your library versions" not in msg
    assert "--dataset stack-mix=PATH or hf:REPO@REV" in msg and "\n" not in msg
    t = _mini_track(fingerprint="f" * 64, versions={**real["versions"], "numpy": "1.0.0"})
    with pytest.raises(StackbenchError, match=r"this machine's numpy \S+ \(the pin's: 1.0.0\) may render other"):
        t.dataset_folder("stack-mix", cache=tmp_path)


def test_the_pinned_data_can_be_given_instead_of_regenerated(tmp_path, data):
    t = _mini_track()
    folder = t.dataset_folder("stack-mix", cache=tmp_path / "cache")
    copy = shutil.copytree(folder, tmp_path / "copy")
    assert t.dataset_folder("stack-mix", cache=tmp_path / "nothing", given=str(copy)) == copy
    assert not (tmp_path / "nothing").exists()  # given data is not regenerated
    with pytest.raises(StackbenchError, match=r"--dataset stack-mix=\S+/mix: fingerprint \w+, the track pins \w+ "
                                              r"\(8 items, the pin has 100\); give a copy of the track's stack-mix"):
        t.dataset_folder("stack-mix", given=str(data / "mix"))


@pytest.mark.parametrize("args, said", [
    (["--dataset", "stack-mix"], "write NAME=REF"),
    (["--dataset", "stack-mx=somewhere"], "track mini has no dataset 'stack-mx' (did you mean stack-mix"),
    (["--dataset", "stack-mix=/no/such/folder"], "/no/such/folder"),
])
def test_submit_refuses_a_wrong_dataset_override_in_one_line(tmp_path, args, said):
    r = CliRunner().invoke(main, ["submit", "--method", "GradCAM", "--store", str(tmp_path / "b"), "--no-progress",
                                  *args])
    assert r.exit_code != 0 and said in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "b").exists()  # nothing left behind
    r = CliRunner().invoke(main, ["leaderboard", "verify", "--store", str(ROOT / "leaderboard"), "--dataset",
                                  "stack-mix=x"])
    assert r.exit_code != 0 and "--dataset needs --track" in r.output


def test_verify_checks_every_given_dataset_before_any_row(tmp_path):
    """A bad --dataset is said first, in one line, even with --no-rerun; and a dataset given twice is refused."""
    (tmp_path / "empty").mkdir()
    for args, said in [(["stack-mix=" + str(tmp_path / "nope")], "no such folder"),
                       (["stack-gen=" + str(tmp_path / "empty")], "not a dataset folder (no data/*.parquet)"),
                       (["stack-mix=hf:some/repo@"], "an empty revision"),
                       (["stack-mix=a", "stack-mix=b"], "--dataset stack-mix is given twice")]:
        cmd = ["leaderboard", "verify", "--store", str(ROOT / "leaderboard"), "--track", "mini", "--no-rerun"]
        r = CliRunner().invoke(main, cmd + [x for a in args for x in ("--dataset", a)])
        assert r.exit_code == 2 and said in r.output and r.output.count("\n") == 1, r.output
        assert "FAILED" not in r.output and "stack-gen" in r.output or "stack-gen" not in args[0]


def test_a_failed_submit_removes_the_folders_it_made(tmp_path):
    r = CliRunner().invoke(main, ["submit", "--method", "GradCAM", "--store", str(tmp_path / "a" / "b" / "board"),
                                  "--dataset", "stack-gen=" + str(tmp_path / "nope")])
    assert r.exit_code == 2 and "--dataset stack-gen=" in r.output and "no such folder" in r.output
    assert "a new board" not in r.output and list(tmp_path.iterdir()) == []
