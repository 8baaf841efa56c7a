"""The board's pull-request workflow (.github/workflows/leaderboard.yml): its commands, run here on a pull request
this test makes against a copy of the committed board."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "leaderboard.yml"


def _workflow():
    wf = yaml.safe_load(WORKFLOW.read_text())
    return wf, wf["jobs"]["verify"]


def test_the_workflow_runs_on_board_pull_requests_on_x86_and_arm():
    wf, job = _workflow()
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as true
    assert on["pull_request"]["paths"] == ["leaderboard/**"]
    assert {"ubuntu-latest", "ubuntu-24.04-arm"} <= set(job["strategy"]["matrix"]["runner"])
    assert wf["permissions"] == {"contents": "read"}  # a pull request's code gets no write token
    assert [s["run"] for s in job["steps"] if "run" in s][0] == "pip install ."


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=cwd, check=True,
                   capture_output=True)


def _run_steps(clone: Path, base: str) -> list[subprocess.CompletedProcess]:
    """Each `run` step after the install, as GitHub runs it (bash -eo pipefail), in the pull request's checkout."""
    _, job = _workflow()
    env = {**os.environ, **{k: (base if "base_ref" in v else v) for k, v in job["env"].items()}}
    out = []
    for step in [s for s in job["steps"] if "run" in s][1:]:
        out.append(subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=clone,
                                  env=env, capture_output=True, text=True, timeout=900))
        if out[-1].returncode:
            break
    return out


def test_a_pull_request_that_changes_a_row_is_rerun_and_a_forged_board_is_caught(tmp_path):
    origin = tmp_path / "origin"
    shutil.copytree(ROOT / "leaderboard", origin / "leaderboard")
    (origin / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "changed_rows.py", origin / "scripts")
    _git(origin, "init", "-q", "-b", "main")
    _git(origin, "add", "-A")
    _git(origin, "commit", "-qm", "the board")
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(origin), str(clone))
    _git(clone, "checkout", "-qb", "pr")
    # The pull request: GradCAM re-submitted with another description, the board rebuilt as `submit` says to.
    for p in clone.glob("leaderboard/results/mini/*/*/GradCAM.json"):
        rec = json.loads(p.read_text())
        rec["submission"]["description"] = "re-submitted"
        p.write_text(json.dumps(rec, indent=1))
    subprocess.run(["stackbench", "leaderboard", "build"], cwd=clone, check=True, capture_output=True)
    _git(clone, "commit", "-qam", "GradCAM again")
    done = _run_steps(clone, "main")
    assert [r.returncode for r in done] == [0, 0, 0, 0], done[-1].stdout[-3000:] + done[-1].stderr[-3000:]
    rerun = done[-1].stdout
    assert "rows to re-run:\nmini GradCAM\n" in rerun and rerun.count("2 reproduced, 0 failed, 0 not re-run") == 1
    # A pull request that brings its own badges is stopped at the badge step.
    badges = clone / "leaderboard" / "verified.json"
    kept = badges.read_text()
    badges.write_text(kept.replace('"rows": {', '"rows": {"mini/stack-mix/minivgg-masked/Mine": {}, ', 1))
    _git(clone, "commit", "-qam", "my own badge")
    done = _run_steps(clone, "main")
    assert [r.returncode for r in done][:1] == [0] and done[1].returncode != 0 and "Mine" in done[1].stdout
    badges.write_text(kept)
    _git(clone, "commit", "-qam", "the base branch's badges")
    # A pull request whose rendered board says something its rows do not is stopped at the first step.
    readme = clone / "leaderboard" / "README.md"
    readme.write_text(readme.read_text().replace("| GradCAM |", "| GradCAM (best) |", 1))
    _git(clone, "commit", "-qam", "a better-looking board")
    done = _run_steps(clone, "main")
    assert done[0].returncode != 0 and "GradCAM (best)" in done[0].stdout
