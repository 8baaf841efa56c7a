"""Dataset and model cards: the Hub's conventions (YAML parsed back with huggingface_hub's card classes), real sizes,
licences that follow the source, citation, no Python reprs in the Markdown, and a "Rebuild it" command that,
run as a reader would, rebuilds the same set."""
import json
import re
import shlex

import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard, ModelCard

from stackbench import StackbenchError
from stackbench import datafolder as df
from stackbench.cards.dataset import command_line, render_card
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


def section(text: str, title: str) -> str:
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def check_markdown(text: str, columns: bool = True) -> None:
    """What a reader sees: no Python reprs, a meaning for every column (dataset cards), the citation."""
    body = text.split("\n---\n", 1)[1]
    assert "None" not in body and "{'" not in body and "['" not in body
    rows = re.findall(r"^\| `(\w+)` \| (.*) \|$", body, re.M)
    assert not columns or (rows and all(meaning.strip() for _, meaning in rows))
    assert "@inproceedings{taimeskhanov2024cam" in section(text, "Citation") and "@software{stackbench" in text


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    a = tmp_path_factory.mktemp("cards") / "a"
    generate_stack_mix(a, source="shapes", classes="circle, star", per_class=3, seed=5, progress=False)
    return a


def test_dataset_card_yaml_follows_the_hub_and_has_real_sizes(mix):
    card = DatasetCard.load(mix / "README.md")
    d = card.data.to_dict()
    assert d["license"] == "mit" and "license_name" not in d and "license_link" not in d  # procedural: MIT
    assert d["task_categories"] == ["image-classification"] and d["pretty_name"] == "stackbench STACK-MIX"
    assert d["size_categories"] == ["n<1K"] and d["source_datasets"] == ["original"]
    assert d["configs"] == [{"config_name": "default", "data_files": [{"split": "test", "path": "data/test-*"}]}]
    info = DatasetInfosDict.from_dataset_card_data(card.data)["default"]  # datasets reads it back
    shards = df.list_shards(mix)
    assert info.download_size == sum(p.stat().st_size for p in shards) > 0
    num_bytes = sum(pq.read_table(p).nbytes for p in shards)
    assert info.splits["test"].num_bytes == info.dataset_size == num_bytes > 0 and info.splits["test"].num_examples == 6
    check_markdown(str(card))
    assert "MIT" in section(str(card), "Licence") and "ImageNet" not in section(str(card), "Licence")
    assert "every pixel of the hidden object that lands in the band behind the wall" in card.text  # shapes: masks


def test_licence_name_and_link_only_for_imagenet(mix):
    gen = df.read_generation(mix)
    feats = df.read_shards(df.list_shards(mix)).features
    base = {"split": "val", "n_items": 50000, "n_classes": 1000, "fingerprint": "sha256:0"}
    cases = {"imagenet": {"kind": "imagefolder", "ref": "imagefolder:/data/imagenet",
                          "class_naming": "imagenet-synsets"},
             "hub": {"kind": "hf", "ref": "hf:ILSVRC/imagenet-1k"},
             "own": {"kind": "imagefolder", "ref": "imagefolder:/home/me/photos", "class_naming": "folder-names"}}
    cards = {k: render_card(feats, {**gen, "source": {**base, **src}}, (10, 10)) for k, src in cases.items()}
    for k in ("imagenet", "hub"):
        d = DatasetCard(str(cards[k])).data.to_dict()
        assert (d["license"], d["license_name"]) == ("other", "imagenet-terms-of-access")
        assert d["license_link"].startswith("https://image-net.org")
        assert d["source_datasets"] == ["extended|ILSVRC/imagenet-1k"]
        assert "non-commercial" in section(str(cards[k]), "Licence")
    own = DatasetCard(str(cards["own"]))
    assert own.data.license == "unknown" and "license_name" not in own.data.to_dict()
    assert "ImageNet" not in section(str(own), "Licence")  # a user's own photos get no ImageNet line


def test_stack_mix_card_command_rebuilds_the_set(mix, tmp_path, monkeypatch):
    notes, argv = rebuild_command(mix)
    assert notes == [] and "--classes" in argv and argv[argv.index("--classes") + 1] == "circle,star"
    assert run(argv, tmp_path / "b", tmp_path, monkeypatch) == df.fingerprint(mix)


def test_shapes_stack_gen_card_says_what_ran_and_rebuilds(tmp_path, monkeypatch):
    a = tmp_path / "a"
    generate_stack_gen(a, classes="circle,star", num_images=4, seed=2, progress=False)  # a string, like --classes
    notes, argv = rebuild_command(a)
    assert notes == [] and not {"--prompts", "--steps", "--guidance", "--max-attempts"} & set(argv)
    assert run(argv, tmp_path / "b", tmp_path, monkeypatch) == df.fingerprint(a)
    card = DatasetCard.load(a / "README.md")
    names = [f["name"] for f in card.data.to_dict()["dataset_info"]["features"]]
    assert not {"prompt_top", "negative_prompt", "steps", "guidance", "verify_top"} & set(names)
    assert "prompt_" not in card.text and "`steps`" not in card.text and "smallest box holding every pixel" in card.text
    check_markdown(str(card))
    with pytest.raises(StackbenchError, match="--prompts .*apply to --generator diffusers only"):
        generate_stack_gen(tmp_path / "c", classes="circle", num_images=2, prompts=load_prompts(), progress=False)


