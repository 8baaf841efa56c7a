import re
import subprocess
from pathlib import Path

from click.testing import CliRunner

import stackbench
from stackbench.cli import main

ROOT = Path(__file__).resolve().parent.parent


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_version():
    r = run("--version")
    assert r.exit_code == 0 and r.output.strip() == f"stackbench, version {stackbench.__version__}"


def test_models_table():
    r = run("models")
    assert r.exit_code == 0
    lines = {line.split("|")[1].strip(): line for line in r.output.splitlines()[2:]}
    assert set(lines) == {"minivgg", "minivgg-masked", "vgg16", "vgg16-masked"}
    assert "rows 170..223 (54 px, 24.1% of the image" in lines["vgg16-masked"]
    assert "239.9M" in lines["vgg16-masked"] and "no wall" in lines["vgg16"]


def test_wall_command_proves_the_wall():
    r = run("wall", "--model", "minivgg-masked@random", "--seed", "3")
    assert r.exit_code == 0, r.output
    assert re.search(r"traced:\s+rows 170\.\.223 \(54 px, 24\.1% of the image\)", r.output)
    assert "PASS: logits bitwise identical" in r.output and r.output.rstrip().endswith("PASS")


def test_wall_command_on_an_unwalled_model():
    r = run("wall", "--model", "minivgg@random")
    assert r.exit_code == 0 and "no dead rows" in r.output


def test_bad_model_is_one_line_and_exit_2():
    r = CliRunner().invoke(main, ["wall", "--model", "minivgg-maskd@random"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [r.output.strip()]
    assert r.output.startswith("error: unknown model 'minivgg-maskd'") and "did you mean minivgg-masked" in r.output


def test_a_library_error_inside_ours_is_one_line_even_without_a_message():
    from stackbench.errors import first_line

    assert first_line(OSError()) == "OSError"  # bare exceptions used to crash the message (IndexError)
    assert first_line(ValueError("  bad header\nTraceback...")) == "ValueError: bad header"
    assert first_line(RuntimeError("x" * 500), 160) == "RuntimeError: " + "x" * 160


def test_console_script_and_module_entry_point():
    out = subprocess.run(["python", "-m", "stackbench", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("stackbench, version")


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```(?:bash|sh)\n(.+?)\n```", readme, flags=re.S)
    assert len(commands) >= 2 and "stackbench" in commands[0]
    test_command = commands[1].strip()
    assert "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()
