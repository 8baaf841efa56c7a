"""`leaderboard verify` means re-run and reproduced: forged rows, missing or edited plugin code, plugins that try to
end the process, and boards built from records that do not check."""
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from test_leaderboard import ROOT, data, store, submit  # noqa: F401 - fixtures

from stackbench import StackbenchError
from stackbench import leaderboard as lb
from stackbench.axes import Axes
from stackbench.cli import main
from stackbench.evaluate import aggregate_rows, evaluate, rows_table
from stackbench.methods import SaliencyMethod, register_method
from stackbench.methods.registry import _METHODS
from stackbench.models import file_sha256

REGISTERED = '''
from stackbench.methods import SaliencyMethod, register_method


@register_method("MeanAct")
class MeanAct(SaliencyMethod):
    needs = frozenset({"activations"})

    def explain(self, batch):
        return batch.activations.mean(1)
'''

EXITING = '''
import os
import sys

from stackbench.methods import SaliencyMethod


class AExit(SaliencyMethod):
    name = "AExit"
    needs = frozenset({"activations"})

    def explain(self, batch):
        if os.environ.get("STACKBENCH_TEST_EXIT") == "exit":
            sys.exit(0)
        if os.environ.get("STACKBENCH_TEST_EXIT") == "interrupt":
            raise KeyboardInterrupt
        return batch.activations.mean(1)
'''


def forge(path, factor=0.3, name=None):
    """Scale every per-image mu and recompute rows hash and aggregates, as a careful forger would; optionally
    rename the method (and the row). Returns the forged record's path."""
    rows_file = path.with_suffix(".parquet")
    rows = pq.read_table(rows_file).to_pylist()
    for r in rows:
        r["mu"] = None if r["mu"] is None else r["mu"] * factor
    blob = rows_table(rows)
    rec = json.loads(path.read_text())
    rec["metrics"] = aggregate_rows(rows, rec["seeds"]["bootstrap"])
    rec["flags"] = Axes().flags(rec["metrics"])  # a careful forger keeps the flags consistent too
    rec["rows"]["sha256"] = hashlib.sha256(blob).hexdigest()
    if name:
        rec["method"]["name"] = rec["submission"]["name"] = name
        rec["rows"]["file"] = f"{name}.parquet"
        path.unlink()
        rows_file.unlink()
        path, rows_file = path.with_name(f"{name}.json"), path.with_name(f"{name}.parquet")
    rows_file.write_bytes(blob)
    path.write_text(json.dumps(rec))
    return path


def verify_cli(store, *args):
    return CliRunner().invoke(main, ["leaderboard", "verify", "--store", str(store), "--device", "cpu", *args])


def test_a_forged_row_under_an_unknown_method_name_fails(store):
    paths = submit(store, "GradCAM")
    forge(paths[0], name="MyForgedCAM")
    r = verify_cli(store, "--no-rerun")  # the forgery is self-consistent: only a re-run can catch it
    assert r.exit_code == 0 and "not re-run (--no-rerun)" in r.output
    r = verify_cli(store, "--method", "MyForgedCAM")
    assert r.exit_code == 1, r.output
    assert "FAILED" in r.output and "'MyForgedCAM' is not a built-in of stackbench" in r.output
    assert "0 reproduced, 1 failed, 0 not re-run" in r.output
    # The same forgery under the real name fails on the numbers, naming the field and both values.
    forge(paths[1])
    r = verify_cli(store, "--method", "GradCAM")
    assert r.exit_code == 1 and "metrics.mu.mean: stored" in r.output and ", recomputed " in r.output


def test_a_method_that_exits_cannot_end_verify_and_a_later_forgery_is_caught(store, tmp_path, monkeypatch):
    plugin = tmp_path / "exiting.py"
    plugin.write_text(EXITING)
    submit(store, f"{plugin}:AExit")
    paths = submit(store, "GradCAM")
    forge(paths[1])  # stack-gen's GradCAM row, checked after stack-gen's AExit row
    for how, says in (("exit", "SystemExit(0)"), ("interrupt", "KeyboardInterrupt raised by the method itself")):
        monkeypatch.setenv("STACKBENCH_TEST_EXIT", how)
        verdicts = {v.row: v for v in lb.verify("test", store=store, device="cpu")}
        assert len(verdicts) == 4
        for ds in ("stack-mix", "stack-gen"):
            v = verdicts[f"test/{ds}/minivgg-masked_random/AExit"]
            assert v.failed and says in v.message, v.message
        assert verdicts["test/stack-gen/minivgg-masked_random/GradCAM"].failed
        assert "metrics.mu.mean" in verdicts["test/stack-gen/minivgg-masked_random/GradCAM"].message
        assert verdicts["test/stack-mix/minivgg-masked_random/GradCAM"].passed


