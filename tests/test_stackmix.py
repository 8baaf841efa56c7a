"""STACK-MIX: determinism (seed, --num-proc, kill -9 + resume), bad inputs, load_dataset round trip, boxes vs
pixels, CLI errors."""
import io
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from huggingface_hub import DatasetCard
from PIL import Image
from test_sources import make_bad_folder

from stackbench import datafolder as df
from stackbench.cli import main
from stackbench.errors import StackbenchError
from stackbench.generate import StackMixRecipe, contain, cover, generate_stack_mix
from stackbench.generate.compose import compose
from stackbench.sources import open_source


def run(*args):
    return CliRunner().invoke(main, ["generate", "stack-mix", *map(str, args), "--no-progress"])


def folder_bytes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def shapes_cut(tmp_path_factory):
    out = tmp_path_factory.mktemp("mix") / "cut"
    r = run("--source", "shapes", "--per-class", 2, "--seed", 3, "--shard-size", 6, "--out", out)
    assert r.exit_code == 0, r.output
    return out, r.output


def test_summary_and_folder_layout(shapes_cut):
    out, output = shapes_cut
    assert "wrote:     20 images" in output and "(4 shards: 4 built, 0 reused)" in output
    assert "images/s" in output and "skipped:   0 input(s)" in output
    assert [p.name for p in df.list_shards(out)] == [f"test-0000{i}-of-00004.parquet" for i in range(4)]
    g = df.read_generation(out)
    assert g["status"] == "complete" and g["n"] == 20 and g["fingerprint"] == df.fingerprint(out)
    assert g["recipe"]["seed"] == 3 and g["source"]["kind"] == "shapes" and g["versions"]["pillow"]
    ds, info = df.open_dataset(str(out))
    assert info["n"] == 20 and ds.features == df.features("stack-mix", open_source("shapes").class_names)
    assert Counter(ds["label"]) == {c: 2 for c in range(10)}  # --per-class 2, balanced
    assert all(a != b for a, b in zip(ds["top_source"], ds["bottom_source"], strict=True))
    assert len(set(ds["id"])) == 20 and set(ds["wall_row"]) == {170} and set(ds["layout"]) == {"cut"}
    # procedural objects: each box is that item's object (they differ), said so on the card
    assert len({tuple(b) for b in ds["top_box"]}) > 10 and None in ds["bottom_box"]
    card = DatasetCard.load(out / "README.md").text
    assert re.search(r"^\| `bottom_box` \| .*every pixel of the hidden object that lands in the band.*"
                     r"null when none of it does \|$",
                     card, re.M)


def test_same_seed_same_bytes_across_num_proc(shapes_cut, tmp_path):
    out, _ = shapes_cut
    par = tmp_path / "par"
    r = run("--source", "shapes", "--per-class", 2, "--seed", 3, "--shard-size", 6, "--num-proc", 2, "--out", par)
    assert r.exit_code == 0, r.output
    assert folder_bytes(par) == folder_bytes(out)  # shards, generation.json and card alike
    other = generate_stack_mix(tmp_path / "seed4", source="shapes", per_class=2, seed=4, shard_size=6,
                               progress=False)
    assert other.generation["fingerprint"] != df.fingerprint(out)


def test_items_are_the_same_whatever_the_shard_size(shapes_cut, tmp_path):
    out, _ = shapes_cut
    r = run("--source", "shapes", "--per-class", 2, "--seed", 3, "--shard-size", 7, "--out", tmp_path / "s7")
    assert r.exit_code == 0, r.output
    a, _ = df.open_dataset(str(out))
    b, _ = df.open_dataset(str(tmp_path / "s7"))
    a, b = a.cast_column("image", a.features["image"].__class__(decode=False)), b.cast_column(
        "image", b.features["image"].__class__(decode=False))
    assert a.to_list() == b.to_list()