def test_rebuild_command_names_own_prompts_of_a_diffusers_recipe():
    recipe = {"generator": "diffusers", "model": "sd", "revision": None, "classes": ["tench"], "num_images": 2,
              "seed": 2, "steps": 3, "guidance": 7.5, "gen_size": None, "batch_size": 1, "prompts": load_prompts(),
              "verify_model": None, "min_verify": None, "max_attempts": None, "format": "png", "size": 224,
              "wall_row": 170, "encoding": "png compress_level=1"}
    gen = {"kind": "stack-gen", "recipe": recipe, "shard_size": 500}
    assert command_line(gen) == ("stackbench generate stack-gen --generator diffusers --model sd --classes tench "
                                 "--num-images 2 --seed 2 --steps 3 --guidance 7.5 --batch-size 1 --format png "
                                 "--shard-size 500 --out DIR")
    gen["recipe"] = {**recipe, "prompts": {**load_prompts(), "scene": "a garden"}}
    note, command = command_line(gen).split("\n")
    assert "generation.json" in note and "--prompts prompts.json" in command


# --- the model card ---------------------------------------------------------------------------------------------

def summary_of(optimizer: str, **cfg) -> dict:
    """A run summary as train._finish writes it, with the optimiser train.make_optimizer builds."""
    from stackbench.cards.model import describe_optimizer
    from stackbench.train import make_optimizer, preset

    config = preset("mini", source="shapes:20", val_source="shapes:20", epochs=1, optimizer=optimizer, **cfg)
    opt = make_optimizer(config, torch.nn.Linear(2, 2))
    torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)  # moves lr: the card must show the base one
    src = {"kind": "shapes", "ref": "shapes:20@0", "split": "val", "n_items": 20, "fingerprint": "sha256:0"}
    log = [{"epoch": 1, "step": 2, "loss": 2.3, "top1": 0.15, "top5": 0.45, "val_n": 20, "images_per_s": None,
            "seconds": 5.0}]
    return {"model": "minivgg-masked", "num_classes": 10, "config": config.to_dict(), "finished": True,
            "sources": {"train": {**src, "split": "train"}, "val": src}, "steps": 2, "log": log,
            "metrics": {"top1": 0.15, "top5": 0.45, "val_n": 20}, "wall": None, "optimizer": describe_optimizer(opt),
            "timing": {"seconds": 6.0, "device": "cpu", "processes": 1, "mixed_precision": "no"},
            "env": {"stackbench": "0.1.0", "torch": torch.__version__}}


def test_model_card_from_the_training_run(tmp_path):
    """train's own finishing step: model-index with the run's top-1, datasets, the real optimiser's recipe."""
    from stackbench.models import create_model
    from stackbench.train import preset
    from stackbench.train.folder import write_run as _finish

    cfg = preset("mini", source="shapes:20", val_source="shapes:20", epochs=1, batch_size=10)
    src = {"train": {"kind": "shapes", "ref": "shapes:20@0", "split": "train", "n_items": 20, "fingerprint": "s"},
           "val": {"kind": "shapes", "ref": "shapes:20@0", "split": "val", "n_items": 20, "fingerprint": "s"}}
    run = {"log": [{"epoch": 1, "step": 2, "loss": 2.3, "top1": 0.15, "top5": 0.45, "val_n": 20, "images_per_s": 3.0,
                    "seconds": 5.0}], "global_step": 2, "seconds": 6.0}
    _finish(create_model("minivgg-masked", seed=0), cfg, tmp_path, run, src, 1, "cpu", "no", 2, [], [])
    card = ModelCard.load(tmp_path / "README.md")
    (top1, top5) = card.data.eval_results
    assert (top1.metric_name, top1.metric_value, top1.dataset_split) == ("top-1 accuracy", 0.15, "val")
    assert top5.metric_value == 0.45 and top1.task_type == "image-classification"
    assert card.data.datasets == ["shapes:20@0"] and card.data.license == "mit"
    record = json.loads((tmp_path / "train.json").read_text())
    assert record["optimizer"]["class"] == "torch.optim.AdamW"
    assert record["optimizer"]["param_groups"][0]["betas"] == [0.9, 0.999]
    line = next(ln for ln in card.text.splitlines() if ln.startswith("- optimiser:"))
    assert "`torch.optim.AdamW`: lr 0.001" in line and "betas (0.9, 0.999)" in line and "momentum" not in card.text
    check_markdown(str(card), columns=False)


def test_model_card_optimiser_line_is_the_optimisers_own(tmp_path):
    from stackbench.cards.model import write_card

    write_card(tmp_path, summary_of("sgd", lr=0.03, schedule="step"))
    card = ModelCard.load(tmp_path / "README.md")
    line = next(ln for ln in card.text.splitlines() if ln.startswith("- optimiser:"))
    assert line == ("- optimiser: `torch.optim.SGD`: lr 0.03, dampening 0, momentum 0.9, nesterov no, "
                    "weight decay 0.05")
    assert "schedule: step: lr x 0.1 every 30 epochs" in card.text and "not checked yet" in card.text
    check_markdown(str(card), columns=False)
    from stackbench import train

    assert train.write_card is write_card  # the one card writer, still importable where it was
