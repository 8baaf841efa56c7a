"""The wheel is the product: built from the repository, installed into a fresh folder outside it, and run from a
working directory that holds nothing of stackbench's (no clone, no presets, no board)."""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# what a source distribution holds: the package, the top-level data folders the build maps in, the build files
SOURCE = ["stackbench", "generation", "cards", "leaderboard/tracks.json", "leaderboard/reported", "setup.py",
          "pyproject.toml", "README.md"]
SHIPPED = ["stackbench/_data/generation/stack-mix/mini.json", "stackbench/_data/generation/stack-gen/mini.json",
           "stackbench/_data/generation/classes/imagenette.txt", "stackbench/_data/cards/dataset_card.md",
           "stackbench/_data/cards/model_card.md", "stackbench/_data/cards/citation.md",
           "stackbench/_data/board/tracks.json",
           "stackbench/_data/board/reported/paper.json", "stackbench/weights/minivgg-masked.safetensors"]
REPORT_FILES = {"table.md", "mu.png", "report.html", "report.json", "overlays-stack-mix.png", "overlays-stack-gen.png"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(target folder, wheel path): the wheel built from a copy of the sources and installed with --target."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    for part in SOURCE:
        dest = src / part
        dest.parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (REPO / part).is_dir() else shutil.copy2
        extra = {"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}
        copy(REPO / part, dest, **extra)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(src)],
                   check=True, capture_output=True)
    (wheel,) = (root / "dist").glob("stackbench-*.whl")
    target = root / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    return target, wheel


def _run(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The installed `stackbench` script, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(target), "STACKBENCH_CACHE": str(cwd / "cache")}
    return subprocess.run([str(target / "bin" / "stackbench"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True)


def test_the_wheel_carries_what_commands_read(installed):
    _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not [f for f in SHIPPED if f not in names]
    assert not [n for n in names if "leaderboard/results" in n or n.endswith(".parquet")]  # the board's rows stay out


def test_generate_demo_and_submit_from_the_installed_wheel(installed, tmp_path):
    target, _ = installed
    work = tmp_path / "work"
    work.mkdir()
    where = subprocess.run([sys.executable, "-c", "import stackbench; print(stackbench.__file__)"], cwd=work,
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(target)})
    assert where.stdout.strip() == str(target / "stackbench" / "__init__.py")

    # the mini STACK-MIX, generated from the packaged preset into the track's cache: the board's pinned dataset
    pins = json.loads((target / "stackbench/_data/board/tracks.json").read_text())["tracks"]["mini"]["datasets"]
    gen = _run(target, work, "generate", "stack-mix", "--preset", "mini", "--out", "cache/mini/stack-mix-mini",
               "--no-progress")
    assert gen.returncode == 0, gen.stderr
    assert f"fingerprint: {pins['stack-mix']['fingerprint']}" in gen.stdout

    _demo_quick(target, work)

    sub = _run(target, work, "submit", "--method", "GradCAM", "--store", "board", "--no-progress")
    assert sub.returncode == 0, sub.stderr
    for ds in ("stack-mix", "stack-gen"):
        record = json.loads((work / f"board/results/mini/{ds}/minivgg-masked/GradCAM.json").read_text())
        assert record["dataset"]["fingerprint"] == pins[ds]["fingerprint"]
    assert (work / "board/tracks.json").read_bytes() == (REPO / "leaderboard/tracks.json").read_bytes()
    # the commit hint names the files as typed here (relative), the rendered board's four included
    assert "next: stackbench leaderboard build --store board, then commit" in sub.stdout  # the store it wrote to
    hint = next(line for line in sub.stdout.splitlines() if line.startswith("  git add "))
    assert {"board/results/mini/stack-mix/minivgg-masked/GradCAM.json", "board/axes.png", "board/tracks.json",
            "board/reported"} <= set(hint.split())  # a new board: its tracks and reported numbers too


def _demo_quick(target: Path, work: Path) -> None:
    """The demo's main job, from the wheel: Table 1 with the packaged paper numbers, HiResCAM exactly 0."""
    args = ["demo", "--quick", "--num-images", "2", "--axes-images", "1", "--out", "demo", "--no-progress"]
    r = _run(target, work, *args)
    assert r.returncode == 0, r.stderr
    out = work / "demo"
    assert REPORT_FILES <= {p.name for p in out.iterdir()}
    table = (out / "table.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| HiResCAM |"))
    assert [c.strip() for c in row.strip("|").split("|")][1:3] == ["0.0 ± 0.0", "0.0 ± 0.0"]
    assert "| paper STACK-MIX |" in table  # the packaged reported numbers
    summary = json.loads((out / "report.json").read_text())
    hires = summary["mu"]["HiResCAM"]
    assert hires["stack-mix"]["mean"] == 0.0 and hires["stack-gen"]["mean"] == 0.0
    assert summary["findings"][0].startswith("HiResCAM: mu = 0 exactly")
    assert summary["records"]["HiResCAM"]["stack-mix"] == "results/stack-mix/HiResCAM.json"  # relative to report.json
    assert "seeded sample of 1 image per set" in (out / "axes.md").read_text()
    assert "| HiResCAM |" in r.stdout and "report.html" in r.stdout
    # a second run reuses the datasets and the finished records
    again = _run(target, work, *args)
    assert again.returncode == 0 and table == "\n".join(
        line for line in again.stdout.splitlines() if line.startswith("|")) + "\n"