def test_kill_9_then_resume_ends_byte_identical(tmp_path):
    args = ["--source", "shapes", "--per-class", 4, "--seed", 1, "--shard-size", 4, "--layout", "fit"]
    clean = tmp_path / "clean"
    assert run(*args, "--out", clean).exit_code == 0
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "stackbench", "generate", "stack-mix", *map(str, args), "--out", str(out),
           "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not df.list_shards(out) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = df.list_shards(out)
    assert 1 <= len(done) < 10, "the run was not interrupted mid-way"
    assert df.read_generation(out)["status"] == "incomplete" and not (out / "README.md").exists()
    (out / "data" / ".test-00009-of-00010.parquet.abc.tmp").write_bytes(b"half a shard")  # as a kill leaves it
    mtimes = {p.name: p.stat().st_mtime_ns for p in done}
    r = run(*args, "--out", out)
    assert r.exit_code == 0, r.output
    assert f"{len(done)} reused" in r.output
    assert all((out / "data" / n).stat().st_mtime_ns == t for n, t in mtimes.items())  # not rebuilt
    assert folder_bytes(out) == folder_bytes(clean)
    # A finished folder: a rerun builds nothing and changes nothing.
    r = run(*args, "--out", out)
    assert "(10 shards: 0 built, 10 reused)" in r.output and folder_bytes(out) == folder_bytes(clean)


def test_other_recipe_is_refused_unless_overwrite(shapes_cut, tmp_path):
    out = tmp_path / "o"
    assert run("--source", "shapes", "--num-images", 12, "--out", out).exit_code == 0
    r = run("--source", "shapes", "--num-images", 12, "--seed", 9, "--out", out)
    assert r.exit_code == 2 and r.output.count("\n") == 1
    assert "another recipe (differs in recipe.seed)" in r.output and "--overwrite" in r.output
    r = run("--source", "shapes", "--num-images", 12, "--seed", 9, "--out", out, "--overwrite")
    assert r.exit_code == 0 and df.read_generation(out)["recipe"]["seed"] == 9
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "mine.txt").write_text("x")
    r = run("--source", "shapes", "--num-images", 12, "--out", tmp_path / "foreign", "--overwrite")
    assert r.exit_code == 2 and "not written by `stackbench generate`" in r.output
    assert (tmp_path / "foreign" / "mine.txt").exists()


def test_load_dataset_round_trip_keeps_features(shapes_cut):
    import datasets

    out, _ = shapes_cut
    ds = datasets.load_dataset(str(out), split="test", cache_dir=str(out.parent / "hf-cache"))  # no stale cache
    ours, _ = df.open_dataset(str(out))
    assert ds.features == ours.features and ds.features["label"].names[:3] == ["circle", "square", "triangle"]
    assert ds.features["image"] == datasets.Image() and len(ds) == 20
    raw = ds.cast_column("image", datasets.Image(decode=False))
    mine = ours.cast_column("image", datasets.Image(decode=False))
    assert raw.to_list() == mine.to_list()
    card = (out / "README.md").read_text()
    assert "path: data/test-*" in card and "stackbench generate stack-mix --source shapes" in card


def _index(src):
    return {src.item_id(i): i for i in range(len(src))}


def _check_cut(folder, src, n):
    ds, _ = df.open_dataset(str(folder))
    idx = _index(src)
    for row in ds.select(range(n)):
        img = np.asarray(row["image"]).astype(int)
        w = row["wall_row"]
        top, bottom = (src.load(idx[row[k]]).image for k in ("top_source", "bottom_source"))
        if src.kind == "shapes":  # the objects' own bounds, inside their slots (exactness: test_object_boxes_...)
            tb, bb = row["top_box"], row["bottom_box"]
            assert 0 <= tb[0] < tb[2] <= 224 and 0 <= tb[1] < tb[3] <= w
            assert bb is None or (0 <= bb[0] < bb[2] <= 224 and w <= bb[1] < bb[3] <= 224)
        else:  # a photo's object is unknown: the box is where the photo went
            assert row["top_box"] == [0, 0, 224, w] and row["bottom_box"] == [0, w, 224, 224]
        assert (img[:w] == np.asarray(cover(top, (224, 224), rows=(0, w)))).all()
        assert (img[w:] == np.asarray(cover(bottom, (224, 224), rows=(w, 224)))).all()
        # ... which is the paper's CutMix of the two 224 px images (to within one grey level of resampling)
        a, b = np.asarray(cover(top, (224, 224)), int), np.asarray(cover(bottom, (224, 224)), int)
        assert np.abs(img[:w] - a[:w]).max() <= 1 and np.abs(img[w:] - b[w:]).max() <= 1
        assert np.abs(img[w:] - a[w:]).mean() > 10
        assert src.load(idx[row["top_source"]]).label == src.load(idx[row["bottom_source"]]).label == row["label"]


