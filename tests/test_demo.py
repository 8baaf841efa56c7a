"""The main jobs: `reproduce` with stand-ins (`stackbench demo --quick` runs from the wheel: test_wheel.py)."""
import json
import re

from click.testing import CliRunner

from stackbench import rates
from stackbench.cli import main
from stackbench.generate.pipelines import random_pipeline
from stackbench.rates import REFERENCES
from stackbench.sources import shapes

REPORT_FILES = {"table.md", "mu.png", "report.html", "report.json", "overlays-stack-mix.png", "overlays-stack-gen.png"}


def _hirescam_row(table: str) -> list[str]:
    row = next(line for line in table.splitlines() if line.startswith("| HiResCAM |"))
    return [c.strip() for c in row.strip("|").split("|")]


def _imagefolder(root, classes=("tench", "goldfish", "great white shark"), per_class=4):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img, _, _ = shapes.item(seed=5, index=10 * c + i, split="test")
            img.resize((320, 240)).save(root / name / f"img{i}.JPEG", quality=90)
    return root


def test_a_measured_rate_serves_only_its_architecture(tmp_path, monkeypatch):
    # A ViT demo's cost per image (other methods, Opti-CAM and ScoreCAM dearer per forward) must not become the VGG
    # demo's estimate, nor the other way round: each architecture starts from its own shipped measurement.
    monkeypatch.setenv("STACKBENCH_CACHE", str(tmp_path / "cache"))
    _, vit_basis = rates.per_unit("minivit-masked@random", "cpu")
    assert f"with {REFERENCES['vit']['model']}" in vit_basis
    rates.record("cpu", "vit", "minivit-masked@random", 9.0, 0.01)
    _, vgg_basis = rates.per_unit("minivgg-masked", "cpu")
    assert f"with {REFERENCES['vgg']['model']}" in vgg_basis and rates.recorded("cpu", "vgg") is None
    unit, vit_basis = rates.per_unit("minivit-masked@random", "cpu")
    assert "with minivit-masked@random, scaled" in vit_basis and unit > 0  # this machine's own measurement
    assert rates.recorded("cpu", "vit")["unit_s"] == 9.0


