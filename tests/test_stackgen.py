"""STACK-GEN end to end: the shapes scene renderer and a tiny random Stable Diffusion checkpoint on disk."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from huggingface_hub import DatasetCard

from stackbench import StackbenchError
from stackbench import datafolder as df
from stackbench.cli import main
from stackbench.generate.pipelines import random_pipeline, save_random_clip
from stackbench.generate.stackgen import StackGenRecipe, generate_stack_gen


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd") / "tiny-sd"
    random_pipeline("tiny", seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return save_random_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def images(folder):
    ds, _ = df.open_dataset(str(folder))
    return [np.asarray(r["image"]) for r in ds], ds


def sd_recipe(sd_folder, **kw):
    base = dict(generator="diffusers", model=str(sd_folder), num_images=4, steps=2, classes=["tench", "golf ball"],
                seed=3)
    return StackGenRecipe(**{**base, **kw})


def spy_on_shapes(monkeypatch) -> list:
    """Records, for every object the shapes renderer draws, the exact bounds of its mask's nonzero pixels."""
    from stackbench.sources import shapes

    masks, bounds = [], []
    object_mask, draw_object = shapes.object_mask, shapes.draw_object

    def mask_spy(*args):
        masks.append(object_mask(*args))
        return masks[-1]

    def draw_spy(canvas, cls, box, rng):
        out = draw_object(canvas, cls, box, rng)
        ys, xs = np.nonzero(np.asarray(masks[-1]))
        x0, y0 = (int(round(v)) for v in box[:2])  # where draw_object pastes the mask
        bounds.append([x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1])
        return out

    monkeypatch.setattr(shapes, "object_mask", mask_spy)
    monkeypatch.setattr(shapes, "draw_object", draw_spy)
    return bounds


def test_shapes_scenes_put_one_object_behind_the_wall(tmp_path, monkeypatch):
    drawn = spy_on_shapes(monkeypatch)
    r = CliRunner().invoke(main, ["generate", "stack-gen", "--generator", "shapes", "--num-images", "10",
                                  "--out", str(tmp_path / "a"), "--no-progress"])
    assert r.exit_code == 0, r.output
    imgs, ds = images(tmp_path / "a")
    assert len(ds) == 10 and set(ds["class_name"]) == {"circle", "square", "triangle", "star", "cross", "ring",
                                                          "crescent", "heart", "arrow", "lightning"}
    # no diffusion columns (nor empty verifier scores) on scenes no diffusion model made
    assert ds.column_names == ["id", "image", "label", "class_name", "wall_row", "seed", "top_box", "bottom_box",
                               "generator"] and set(ds["generator"]) == {"shapes/3"}
    # each box is the exact bounds of its object's pixels; the hidden one lies wholly behind the wall
    assert len(drawn) == 20
    for row, top, bottom in zip(ds, drawn[0::2], drawn[1::2], strict=True):
        assert row["top_box"] == top and row["bottom_box"] == bottom
        assert row["wall_row"] == 170 and 170 <= row["bottom_box"][1] and row["bottom_box"][3] <= 224
        assert row["top_box"][3] <= 170 and row["image"].size == (224, 224)
    gen = df.read_generation(tmp_path / "a")["recipe"]
    assert gen["steps"] is gen["guidance"] is gen["prompts"] is gen["max_attempts"] is None
    # the same command again (another folder) gives the same bytes
    CliRunner().invoke(main, ["generate", "stack-gen", "--generator", "shapes", "--num-images", "10",
                              "--out", str(tmp_path / "b"), "--no-progress"])
    assert df.fingerprint(tmp_path / "a") == df.fingerprint(tmp_path / "b")


def test_diffusers_same_seed_same_images_and_batch_independent(tmp_path, sd_folder):
    generate_stack_gen(tmp_path / "b1", sd_recipe(sd_folder), progress=False)
    generate_stack_gen(tmp_path / "b1again", sd_recipe(sd_folder), progress=False)
    assert df.fingerprint(tmp_path / "b1") == df.fingerprint(tmp_path / "b1again")
    generate_stack_gen(tmp_path / "b4", sd_recipe(sd_folder, batch_size=4), progress=False)
    one, ds = images(tmp_path / "b1")
    four, _ = images(tmp_path / "b4")
    for a, b in zip(one, four, strict=True):  # float round-off of batched kernels: at most one 8-bit level
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    row = ds[0]
    assert row["generator"] == str(sd_folder) and row["steps"] == 2 and row["prompt_bottom"].startswith("a photo of a")
    assert row["class_name"] in ("tench", "golf ball") and "verify_top" not in row  # no verifier, no score column
    assert row["guidance"] == 7.5 and row["bottom_box"][1] == 170 and row["bottom_box"][3] == 224
    # the card: the diffusion columns explained, the recipe that ran, a licence nobody stated is `unknown`
    card = DatasetCard.load(tmp_path / "b1" / "README.md")
    assert card.data.license == "unknown" and "license_name" not in card.data.to_dict()
    assert "| `steps` | denoising steps of the sampler |" in card.text and "not a detected box" in card.text
    assert "--steps 2 --guidance 7.5" in card.text and "None" not in card.text
    gen = df.read_generation(tmp_path / "b1")
    assert gen["source"]["kind"] == "diffusers" and len(gen["source"]["fingerprint"]) == 64


