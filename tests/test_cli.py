import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
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
    assert set(lines) == {"minivgg", "minivgg-masked", "vgg16", "vgg16-masked", "minivit", "minivit-masked",
                          "minivit-pixel", "vit-b16", "vit-b16-masked", "vit-b16-pixel", "vit-ti16", "vit-ti16-masked",
                          "vit-ti16-pixel"}
    assert "rows 160..223 (64 px, 28.6% of the image" in lines["vit-b16-pixel"]
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


# ------------------------------------------------------------------------------------------------ fast start

HEAVY = ("torch", "torchvision", "datasets", "pyarrow", "pytorch_grad_cam", "diffusers", "matplotlib", "pandas",
         "captum", "accelerate", "huggingface_hub", "sklearn")


def modules_after(code: str) -> set[str]:
    """The heavy modules a fresh interpreter holds after running `code` (stdout of `code` is discarded)."""
    probe = ("import sys, io, contextlib\nwith contextlib.redirect_stdout(io.StringIO()):\n"
             + "".join(f"    {line}\n" for line in code.splitlines())
             + f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_importing_the_cli_imports_no_heavy_library():
    assert modules_after("import stackbench.cli") == set()


def test_every_help_and_version_imports_no_heavy_library():
    code = ("from stackbench.cli import main\n"
            "def walk(group, prefix):\n"
            "    for name, cmd in group.commands.items():\n"
            "        main([*prefix, name, '--help'], standalone_mode=False)\n"
            "        if hasattr(cmd, 'commands'):\n"
            "            walk(cmd, [*prefix, name])\n"
            "walk(main, [])\n"
            "main(['--help'], standalone_mode=False)\n"
            "main(['--version'], standalone_mode=False)")
    assert modules_after(code) == set()


def test_listing_methods_does_not_import_the_libraries_they_wrap():
    code = "from stackbench.cli import main\nmain(['methods'], standalone_mode=False)"
    assert not modules_after(code) & {"pytorch_grad_cam", "torchvision", "captum", "matplotlib", "datasets",
                                      "huggingface_hub"}


def test_running_eigencam_does_not_import_pytorch_grad_cam():
    # Its projection is the library's routine, rewritten: importing the library costs 5.5 s (sklearn, matplotlib)
    code = ("import torch\nfrom stackbench.api import explain\nfrom stackbench.models import create_model\n"
            "explain(create_model('minivgg-masked', seed=0), torch.rand(1, 3, 224, 224), 'EigenCAM')")
    assert not modules_after(code) & {"pytorch_grad_cam", "sklearn", "matplotlib"}


def test_builtin_adapters_name_the_library_class_they_run():
    from stackbench.methods import get_method_class

    for name in ("FullGrad", "KPCA-CAM", "ShapleyCAM", "FinerCAM"):
        cls = get_method_class(name)
        lib = cls.cam_class
        assert cls.reference == f"{lib.__module__}.{lib.__qualname__}" and cls.__name__ == f"{lib.__name__}Adapter"


def test_light_constants_agree_with_the_modules_that_own_them():
    from stackbench import constants, demo, sources, train, wall

    assert constants.ORIENTATION_NAMES == tuple(wall.ORIENTATIONS)
    assert constants.TRAIN_PRESETS == tuple(sorted(train.PRESETS))
    assert demo.DEMO_IMAGES is constants.DEMO_IMAGES and demo.QUICK_AXES is constants.QUICK_AXES
    assert sources.SOURCE_HELP is constants.SOURCE_HELP


# ------------------------------------------------------------------------------------------------ one grammar

def command_paths(group=None, prefix=()):
    """Every command and subcommand of the click group, as argument lists (["generate", "stack-mix"], ...)."""
    group = group or main
    out = []
    for name, cmd in group.commands.items():
        out.append([*prefix, name])
        if isinstance(cmd, click.Group):
            out += command_paths(cmd, (*prefix, name))
    return out


def options():
    """(command path, option, its help record as --help shows it, its default) for every option but --help."""
    for path in command_paths():
        ctx = click.Context(main, info_name="stackbench")
        cmd = main
        for name in path:
            cmd = cmd.commands[name]
            ctx = click.Context(cmd, info_name=name, parent=ctx)
        for p in cmd.params:
            if isinstance(p, click.Option) and "--help" not in p.opts:
                yield " ".join(path), p, p.get_help_record(ctx), p.to_info_dict()["default"]  # None: no default


def test_every_option_has_help_and_shows_its_default():
    seen = 0
    for where, opt, record, default in options():
        seen += 1
        assert (opt.help or "").strip(), f"stackbench {where} {opt.opts[0]} has no help text"
        assert "(default" not in opt.help, f"stackbench {where} {opt.opts[0]}: write defaults as [default: X]"
        if record is None:  # hidden (a deprecated spelling)
            continue
        if default not in (None, (), [], False):
            assert "[default: " in record[1], f"stackbench {where} {opt.opts[0]} hides its default {default!r}"
    assert seen > 100


KIND = {"REF": {"--model", "--method", "--dataset", "--sd-model", "--verify-model"},
        "DIR": {"--out", "--store"}, "SRC": {"--source", "--val-source", "--imagenet", "--train-source"},
        "PATH": {"--image"}, "SEED": {"--seed"}, "DEVICE": {"--device"}, "NAME": {"--preset"}, "REV": {"--revision"}}
# Where an option's name says one kind but the value is another: verify filters rows by their submission name;
# submit and verify take a track's dataset by name (`--dataset stack-mix=REF`).
NOT_A_REF = {("leaderboard verify", "--method"): "NAME", ("submit", "--dataset"): "NAME=REF",
             ("leaderboard verify", "--dataset"): "NAME=REF"}


def test_one_metavar_for_one_kind_of_value():
    for where, opt, _, _ in options():
        name = opt.opts[0]
        want = NOT_A_REF.get((where, name)) or next((m for m, names in KIND.items() if name in names), None)
        if want is None and not opt.is_flag and isinstance(opt.type, (click.types.IntParamType, click.IntRange)):
            want = "N"
        if want:
            assert opt.metavar == want, f"stackbench {where} {name}: metavar {opt.metavar}, want {want}"
    for path in (["publish", "dataset"], ["publish", "model"]):
        r = run(*path, "--help")
        assert f"{' '.join(path)} [OPTIONS] DIR\n" in r.output


def test_every_device_option_defaults_to_auto():
    devices = [(where, default) for where, opt, _, default in options() if opt.opts[0] == "--device"]
    assert {"wall", "evaluate", "demo", "submit"} <= {w for w, _ in devices}
    assert all(default == "auto" for _, default in devices), devices
    wall_help = run("wall", "--help").output
    assert "[default: auto]" in " ".join(wall_help.split())


def test_parallelism_is_num_proc_everywhere_and_workers_still_reads(monkeypatch, tmp_path):
    names = {(where, opt.opts[0]) for where, opt, record, _ in options() if record is not None}
    assert not {n for _, n in names if n == "--workers"}
    assert {("train", "--num-proc"), ("generate stack-mix", "--num-proc"),
            ("generate stack-gen", "--num-proc")} <= names
    configs = []
    monkeypatch.setattr("stackbench.train.train", lambda config, out, **kw: configs.append(config))
    for flag in ("--workers", "--num-proc"):
        r = CliRunner().invoke(main, ["train", "--preset", "mini", flag, "2", "--out", str(tmp_path / "t")])
        assert r.exit_code == 0 and configs[-1].workers == 2, r.output
        assert ("--workers is deprecated; use --num-proc" in r.stderr) == (flag == "--workers")
    r = CliRunner().invoke(main, ["train", "--num-proc", "1", "--workers", "2", "--out", str(tmp_path / "t")])
    assert r.exit_code == 2 and "--num-proc 1 and --workers 2 disagree" in r.output


# ------------------------------------------------------------------------------------------------ --json

def test_methods_json():
    r = CliRunner().invoke(main, ["methods", "--json"])
    rows = json.loads(r.stdout)
    assert r.exit_code == 0 and isinstance(rows, list)
    by_name = {row["name"]: row for row in rows}
    assert {"GradCAM", "HiResCAM", "Opti-CAM", "FullGrad", "ConstantSeen"} <= set(by_name)
    assert by_name["GradCAM"]["family"] == "gradient" and by_name["GradCAM"]["needs"] == ["activations", "gradients"]
    table = run("methods").output
    assert [row["name"] for row in rows] == [line.split("|")[1].strip() for line in table.splitlines()[2:]]


def test_models_json():
    r = CliRunner().invoke(main, ["models", "--json"])
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert r.exit_code == 0 and set(rows) == {"minivgg", "minivgg-masked", "vgg16", "vgg16-masked", "minivit",
                                              "minivit-masked", "minivit-pixel", "vit-b16", "vit-b16-masked",
                                              "vit-b16-pixel", "vit-ti16", "vit-ti16-masked", "vit-ti16-pixel"}
    assert rows["vgg16-masked"]["params"] == 239_938_088 and rows["vgg16-masked"]["input"] == [3, 224, 224]
    assert rows["vgg16"]["wall"] == "no wall" and rows["vgg16"]["weights"] is None
    assert rows["minivgg-masked"]["weights"] == "shipped"


def test_leaderboard_show_json(tmp_path):
    store = tmp_path / "board"
    shutil.copytree(ROOT / "leaderboard", store)
    r = CliRunner().invoke(main, ["leaderboard", "show", "--store", str(store), "--json"])
    board = json.loads(r.stdout)
    assert r.exit_code == 0 and set(board) == set(json.loads((store / "tracks.json").read_text())["tracks"])
    text = run("leaderboard", "show", "--store", str(store), "--track", "mini").output
    names = [e["name"] for e in board["mini"]["entries"]]
    assert names and all(f"| {n} " in text for n in names)
    assert all({"rank", "section", "mu", "metrics"} <= set(e) for e in board["mini"]["entries"])
    only = json.loads(CliRunner().invoke(main, ["leaderboard", "show", "--store", str(store), "--track", "mini",
                                                "--json"]).stdout)
    assert list(only) == ["mini"] and only["mini"] == board["mini"]


def test_devices_that_torch_knows_but_this_machine_lacks_are_bad_input():
    for device in ("mps", "xpu", "cpu:1"):
        r = CliRunner().invoke(main, ["wall", "--model", "minivgg-masked", "--device", device])
        assert r.exit_code == 2 and r.output.count("\n") == 1 and f"--device {device}:" in r.output, r.output


def test_leaderboard_show_names_an_unknown_track():
    r = CliRunner().invoke(main, ["leaderboard", "show", "--track", "bogus", "--store", str(ROOT / "leaderboard")])
    assert r.exit_code == 2 and "unknown track 'bogus'" in r.output