def test_evaluate_reports_an_exiting_method_and_finishes_the_others(data, tmp_path, monkeypatch):
    plugin = tmp_path / "exiting.py"
    plugin.write_text(EXITING)
    monkeypatch.setenv("STACKBENCH_TEST_EXIT", "exit")
    r = CliRunner().invoke(main, ["evaluate", "--method", f"{plugin}:AExit", "--method", "HiResCAM", "--dataset",
                                  str(data / "mix"), "--model", "minivgg-masked@random", "--out", str(tmp_path / "o"),
                                  "--no-progress"])
    assert r.exit_code == 1 and "error: method AExit raised SystemExit(0)" in r.stderr, r.output
    assert (tmp_path / "o" / "HiResCAM.json").is_file() and not (tmp_path / "o" / "AExit.json").exists()


def test_a_real_ctrl_c_still_stops_the_run(data, tmp_path):
    # Ctrl-C reaches the harness (its workers ignore it): the run stops at once, writes nothing, leaves no worker
    import threading

    plugin = tmp_path / "slow.py"
    plugin.write_text("import time\nfrom stackbench.methods import SaliencyMethod\n"
                      "class Slow(SaliencyMethod):\n    name = 'Slow'\n"
                      "    def explain(self, batch):\n        time.sleep(60)\n")
    timer = threading.Timer(4, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        evaluate([f"{plugin}:Slow", "HiResCAM"], str(data / "mix"), "minivgg-masked@random", out=tmp_path / "o",
                 progress=False, figure=False)
    timer.cancel()
    assert time.monotonic() - t0 < 30
    assert not list((tmp_path / "o").glob("*.json"))
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("stackbench-method")]