def test_verify_scores_and_deterministic_replacement(tmp_path, clip_folder):
    base = dict(generator="shapes", verify_model=str(clip_folder), num_images=8, classes=["circle", "star"], seed=1)
    generate_stack_gen(tmp_path / "scored", StackGenRecipe(**base), progress=False)
    _, ds = images(tmp_path / "scored")
    assert all(0 < s < 1 for s in list(ds["verify_top"]) + list(ds["verify_bottom"]))
    # a threshold between the two lowest scores of one class: its worst item fails its first attempt, and
    # later attempts (new seeds) of that class mostly pass
    cls = ds[0]["class_name"]
    mins = sorted(min(r["verify_top"], r["verify_bottom"]) for r in ds if r["class_name"] == cls)
    threshold = (mins[0] + mins[1]) / 2
    strict = StackGenRecipe(**base, min_verify=threshold, max_attempts=8)
    generate_stack_gen(tmp_path / "v1", strict, progress=False)
    generate_stack_gen(tmp_path / "v2", StackGenRecipe(**base, min_verify=threshold, max_attempts=8), progress=False)
    assert df.fingerprint(tmp_path / "v1") == df.fingerprint(tmp_path / "v2")
    _, kept = images(tmp_path / "v1")
    dropped = df.read_generation(tmp_path / "v1")["dropped"]
    assert len(kept) + len(dropped) == 8
    assert all(min(r["verify_top"], r["verify_bottom"]) >= threshold for r in kept)
    first = {r["id"]: np.asarray(r["image"]) for r in ds}
    replaced = [r["id"] for r in kept if not np.array_equal(np.asarray(r["image"]), first[r["id"]])]
    assert replaced, "the item below the threshold must have been regenerated"


def test_two_processes_give_the_same_dataset_as_one(tmp_path):
    args = ["generate", "stack-gen", "--generator", "shapes", "--num-images", "12", "--shard-size", "3",
            "--no-progress"]
    assert CliRunner().invoke(main, args + ["--out", str(tmp_path / "one")]).exit_code == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29531", "-m", "stackbench", *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert df.fingerprint(tmp_path / "one") == df.fingerprint(tmp_path / "two")
    assert json.loads((tmp_path / "two" / "generation.json").read_text())["status"] == "complete"
    assert (tmp_path / "two" / "README.md").read_text() == (tmp_path / "one" / "README.md").read_text()


def test_bad_inputs_are_one_clear_line(tmp_path, sd_folder):
    def err(*args):
        r = CliRunner().invoke(main, ["generate", "stack-gen", *args, "--out", str(tmp_path / "x"), "--no-progress"])
        assert r.exit_code == 2, r.output
        return r.output

    assert "no such folder" in err("--generator", "diffusers", "--model", str(tmp_path / "nothing"))
    (tmp_path / "notsd").mkdir()
    (tmp_path / "notsd" / "config.json").write_text("{}")
    assert "not a diffusers pipeline folder" in err("--generator", "diffusers", "--model", str(tmp_path / "notsd"))
    bad = tmp_path / "prompts.json"
    bad.write_text(json.dumps({"top": "a {name}", "bottom": "a {name}", "scene": "  ", "negative": "blurry"}))
    assert "empty 'scene' prompt" in err("--prompts", str(bad))
    bad.write_text("top: a {name}")  # not JSON: one line naming the file, not "a bug in stackbench"
    assert "prompt template" in err("--prompts", str(bad)) and "not a readable JSON file" in err("--prompts", str(bad))
    bad.write_text("[1, 2]")
    assert "is not a JSON object" in err("--prompts", str(bad))
    assert "unknown class 'unicorn'" in err("--classes", "unicorn")
    assert "give a class name or an index 0..9 (circle, square" in err("--classes", "99")
    with pytest.raises(StackbenchError, match="needs --model"):
        StackGenRecipe(generator="diffusers").validate()
    # a shapes scene has no sampler: diffusion settings are refused, not silently recorded
    assert "--steps, --guidance (given here or by the preset) apply to --generator diffusers only" in err(
        "--generator", "shapes", "--steps", "30", "--guidance", "7.5")
    assert "--max-attempts counts the attempts under --min-verify" in err("--max-attempts", "3")
    # a verifier that cannot load fails the first item: the folder this run made is not left half-written
    assert "not a loadable CLIP model" in err("--verify-model", str(tmp_path / "notsd"), "--num-images", "2")
    assert not (tmp_path / "x").exists()
