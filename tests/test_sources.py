"""Image sources: shapes (determinism, balance, splits, no colour shortcut), imagefolder (bad inputs, ImageNet
names), hf (local datasets folder, no network)."""
import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stackbench.errors import StackbenchError
from stackbench.sources import SkipImage, decode, open_source, shapes
from stackbench.sources.imagefolder import ImageFolderSource, imagenet_names


def _photo(w, h, seed, mode="RGB"):
    """A smooth random 'photo' (compresses like one)."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(low).resize((w, h), Image.BICUBIC).convert(mode)


def make_bad_folder(root: Path) -> Path:
    """An imagefolder with every kind of awkward input. Class 'alpha' has 10 files (5 usable as they are,
    5 converted by mode, 4 unusable, 1 non-image), 'beta' 4 usable, 'gamma' only one usable image."""
    a, b, g = (root / n for n in ("alpha", "beta", "gamma"))
    for d in (a, b, g):
        d.mkdir(parents=True)
    _photo(120, 90, 1).save(a / "good1.jpg", quality=90)
    _photo(100, 140, 2).save(a / "upper.JPEG", "JPEG", quality=90)
    _photo(110, 90, 3, "CMYK").save(a / "cmyk.jpg", "JPEG")
    _photo(96, 96, 4, "L").save(a / "gray.png")
    _photo(96, 80, 5).convert("P", palette=Image.Palette.ADAPTIVE).save(a / "palette.png")
    rgba = _photo(90, 90, 6).convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 0))  # fully transparent: must come out white
    rgba.save(a / "rgba.png")
    Image.fromarray((np.arange(100 * 80).reshape(80, 100) % 65536 * 8).astype(np.uint16)).save(a / "deep16.png")
    _photo(10, 10, 7).save(a / "tiny.png")
    buf = io.BytesIO()
    _photo(200, 150, 8).save(buf, "JPEG", quality=90)
    (a / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (a / "empty.jpg").write_bytes(b"")
    (a / "notes.txt").write_text("not an image")
    for k in range(4):
        _photo(130, 100, 20 + k).save(b / f"b{k}.jpg", quality=90)
    _photo(100, 100, 30).save(g / "only.jpg", quality=90)
    (g / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    return make_bad_folder(tmp_path_factory.mktemp("bad"))


# --- shapes ----------------------------------------------------------------------------------------------

def test_shapes_item_is_a_pure_function_of_seed_split_index():
    a, la, ia = shapes.item(0, 13, "train")
    b, lb, ib = shapes.item(0, 13, "train")
    assert a.tobytes() == b.tobytes() and (la, ia) == (lb, ib) and a.size == (224, 224) and a.mode == "RGB"
    assert shapes.item(0, 14, "train")[0].tobytes() != a.tobytes()
    assert shapes.item(1, 13, "train")[0].tobytes() != a.tobytes()
    # order independence: rendering other items first changes nothing
    for i in range(5):
        shapes.item(3, i, "val")
    assert shapes.item(0, 13, "train")[0].tobytes() == a.tobytes()


def test_shapes_classes_are_balanced_and_named():
    assert len(shapes.CLASSES) >= 10 and all(n.isalpha() for n in shapes.CLASSES)
    src = open_source("shapes", split="train")
    counts = Counter(src.labels().tolist())
    assert len(src) == 10_000 and set(counts.values()) == {1000} and len(counts) == 10
    assert Counter(src.labels()[:50].tolist()) == {c: 5 for c in range(10)}
    assert [src.load(i).label for i in range(10)] == list(range(10))


def test_shapes_splits_do_not_overlap():
    digest = lambda split: {hash(shapes.item(0, i, split)[0].tobytes()) for i in range(30)}  # noqa: E731
    train, val, test = digest("train"), digest("val"), digest("test")
    assert len(train) == len(val) == len(test) == 30
    assert not (train & val) and not (train & test) and not (val & test)
    with pytest.raises(StackbenchError, match="no split 'dev'"):
        shapes.item(0, 0, "dev")


def test_shapes_colour_alone_does_not_tell_the_class():
    # Colour statistics (mean and spread per channel) must leave a classifier near chance (10%): the class is in
    # the outline, not the palette.
    from sklearn.linear_model import LogisticRegression

    def feats(split, n):
        xs, ys = [], []
        for i in range(n):
            img, label, _ = shapes.item(0, i, split)
            a = np.asarray(img, dtype=np.float32).reshape(-1, 3)
            xs.append(np.concatenate([a.mean(0), a.std(0)]) / 255)
            ys.append(label)
        return np.array(xs), np.array(ys)

    xtr, ytr = feats("train", 300)
    xte, yte = feats("val", 200)
    acc = LogisticRegression(max_iter=2000).fit(xtr, ytr).score(xte, yte)
    assert acc < 0.25, acc


def test_draw_object_stays_in_its_box_and_fills_it():
    rng = shapes.rng_for(0, 0)
    for k, cls in enumerate(shapes.CLASSES):
        canvas = Image.new("RGB", (224, 224), (128, 128, 128))
        box = (40, 50, 160, 150)
        x0, y0, x1, y1 = shapes.draw_object(canvas, cls, box, np.random.default_rng(k))
        assert box[0] <= x0 < x1 <= box[2] and box[1] <= y0 < y1 <= box[3]
        assert max(x1 - x0, y1 - y0) >= 0.9 * min(box[2] - box[0], box[3] - box[1]), cls
        a = np.asarray(canvas).astype(int)
        outside = np.ones((224, 224), bool)
        outside[box[1] - 12:box[3] + 12, box[0] - 12:box[2] + 12] = False  # shadow margin
        assert (a[outside] == 128).all(), cls
        inside = a[y0:y1, x0:x1]
        assert (np.abs(inside - 128).sum(-1) > 0).mean() > 0.2, cls
    with pytest.raises(StackbenchError, match="did you mean circle"):
        shapes.draw_object(Image.new("RGB", (64, 64)), "circel", (0, 0, 32, 32), rng)


def test_background_is_deterministic_and_cluttered():
    a = shapes.render_background(224, np.random.default_rng(5))
    b = shapes.render_background(224, np.random.default_rng(5))
    assert a.tobytes() == b.tobytes()
    assert np.asarray(a).std() > 5  # not a flat colour


# --- decoding and imagefolder ------------------------------------------------------------------------------

def test_decode_converts_odd_modes(bad_folder):
    a = bad_folder / "alpha"
    expected = {"cmyk.jpg": "CMYK", "gray.png": "L", "palette.png": "P", "rgba.png": "RGBA", "upper.JPEG": None,
                "good1.jpg": None}
    for name, mode in expected.items():
        d = decode(a / name, name)
        assert d.image.mode == "RGB" and d.converted_from == mode, name
    assert np.asarray(decode(a / "rgba.png", "rgba").image).min() == 255  # transparent -> white
    d16 = decode(a / "deep16.png", "deep16")
    raw = np.asarray(Image.open(a / "deep16.png")).astype(np.int64)
    got = np.asarray(d16.image)[..., 0].astype(np.int64)
    assert d16.converted_from.startswith("I") and np.abs(got - np.rint(raw * 255 / 65535)).max() <= 1
    assert got.max() > 200  # rescaled, not clipped at 255 of 65535


def test_decode_applies_exif_orientation():
    im = Image.new("RGB", (100, 80), (255, 0, 0))
    exif = im.getexif()
    exif[0x0112] = 6  # rotated 90 degrees: viewers show it 80 wide, 100 high
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes())
    assert decode(buf.getvalue(), "x").image.size == (80, 100)


@pytest.mark.parametrize("name, reason", [("tiny.png", "too small (10x10"), ("truncated.jpg", "truncated or corrupt"),
                                          ("empty.jpg", "empty file (0 bytes)")])
def test_decode_skips_bad_files_with_a_reason(bad_folder, name, reason):
    with pytest.raises(SkipImage) as e:
        decode(bad_folder / "alpha" / name, f"alpha/{name}")
    assert e.value.path == f"alpha/{name}" and reason in e.value.reason


def test_imagefolder_lists_classes_files_and_non_images(bad_folder):
    src = open_source(f"imagefolder:{bad_folder}")
    assert src.class_names == ["alpha", "beta", "gamma"] and src.naming == "folder-names"
    ids = [src.item_id(i) for i in range(len(src))]
    assert "alpha/upper.JPEG" in ids and "alpha/notes.txt" not in ids and len(src) == 16
    skips = [(s.path, s.reason) for s in src.listing_skips]
    assert skips == [("alpha/notes.txt", "not an image file (extension '.txt')")]
    assert Counter(src.labels().tolist()) == {0: 10, 1: 4, 2: 2}
    i = ids.index("gamma/broken.png")
    with pytest.raises(SkipImage, match="truncated or corrupt"):  # a PNG signature, then garbage
        src.load(i)
    item = src.load(ids.index("beta/b2.jpg"))
    assert item.label == 1 and item.id == "beta/b2.jpg" and item.image.size == (130, 100)
    assert src.fingerprint() == open_source(f"imagefolder:{bad_folder}").fingerprint()


def test_imagefolder_split_and_missing_paths(tmp_path, bad_folder):
    with pytest.raises(StackbenchError, match="does not exist"):
        open_source(f"imagefolder:{tmp_path}/nope")
    with pytest.raises(StackbenchError, match="does not exist"):  # a missing path is named before any split
        open_source(f"imagefolder:{tmp_path}/nope", split="train")
    with pytest.raises(StackbenchError, match="has no 'val' folder") as e:
        open_source(f"imagefolder:{bad_folder}", split="val")
    assert "--split" not in str(e.value)  # generate's flag; train's are --train-split / --val-split
    (tmp_path / "empty").mkdir()
    with pytest.raises(StackbenchError, match="no class folders"):
        open_source(f"imagefolder:{tmp_path}/empty")
    with pytest.raises(StackbenchError, match="unknown source"):
        open_source("imgfolder:x")


def test_imagenet_synset_folders_get_torchvision_names(tmp_path):
    names = imagenet_names()
    synsets = [f"n{10_000_000 + k * 7:08d}" for k in range(1000)]  # sorted like real synset ids
    for s in synsets:
        (tmp_path / "val" / s).mkdir(parents=True)
    _photo(80, 80, 0).save(tmp_path / "val" / synsets[0] / "x.JPEG")
    src = ImageFolderSource(tmp_path, split="val")
    assert src.naming == "imagenet-synsets" and len(src.class_names) == 1000
    assert src.class_names[0] == "tench" and src.class_names[1] == names[1]
    assert len(set(src.class_names)) == 1000  # ClassLabel needs unique names
    # A subset of synsets cannot be placed in the 1000-class list: folder names are kept.
    sub = tmp_path / "sub"
    for s in synsets[:3]:
        (sub / s).mkdir(parents=True)
    assert ImageFolderSource(sub).class_names == synsets[:3]


# --- hf ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    import datasets

    root = tmp_path_factory.mktemp("hf")
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog", "owl"])})
    for split, n in (("validation", 9), ("train", 6)):
        rows = []
        for i in range(n):
            buf = io.BytesIO()
            _photo(80 + i, 70, i, "L" if i == 4 else "RGB").save(buf, "PNG")
            data = b"\x89PNG broken" if (split, i) == ("validation", 7) else buf.getvalue()
            rows.append({"image": {"bytes": data, "path": None}, "label": i % 3})
        shard = root / "data" / f"{split}-00000-of-00001.parquet"
        datasets.Dataset.from_list(rows, features=feats).to_parquet(str(shard))
    return root


def test_hf_source_loads_a_local_dataset_with_datasets(hf_folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = open_source(f"hf:{hf_folder}")
    assert src.split == "validation" and len(src) == 9 and src.class_names == ["cat", "dog", "owl"]
    assert src.labels().tolist() == [i % 3 for i in range(9)]
    item = src.load(4)
    assert item.label == 1 and item.converted_from == "L" and item.image.size == (84, 70)
    assert item.id == f"{hf_folder}/validation/4"
    with pytest.raises(SkipImage, match="not an image") as e:
        src.load(7)
    assert e.value.path == f"{hf_folder}/validation/7"
    assert len(open_source(f"hf:{hf_folder}:default", split="validation")) == 9  # hf:REPO:CONFIG
    train = open_source(f"hf:{hf_folder}", split="train")
    assert len(train) == 6 and train.fingerprint() != src.fingerprint()
    with pytest.raises(StackbenchError, match="no split 'dev'"):
        open_source(f"hf:{hf_folder}", split="dev")


def test_hf_source_needs_image_and_classlabel_columns(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}).to_parquet(
        str(tmp_path / "data" / "test-00000-of-00001.parquet"))
    with pytest.raises(StackbenchError, match="needs an Image and a ClassLabel column"):
        open_source(f"hf:{tmp_path}")
    with pytest.raises(StackbenchError, match="could not"):
        open_source(f"hf:{tmp_path}/missing-dataset")