def test_a_registered_plugin_is_rerun_from_its_stored_copy_from_anywhere(store, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "mean_act.py").write_text(REGISTERED)
    monkeypatch.chdir(src)
    paths = submit(store, "mean_act.py:MeanAct")  # a relative path, as a user types it
    copy = store / "methods" / "MeanAct" / "mean_act.py"
    assert copy.read_bytes() == (src / "mean_act.py").read_bytes()
    rec = json.loads(paths[0].read_text())
    assert rec["method"]["source"] == "methods/MeanAct/mean_act.py:MeanAct"
    assert rec["method"]["code"] == {"file": "mean_act.py", "sha256": hashlib.sha256(copy.read_bytes()).hexdigest()}
    assert rec["submission"]["method_spec"] == "mean_act.py:MeanAct"
    shutil.rmtree(src)  # the author's file is gone: the store's copy is what runs
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = subprocess.run([sys.executable, "-m", "stackbench", "leaderboard", "verify", "--store", str(store),
                        "--device", "cpu"], cwd=elsewhere, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 reproduced, 0 failed, 0 not re-run" in r.stdout
    copy.write_text(REGISTERED + "\n# edited after submission\n")
    assert all(v.failed and "has sha256" in v.message for v in lb.verify("test", store=store, device="cpu"))
    copy.unlink()  # left out of the pull request
    verdicts = lb.verify("test", store=store, device="cpu")
    assert all(v.status == lb.NOT_RERUN and "is not in the store" in v.message for v in verdicts)
    r = verify_cli(store)
    assert r.exit_code == 1 and "0 reproduced, 0 failed, 2 not re-run" in r.output
    assert verify_cli(store, "--allow-not-rerun").exit_code == 0


def test_a_package_method_that_is_not_installed_is_not_rerun(store):
    paths = submit(store, "HiResCAM")
    for p in paths:
        rec = json.loads(p.read_text())
        rec["method"].update(source="nopkg.cams:Cam", package={"name": "nopkg", "version": "1.2"})
        p.write_text(json.dumps(rec))
    verdicts = lb.verify("test", store=store, device="cpu")
    assert [v.status for v in verdicts] == [lb.NOT_RERUN] * 2
    assert all("needs package nopkg==1.2" in v.message for v in verdicts)


def test_register_method_takes_the_same_class_again_and_refuses_another():
    def define(body):
        ns = {"SaliencyMethod": SaliencyMethod, "__name__": "notebook_cell"}
        exec(f"class SameCAM(SaliencyMethod):\n    {body}\n", ns)
        return ns["SameCAM"]

    try:
        first = register_method("SameCAM")(define("needs = frozenset()"))
        again = register_method("SameCAM")(define("needs = frozenset({'activations'})"))  # the cell run again
        assert _METHODS["SameCAM"] is again is not first
        other = type("OtherCAM", (SaliencyMethod,), {"__module__": "elsewhere"})
        with pytest.raises(ValueError, match="'SameCAM' is already registered .by notebook_cell.SameCAM."):
            register_method("SameCAM")(other)
    finally:
        _METHODS.pop("SameCAM", None)


def test_the_store_is_never_the_install_location(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in (["leaderboard", "show"], ["leaderboard", "verify"], ["leaderboard", "build"],
                 ["submit", "--method", "GradCAM"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2 and r.stderr.startswith("error: no leaderboard store here"), (args, r.output)
    shutil.copytree(store, tmp_path / "leaderboard")  # a clone of the board
    r = CliRunner().invoke(main, ["leaderboard", "show"])
    assert r.exit_code == 0 and "track test" in r.output


def test_build_and_show_refuse_records_that_do_not_check(store):
    paths = submit(store, "GradCAM")
    rec = json.loads(paths[0].read_text())
    rec["metrics"]["mu"]["mean"] = 0.0  # hand-edited
    paths[0].write_text(json.dumps(rec))
    folder = paths[0].parent
    (folder / "Empty.json").write_text("{}")
    (folder / "List.json").write_text("[]")
    (folder / "Broken.json").write_text("{nope")
    for cmd in ("build", "show"):
        r = CliRunner().invoke(main, ["leaderboard", cmd, "--store", str(store)])
        errors = r.stderr.strip().splitlines()
        assert r.exit_code == 1 and len(errors) == 4 and all(e.startswith("error: test/stack-mix/") for e in errors)
        joined = "\n".join(errors)
        assert "GradCAM: metrics.mu.mean = 0.0 but the per-image rows give" in joined
        assert "Empty: field schema is None" in joined and "List: not a JSON object" in joined
        assert "Broken: not valid JSON" in joined and "Traceback" not in r.output
    assert not (store / "README.md").exists() and not (store / "mu.png").exists()


def test_the_board_marks_the_rows_the_last_verify_reproduced(store):
    submit(store, "HiResCAM")
    submit(store, "GradCAM")
    lb.verify("test", store=store, device="cpu", skip=("GradCAM",))
    assert not (store / lb.VERIFIED).exists()  # a verify of part of the store writes no badge
    lb.verify("test", store=store, device="cpu")
    assert sorted(json.loads((store / lb.VERIFIED).read_text())["rows"]) == [
        "test/stack-gen/minivgg-masked_random/GradCAM", "test/stack-gen/minivgg-masked_random/HiResCAM",
        "test/stack-mix/minivgg-masked_random/GradCAM", "test/stack-mix/minivgg-masked_random/HiResCAM"]
    lb.build(store)
    rows = {line.split(" | ")[1]: line for line in (store / "README.md").read_text().splitlines()
            if line.startswith("| - | ")}
    assert "| reproduced 20" in rows["HiResCAM"] and "| reproduced 20" in rows["GradCAM"]
    assert "reproduced 20" in (store / "index.html").read_text()
    submit(store, "HiResCAM", replace=True)  # a new record: the store is not the one verified, no badge holds
    lb.build(store)
    assert "reproduced 20" not in (store / "README.md").read_text()


def test_rendered_markdown_escapes_once_and_says_not_re_run_once(store):
    submit(store, "GradCAM", name="Bob's CAM")
    lb.build(store)
    md = (store / "README.md").read_text()
    assert "Bob's CAM" in md and "&\\#x27;" not in md and "&#x27;" not in md
    assert md.count("not re-run here") == 1
    committed = (ROOT / "leaderboard" / "README.md").read_text()
    assert "&\\#x27;" not in committed and committed.count("not re-run here") == 1


def test_a_stored_row_runs_only_code_inside_the_store(store, tmp_path):
    plugin = tmp_path / "outside.py"
    plugin.write_text(REGISTERED)
    paths = submit(store, f"{plugin}:MeanAct")
    for path, source in zip(paths, (f"{plugin}:MeanAct", "../../outside.py:MeanAct"), strict=True):
        rec = json.loads(path.read_text())
        rec["method"]["source"] = source  # the same code, but not the store's copy
        path.write_text(json.dumps(rec))
    verdicts = lb.verify("test", store=store, device="cpu")
    assert [v.status for v in verdicts] == [lb.FAILED] * 2
    assert all("is not inside the store's methods/ folder" in v.message for v in verdicts)


def test_verified_json_that_is_broken_or_predates_the_row_marks_nothing(store):
    paths = submit(store, "HiResCAM")
    entries = {lb.row_key(store, p): {"record_sha256": file_sha256(p), "date": "2020-01-01",
                                      "rows_sha256": file_sha256(p.with_suffix(".parquet"))} for p in paths}
    (store / lb.VERIFIED).write_text(json.dumps({"rows": entries}))  # forged by hand, dated before submission
    lb.build(store)
    assert "reproduced" not in [ln for ln in (store / "README.md").read_text().splitlines() if "HiResCAM" in ln][0]
    (store / lb.VERIFIED).write_text("{bad")
    r = CliRunner().invoke(main, ["leaderboard", "build", "--store", str(store)])
    assert r.exit_code == 1 and r.stderr.startswith("error: verified.json: not a verify record")
    assert all(v.passed for v in lb.verify("test", store=store, device="cpu"))  # verify writes it anew
    assert len(json.loads((store / lb.VERIFIED).read_text())["rows"]) == 2


def test_an_empty_name_is_refused(store):
    with pytest.raises(StackbenchError, match="--name is empty"):
        submit(store, "HiResCAM", name="")
