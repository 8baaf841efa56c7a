"""The dataset card's "Rebuild it" command, run as a reader would, rebuilds the same bytes."""
import json
import shlex

from click.testing import CliRunner

from stackbench import datafolder as df
from stackbench.cli import main
from stackbench.generate.stackgen import generate_stack_gen, load_prompts
from stackbench.generate.stackmix import generate_stack_mix


def rebuild_command(folder) -> tuple[list[str], list[str]]:
    """(comment lines, argv) of the command block under "## Rebuild it"."""
    card = (folder / "README.md").read_text()
    block = card.split("## Rebuild it", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [ln for ln in block.splitlines() if ln.strip()]
    return [ln for ln in lines if ln.startswith("#")], shlex.split(lines[-1])


def run(argv, out, cwd, monkeypatch):
    assert argv[:2] == ["stackbench", "generate"] and argv[-1] == "DIR"
    monkeypatch.chdir(cwd)
    r = CliRunner().invoke(main, argv[1:-1] + [str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    return df.fingerprint(out)


def test_stack_mix_card_command_rebuilds_the_set(tmp_path, monkeypatch):
    a = tmp_path / "a"
    generate_stack_mix(a, source="shapes", classes="circle, star", per_class=3, seed=5, progress=False)
    notes, argv = rebuild_command(a)
    assert notes == [] and "--classes" in argv and argv[argv.index("--classes") + 1] == "circle,star"
    assert run(argv, tmp_path / "b", tmp_path, monkeypatch) == df.fingerprint(a)


def test_stack_gen_card_command_rebuilds_the_set_default_and_own_prompts(tmp_path, monkeypatch):
    # The shipped prompts are the default: the command leaves them out.
    a = tmp_path / "a"
    generate_stack_gen(a, classes="circle,star", num_images=4, seed=2, progress=False)  # a string, like --classes
    notes, argv = rebuild_command(a)
    assert notes == [] and "--prompts" not in argv
    assert run(argv, tmp_path / "b", tmp_path, monkeypatch) == df.fingerprint(a)
    # Other prompts: the command names a prompts.json that holds the recipe's prompts object.
    own = {**load_prompts(), "scene": "a photo of a garden, soft light"}
    c = tmp_path / "c"
    generate_stack_gen(c, classes=["circle", "star"], num_images=4, seed=2, prompts=own, progress=False)
    notes, argv = rebuild_command(c)
    assert argv[argv.index("--prompts") + 1] == "prompts.json" and "generation.json" in notes[0]
    work = tmp_path / "work"
    work.mkdir()
    (work / "prompts.json").write_text(json.dumps(json.loads((c / "generation.json").read_text())["recipe"]["prompts"]))
    assert run(argv, tmp_path / "d", work, monkeypatch) == df.fingerprint(c)