def test_reproduce_with_stand_ins(tmp_path, monkeypatch):
    monkeypatch.setenv("STACKBENCH_CACHE", str(tmp_path / "cache"))  # a real run records its measured rate there
    from stackbench.methods.opticam import OptiCAM

    monkeypatch.setitem(OptiCAM.defaults, "steps", 2)  # the wiring is under test, not Opti-CAM (50 steps: 80% of it)
    folder = _imagefolder(tmp_path / "imagenet")
    random_pipeline("tiny", seed=0).save_pretrained(tmp_path / "sd")
    args = ["reproduce", "--preset", "paper", "--imagenet", f"imagefolder:{folder}", "--sd-model", str(tmp_path / "sd"),
            "--model", "minivgg-masked@random", "--num-images", "2", "--axes-images", "1", "--steps", "2",
            "--verify-model", "none",
            "--out", str(tmp_path / "paper"), "--no-progress"]
    dry = CliRunner().invoke(main, args + ["--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert len(re.findall(r"^\[\d/3\] ", dry.output, flags=re.M)) == 3 and "estimate" in dry.output
    assert "nothing was run" in dry.output and not (tmp_path / "paper").exists()
    # the evaluation's estimate: a measured rate, scaled by a calibration timed on this machine, both named
    vgg = REFERENCES["vgg"]
    assert f"evaluate estimate: measured on {vgg['machine']} on {vgg['date']} with {vgg['model']}" in dry.output
    assert "calibration timed here now" in dry.output and " cores" in dry.output
    i = args.index("--axes-images")  # without it, reproduce measures mu alone: the paper's Table 1 is mu
    paper = CliRunner().invoke(main, args[:i] + args[i + 2:] + ["--dry-run"])
    assert paper.exit_code == 0 and "board's axes: not measured (the paper's protocol: mu alone)" in paper.output
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "\x1b[" not in r.stderr and "evaluate stack-mix:" not in r.stderr  # --no-progress: no bars, no lines
    measured = json.loads((tmp_path / "cache" / "rates.json").read_text())  # what it cost here, for the next estimate
    assert [k.endswith(" vgg") for k in measured] == [True]
    assert REPORT_FILES <= {p.name for p in (tmp_path / "paper").iterdir()}
    assert _hirescam_row((tmp_path / "paper" / "table.md").read_text())[1:3] == ["0.0 ± 0.0", "0.0 ± 0.0"]
    assert "seeded sample of 1 image per set" in (tmp_path / "paper" / "axes.md").read_text()
    gen = json.loads((tmp_path / "paper" / "data" / "stack-gen" / "generation.json").read_text())
    assert gen["source"]["kind"] == "diffusers" and gen["n"] == 2


def test_reproduce_needs_one_model_choice(tmp_path):
    r = CliRunner().invoke(main, ["reproduce", "--imagenet", "imagefolder:x", "--sd-model", "y", "--out",
                                  str(tmp_path)])
    assert r.exit_code == 2 and "exactly one of --model REF" in r.output


def test_a_folder_with_other_files_is_left_alone(tmp_path):
    (tmp_path / "thesis.tex").write_text("mine")
    for args in (["demo", "--quick"], ["reproduce", "--imagenet", "imagefolder:x", "--sd-model", "y", "--train"]):
        r = CliRunner().invoke(main, [*args, "--out", str(tmp_path), "--dry-run"])
        assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
        assert "already holds other files (thesis.tex)" in r.output and "new or empty folder" in r.output
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]
    r = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "thesis.tex" / "sub"), "--dry-run"])
    assert r.exit_code == 2 and "thesis.tex is a file; give a folder" in r.output, r.output
    hidden = tmp_path / "finder"
    hidden.mkdir()
    (hidden / ".DS_Store").write_text("")
    assert CliRunner().invoke(main, ["demo", "--quick", "--out", str(hidden), "--dry-run"]).exit_code == 0


def test_an_earlier_run_with_other_settings_is_named_with_the_fix(tmp_path):
    # an earlier demo's dataset of 4 images; asking for 5 cannot resume it (demo has no --overwrite)
    from stackbench.generate import generate_stack_mix

    generate_stack_mix(tmp_path / "data" / "stack-mix", source="shapes", num_images=4, layout="fit", progress=False)
    r = CliRunner().invoke(main, ["demo", "--num-images", "5", "--out", str(tmp_path), "--no-progress"])
    last = r.output.strip().splitlines()[-1]
    assert r.exit_code == 2 and last.startswith(f"error: --out {tmp_path} holds an earlier run with other settings "
                                                "(recipe.num_images)"), r.output
    assert "give a new --out" in last and "--overwrite" not in r.output


def test_a_flag_from_one_set_names_the_set_beside_the_mean():
    from stackbench.report import axes_table

    def part(corr, flagged):
        record = {"metrics": {"rand_corr": {"mean": corr}, "mu_hidden": {"mean": 0.3}, "deletion_auc": {"mean": 0.2}},
                  "flags": {"model_insensitive": flagged, "orientation_dependent": False}}
        return {"record": record, "rows": [{"mu": 0.3, "orientation": "hflip"}]}

    found = {"ScoreCAM": {"stack-mix": part(0.84, True), "stack-gen": part(0.64, False)},
             "GradCAM": {"stack-mix": part(0.9, True), "stack-gen": part(0.85, True)}}
    rows = {line.split("|")[1].strip(): line for line in axes_table(found, ["stack-mix", "stack-gen"]).splitlines()
            if line.startswith("| ") and "method" not in line}
    assert "| 0.740 | - | model-insensitive (STACK-MIX) |" in rows["ScoreCAM"]  # the mean is under 0.8: say where
    assert rows["GradCAM"].endswith("| model-insensitive |")