def test_cut_rows_come_from_top_and_bottom_images(shapes_cut, tmp_path, bad_folder):
    out, _ = shapes_cut
    _check_cut(out, open_source("shapes", split="test"), 5)
    # photos of other sizes are resized and centre-cropped first
    generate_stack_mix(tmp_path / "c", source=f"imagefolder:{bad_folder}", classes="beta", num_images=3,
                       progress=False, allow_repeats=True)
    _check_cut(tmp_path / "c", open_source(f"imagefolder:{bad_folder}"), 3)


@pytest.mark.parametrize("layout", ["cut", "fit"])
def test_object_boxes_are_the_objects_pixels_in_their_slot(layout):
    # objects that are not boxes (a disc, a diagonal bar) on black, in photos of other shapes, resized and cropped:
    # each stored box is exactly the bounds of the object's pixels that landed in its slot
    def photo(size, kind):
        w, h = size
        yy, xx = np.mgrid[:h, :w]
        cy, r = (0.5, 0.3) if kind == "disc" else (0.3, 0.2)  # a "high" disc stays above a cut's band
        obj = ((xx - 0.6 * w) ** 2 + (yy - cy * h) ** 2 < (r * min(w, h)) ** 2) if kind != "bar" else \
            (np.abs((xx / w) - (yy / h)) < 0.08) & (yy > 0.55 * h)
        a = (obj * 255).astype(np.uint8)
        return Image.fromarray(np.stack([a] * 3, -1)), Image.fromarray(a)
    sizes = [((300, 200), "disc"), ((180, 360), "bar"), ((224, 224), "bar"), ((224, 224), "disc"), ((200, 300), "high")]
    seen = []
    for (tsize, tkind), (bsize, bkind) in zip(sizes, sizes[1:] + sizes[:1], strict=True):
        (top, tmask), (bottom, bmask) = photo(tsize, tkind), photo(bsize, bkind)
        img, top_box, bottom_box = compose(top, bottom, layout, 224, 170, masks=(tmask, bmask))
        a = np.asarray(img)[..., 0]
        if layout == "fit":  # the band around the placed photo is its mean colour: look only inside the photo
            w, h = contain(bottom, (224, 54)).size
            x0, y0 = (224 - w) // 2, 170 + (54 - h) // 2
            band = np.zeros((54, 224), np.uint8)
            band[y0 - 170:y0 - 170 + h, x0:x0 + w] = a[y0:y0 + h, x0:x0 + w]
            a = np.concatenate([a[:170], band])
        for box, rows in ((top_box, slice(0, 170)), (bottom_box, slice(170, 224))):
            part = np.zeros_like(a)
            part[rows] = a[rows]
            ys, xs = np.nonzero(part)
            want = None if len(ys) == 0 else [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert box == want, (layout, tsize, bsize, box, want)
            seen.append(box)
    assert (None in seen) == (layout == "cut")  # the cut crop leaves none of a high disc in the band
    # a photo without a known object keeps the slot as its box
    assert compose(top, bottom, "cut", 224, 170)[1:] == ([0, 0, 224, 170], [0, 170, 224, 224])


def test_fit_puts_the_whole_bottom_image_in_the_band(tmp_path, bad_folder):
    res = generate_stack_mix(tmp_path / "fit", source=f"imagefolder:{bad_folder}", classes=["beta"], num_images=3,
                             layout="fit", format="png", progress=False, allow_repeats=True)
    ds, _ = df.open_dataset(str(tmp_path / "fit"))
    src = open_source(f"imagefolder:{bad_folder}")
    idx = _index(src)
    for row in ds:
        img = np.asarray(row["image"])
        x0, y0, x1, y1 = row["bottom_box"]
        assert y0 >= row["wall_row"] == 170 and y1 <= 224 and row["top_box"] == [0, 0, 224, 170]
        top = src.load(idx[row["top_source"]]).image
        bottom = src.load(idx[row["bottom_source"]]).image
        assert (img[:170] == np.asarray(cover(top, (224, 170)))).all()
        assert (img[y0:y1, x0:x1] == np.asarray(contain(bottom, (224, 54)))).all()
        band = img[170:].copy()
        band[y0 - 170:y1 - 170, x0:x1] = band[0, 0]
        assert (band == band[0, 0]).all()  # the rest of the band is one fill colour
    assert res.generation["converted"] == {} and len(ds) == 3 and set(ds["class_name"]) == {"beta"}
    # the card: a box bounds the placed photo (said so), and a user's own photos get no ImageNet licence
    card = DatasetCard.load(tmp_path / "fit" / "README.md")
    assert card.data.license == "unknown" and "license_name" not in card.data.to_dict()
    assert "ImageNet" not in card.text.split("## Licence", 1)[1].split("## Citation", 1)[0]
    assert re.search(r"^\| `bottom_box` \| .*whole second photo.*the box bounds the placed photo, not its object \|$",
                     card.text, re.M)


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    return make_bad_folder(tmp_path_factory.mktemp("bad"))


def test_bad_inputs_give_a_finished_dataset_and_a_skip_report(tmp_path, bad_folder):
    out = tmp_path / "bad"
    args = ("--source", f"imagefolder:{bad_folder}", "--per-class", 5, "--shard-size", 3, "--num-proc", 2, "--out", out)
    r = run(*args)  # 5 per class is more than these few images give without using one twice
    assert r.exit_code == 2 and "before it uses an image twice; ask for at most 2" in r.output
    r = run(*args, "--allow-repeats")
    assert r.exit_code == 0, r.output
    expected = {"alpha/notes.txt": "not an image file", "alpha/tiny.png": "too small (10x10",
                "alpha/truncated.jpg": "truncated or corrupt", "alpha/empty.jpg": "empty file (0 bytes)",
                "gamma/broken.png": "truncated or corrupt"}
    g = df.read_generation(out)
    skipped = {s["path"]: s["reason"] for s in g["skipped"]}
    assert set(skipped) == set(expected)
    for path, reason in expected.items():
        assert reason in skipped[path]
        assert f"  {path}: {skipped[path]}" in r.output
    reason = "fewer than two usable images (1 of 2, 1 truncated or corrupt)"
    assert g["skipped_classes"] == [{"class": "gamma", "reason": reason}]
    assert "class 'gamma' skipped" in r.output
    # Every odd mode of 'alpha' was used (5 pairs = all 10 files) and converted.
    assert set(g["converted"]) == {"CMYK", "L", "P", "RGBA", "I;16"} and "converted:" in r.output
    ds, _ = df.open_dataset(str(out))
    assert len(ds) == 10 and Counter(ds["class_name"]) == {"alpha": 5, "beta": 5}
    used = set(ds["top_source"]) | set(ds["bottom_source"])
    assert "alpha/upper.JPEG" in used and not used & set(expected)
    assert all(np.asarray(im).shape == (224, 224, 3) for im in ds["image"])


def test_bad_arguments_are_one_line(tmp_path, bad_folder):
    cases = [
        (["--source", f"imagefolder:{tmp_path}/nowhere"], "does not exist"),
        (["--source", "shapes", "--classes", " , "], "empty class list"),
        (["--source", "shapes", "--classes", "circle,sqare"], "did you mean square"),
        (["--source", "shapes", "--num-images", 5, "--per-class", 2], "either --num-images or --per-class"),
        (["--preset", "paperr"], "did you mean paper"),
        (["--source", f"imagefolder:{bad_folder}", "--classes", "gamma"], "no class of"),
        (["--source", f"imagefolder:{bad_folder}", "--classes", "beta", "--min-size", 1000],
         "beta: fewer than two usable images (0 of 4, 4 too small for --min-size 1000)"),
    ]
    for args, msg in cases:
        r = run(*args, "--out", tmp_path / "x")
        assert r.exit_code == 2, (args, r.output)
        assert r.output.startswith("error: ") and r.output.count("\n") == 1 and msg in r.output, r.output


def test_presets_are_data_files():
    from stackbench.generate import load_preset, presets

    assert {"paper", "mini"} <= set(presets("stack-mix"))
    paper = load_preset("stack-mix", "paper")
    assert (paper["source"], paper["num_images"], paper["layout"]) == ("hf:ILSVRC/imagenet-1k", 100, "cut")
    assert StackMixRecipe(**{k: v for k, v in load_preset("stack-mix", "mini").items() if k != "description"})


def test_missing_data_folders_are_one_clear_error(tmp_path, monkeypatch):
    from stackbench import resources
    from stackbench.generate import load_preset

    monkeypatch.setattr(resources, "PACKAGED", tmp_path / "packaged")
    monkeypatch.setattr(resources, "SOURCE", tmp_path)
    with pytest.raises(StackbenchError, match="generation/stack-mix is missing from this installation.*pip install"):
        load_preset("stack-mix", "mini")


def test_preset_classes_file_and_jpeg(tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("# two of them\nstar\nHeart\n")
    r = run("--preset", "mini", "--per-class", 3, "--classes", classes, "--format", "jpeg", "--out", tmp_path / "j")
    assert r.exit_code == 0, r.output
    g = df.read_generation(tmp_path / "j")
    assert g["recipe"]["split"] == "test" and g["recipe"]["classes"] == ["star", "heart"]
    assert g["recipe"]["per_class"] == 3 and g["recipe"]["num_images"] is None  # --per-class replaced the preset's
    ds, _ = df.open_dataset(str(tmp_path / "j"))
    assert Counter(ds["class_name"]) == {"star": 3, "heart": 3}
    assert all(b["bytes"][:2] == b"\xff\xd8" for b in ds.cast_column("image", ds.features["image"].__class__(
        decode=False))["image"])


class _BatchBuilder:
    """A minimal STACK-GEN-like builder: the writer is generic over the kind and honours build_batch."""

    kind, class_names, n_items, batch_size = "stack-gen", ["a", "b"], 7, 3

    def __init__(self):
        self.batches = []

    def identity(self):
        return {"recipe": {"seed": 0, "size": 224, "wall_row": 170}, "source": {"kind": "test", "ref": "dummy"}}

    def info(self):
        return {"classes_used": ["a", "b"]}

    def build_batch(self, indices, report):
        self.batches.append(indices)
        rows = []
        for i in indices:
            if i == 4:
                report.drop(i, "verification failed")
                rows.append(None)
                continue
            buf = io.BytesIO()
            Image.new("RGB", (8, 8), (i, 0, 0)).save(buf, "PNG")
            rows.append({"id": f"g{i}", "image": {"bytes": buf.getvalue(), "path": None}, "label": i % 2,
                         "class_name": "ab"[i % 2], "wall_row": 170, "seed": 0, "top_box": [0, 0, 8, 6],
                         "bottom_box": [0, 6, 8, 8], "prompt_top": "t", "prompt_bottom": "b", "prompt_scene": "s",
                         "negative_prompt": "", "generator": "dummy", "steps": 0, "guidance": 0.0,
                         "verify_top": None, "verify_bottom": None})
        return rows


def test_writer_is_generic_and_passes_fixed_batches(tmp_path):
    from stackbench.cards.dataset import write_card
    from stackbench.generate import write_dataset

    b = _BatchBuilder()
    res = write_dataset(tmp_path / "g", b, shard_size=5, progress=False, card=write_card)
    assert b.batches == [[0, 1, 2], [3, 4], [5, 6]]  # fixed slices of each shard
    ds, _ = df.open_dataset(str(tmp_path / "g"))
    assert ds["id"] == ["g0", "g1", "g2", "g3", "g5", "g6"] and ds.features == df.features("stack-gen", ["a", "b"])
    assert res.generation["dropped"] == [{"index": 4, "reason": "verification failed"}] and res.n_rows == 6
    assert "source: `dummy` (kind `test`)" in (tmp_path / "g" / "README.md").read_text()
