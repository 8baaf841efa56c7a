import io
import json
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from stackbench import datafolder
from stackbench.axes import Axes
from stackbench.cli import main
from stackbench.constants import SHAPES_CLASSES
from stackbench.errors import StackbenchError
from stackbench.evaluate import evaluate
from stackbench.records import read_record, stable, validate_record

MODEL = "minivgg-masked@random"

CLASSES = list(SHAPES_CLASSES)  # the mini model's classes, by name


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = (rng.random((224, 224, 3)) * 255).astype(np.uint8)
    img[:100, 40:180] = rng.integers(0, 255, 3)  # a flat "object" on top
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def make_folder(path, n=4, wall_row=170, corrupt=(), classes=CLASSES):
    rows = []
    for i in range(n):
        data = b"not a png" if i in corrupt else png(i)
        k = i % len(classes)
        rows.append({"id": f"mix-{i:03d}", "image": {"bytes": data, "path": None}, "label": k,
                     "class_name": classes[k], "wall_row": wall_row, "seed": i, "top_box": [0, 0, 224, 170],
                     "bottom_box": [0, 170, 224, 224], "top_source": f"s{i}", "bottom_source": f"t{i}",
                     "layout": "stack"})
    datafolder.write_shard(rows, datafolder.features("stack-mix", list(classes)), datafolder.shard_path(path, 0, 1))
    return str(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("mix"))


def by_name(runs):
    return {r.name: r for r in runs}


def test_evaluate_writes_records_and_rows_hirescam_zero_gradcam_positive(folder, tmp_path):
    # the paper's network at initialisation (Theorem 1 is about initialisation); ~5 s on 2 cores
    # the board's axes on one image: on a VGG16 on a CPU they cost more than the rest (tested on the mini model)
    runs = by_name(evaluate(["GradCAM", "HiResCAM", "EigenCAM"], folder, "vgg16-masked@random", out=tmp_path,
                            progress=False, batch_size=3, axes=Axes(sample=1)))
    assert all(r.status == "done" for r in runs.values())
    hi = pq.read_table(tmp_path / "HiResCAM.parquet").to_pandas()
    gc = pq.read_table(tmp_path / "GradCAM.parquet").to_pandas()
    assert len(hi) == len(gc) == 4
    assert (hi["mu"] == 0.0).all()                        # provably blind to the dead zone
    assert (gc["mu"] > 0).mean() >= 0.75                  # Theorem 1 at initialisation
    assert {"id", "target", "predicted", "label", "mu", "dead_mass", "leak_rate", "map_empty", "mu_hidden",
            "deletion_auc", "rand_corr"} <= set(gc.columns)
    rec = read_record(tmp_path / "GradCAM.json")
    assert rec["schema"] == "stackbench.result/3"
    assert rec["dataset"]["fingerprint"] == datafolder.fingerprint(folder) and rec["dataset"]["n"] == 4
    assert rec["model"]["wall"]["dead_from"] == 170 and len(rec["model"]["fingerprint"]) == 64
    assert rec["target"] == "predicted" and rec["postprocess"]["name"] == "gradcam-lib"
    assert rec["metrics"]["mu"]["mean"] == pytest.approx(gc["mu"].mean())
    assert rec["metrics"]["mu"]["n"] == 4  # schema 2: empty maps are scored (as uniform maps) and counted in n_empty
    assert read_record(tmp_path / "HiResCAM.json")["metrics"]["mu"]["mean"] == 0.0


def test_same_inputs_same_record_and_resume(folder, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    options = {"ScoreCAM": {"batch_size": 16}}
    evaluate(["GradCAM++", "ScoreCAM"], folder, MODEL, out=a, progress=False, method_config=options)
    evaluate(["GradCAM++", "ScoreCAM"], folder, MODEL, out=b, progress=False, method_config=options)
    for name in ("GradCAM++", "ScoreCAM"):
        ra, rb = read_record(a / f"{name}.json"), read_record(b / f"{name}.json")
        assert stable(ra) == stable(rb)
        assert (a / f"{name}.parquet").read_bytes() == (b / f"{name}.parquet").read_bytes()
    # resume: finished methods are skipped; a tampered record is recomputed
    rec = json.loads((a / "ScoreCAM.json").read_text())
    rec["metrics"]["mu"]["mean"] = "oops"
    (a / "ScoreCAM.json").write_text(json.dumps(rec))
    runs = by_name(evaluate(["GradCAM++", "ScoreCAM"], folder, MODEL, out=a, progress=False,
                            method_config={"ScoreCAM": {"batch_size": 16}}))
    assert runs["GradCAM++"].status == "skipped" and runs["ScoreCAM"].status == "done"
    assert stable(read_record(a / "ScoreCAM.json")) == stable(read_record(b / "ScoreCAM.json"))
    # a different configuration is not "finished work"
    runs = by_name(evaluate(["GradCAM++"], folder, MODEL, out=a, progress=False, postprocess="raw"))
    assert runs["GradCAM++"].status == "done"


FAULTY = textwrap.dedent("""
    import torch
    from stackbench.methods import SaliencyMethod

    class Raises(SaliencyMethod):
        name = "Raises"
        needs = frozenset({"activations"})
        def explain(self, batch):
            raise RuntimeError("kaput")

    class NaNs(SaliencyMethod):
        name = "NaNs"
        needs = frozenset({"activations"})
        def explain(self, batch):
            out = batch.activations.sum(1)
            if 2 in batch.index:
                out[batch.index.index(2), 0, 0] = float("nan")
            return out

    class WrongShape(SaliencyMethod):
        name = "WrongShape"
        def explain(self, batch):
            return torch.zeros(len(batch.ids) + 1, 14, 14)

    class WrongDtype(SaliencyMethod):
        name = "WrongDtype"
        def explain(self, batch):
            return torch.zeros(len(batch.ids), 14, 14, dtype=torch.int32)

    class Mean(SaliencyMethod):
        '''A plugin that works: mean activation.'''
        name = "MeanActivation"
        needs = frozenset({"activations"})
        def explain(self, batch):
            return batch.activations.mean(1)
""")


def test_faulty_methods_fail_cleanly_while_others_finish(folder, tmp_path):
    plugin = tmp_path / "faulty.py"
    plugin.write_text(FAULTY)
    specs = [f"{plugin}:{c}" for c in ("Raises", "NaNs", "WrongShape", "WrongDtype", "Mean")] + ["GradCAM"]
    out = tmp_path / "out"
    runs = by_name(evaluate(specs, folder, MODEL, out=out, progress=False, batch_size=2))
    assert runs["GradCAM"].status == "done" and runs["MeanActivation"].status == "done"
    assert (out / "MeanActivation.json").is_file()  # a plugin from a file, end to end
    assert read_record(out / "MeanActivation.json")["method"]["source"].endswith("faulty.py:Mean")
    expect = {"Raises": ("kaput", "mix-000"), "NaNs": ("NaN", "mix-002"), "WrongShape": ("shape", "mix-000"),
              "WrongDtype": ("dtype", "mix-000")}
    for name, (what, item) in expect.items():
        r = runs[name]
        assert r.status == "failed" and name in r.error and what in r.error and item in r.error
        assert not (out / f"{name}.json").exists() and not (out / f"{name}.parquet").exists()


def test_pytorch_grad_cam_subclass_from_a_file_unchanged(folder, tmp_path):
    plugin = tmp_path / "mycam.py"
    plugin.write_text(textwrap.dedent("""
        import numpy as np
        from pytorch_grad_cam.base_cam import BaseCAM

        class MaxGradCAM(BaseCAM):
            '''A researcher's CAM written for pytorch-grad-cam: weights = max of the gradients.'''
            def __init__(self, model, target_layers, reshape_transform=None):
                super().__init__(model, target_layers, reshape_transform)

            def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
                return np.max(grads, axis=(2, 3))
    """))
    runs = by_name(evaluate([f"{plugin}:MaxGradCAM"], folder, MODEL, out=tmp_path / "o", progress=False))
    assert runs["MaxGradCAM"].status == "done"
    rec = read_record(tmp_path / "o" / "MaxGradCAM.json")
    assert rec["method"]["reference"].endswith("MaxGradCAM") and rec["metrics"]["mu"]["n"] == 4
    mu = pq.read_table(tmp_path / "o" / "MaxGradCAM.parquet").to_pandas()["mu"]
    assert mu.notna().all() and (mu > 0).all()


def test_library_gradcam_through_module_attr_matches_native(folder, tmp_path):
    a = evaluate(["pytorch_grad_cam:GradCAM"], folder, MODEL, out=tmp_path / "lib", progress=False)[0]
    b = evaluate(["GradCAM"], folder, MODEL, out=tmp_path / "ours", progress=False)[0]
    assert a.status == b.status == "done"
    mu_a = pq.read_table(tmp_path / "lib" / f"{a.name}.parquet").to_pandas()["mu"].to_numpy()
    mu_b = pq.read_table(tmp_path / "ours" / "GradCAM.parquet").to_pandas()["mu"].to_numpy()
    assert np.allclose(mu_a, mu_b, atol=1e-5, equal_nan=True)  # NaN: an all-zero map in both


def test_entry_point_plugin(folder, tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "mypkg_cam").mkdir(parents=True)
    (site / "mypkg_cam" / "__init__.py").write_text(textwrap.dedent("""
        from stackbench.methods import TargetLayerCAM

        class PositiveGradCAM(TargetLayerCAM):
            name = "PositiveGradCAM"
            def weights(self, A, G):
                return G.clamp(min=0).mean(dim=(2, 3))
    """))
    dist = site / "mypkg_cam-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mypkg-cam\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[stackbench.methods]\nposgrad = mypkg_cam:PositiveGradCAM\n")
    monkeypatch.syspath_prepend(str(site))
    r = evaluate(["posgrad"], folder, MODEL, out=tmp_path / "o", progress=False)[0]
    assert r.status == "done"
    rec = read_record(tmp_path / "o" / f"{r.name}.json")
    assert rec["method"]["source"].startswith("entry-point:posgrad")
    result = CliRunner().invoke(main, ["methods"])
    assert "posgrad" in result.output


def test_target_label_needs_the_models_classes(tmp_path):
    four = make_folder(tmp_path / "four", n=4, classes=["cat", "dog", "fox", "owl"])
    res = CliRunner().invoke(main, ["evaluate", "--method", "GradCAM", "--dataset", four, "--model", MODEL,
                                    "--target", "label", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert "4 classes (cat, dog, fox, owl" in res.output and "10 classes" in res.output
    assert "--target predicted" in res.output and not (tmp_path / "o" / "GradCAM.json").exists()
    # the zoo's mini model names the shapes classes: ten other classes are refused by name, not passed by count
    ten = make_folder(tmp_path / "ten", n=2, classes=[f"c{i}" for i in range(10)])
    res = CliRunner().invoke(main, ["evaluate", "--method", "GradCAM", "--dataset", ten, "--model", MODEL,
                                    "--target", "label", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "10 classes (circle, square" in res.output, res.output


def test_wall_mismatch_and_unknown_method_are_refused(tmp_path):
    other = make_folder(tmp_path / "w160", n=1, wall_row=160)
    with pytest.raises(StackbenchError, match="row 160.*from row 170"):
        evaluate(["GradCAM"], other, MODEL, out=tmp_path / "o", progress=False)
    with pytest.raises(StackbenchError, match="did you mean.*HiResCAM"):
        evaluate(["HiResCM"], other, MODEL, out=tmp_path / "o", progress=False)


def test_corrupt_item_is_skipped_and_listed(tmp_path, monkeypatch):
    import datasets

    from stackbench import evaluate as E

    f = make_folder(tmp_path / "bad", n=3, corrupt=(1,))
    real, quiet = E._loop, []
    monkeypatch.setattr(E, "_loop", lambda *a: (quiet.append(datasets.are_progress_bars_disabled()), real(*a))[1])
    r = evaluate(["GradCAM"], f, MODEL, out=tmp_path / "o", progress=False)[0]
    assert quiet == [True] and not datasets.are_progress_bars_disabled()  # no datasets bar under --no-progress
    rec = read_record(tmp_path / "o" / "GradCAM.json")
    assert r.status == "done" and rec["items"]["n"] == 2
    assert [s["id"] for s in rec["items"]["skipped"]] == ["mix-001"]


def test_validate_record_names_the_bad_field(folder, tmp_path):
    evaluate(["GradCAM"], folder, MODEL, out=tmp_path, progress=False)
    rec = json.loads((tmp_path / "GradCAM.json").read_text())
    validate_record(rec)
    broken = json.loads(json.dumps(rec))
    del broken["model"]["fingerprint"]
    with pytest.raises(StackbenchError, match="field model.fingerprint is missing"):
        validate_record(broken)
    broken = json.loads(json.dumps(rec))
    broken["dataset"]["fingerprint"] = "abc"
    with pytest.raises(StackbenchError, match="dataset.fingerprint must be a sha256"):
        validate_record(broken)
    broken = json.loads(json.dumps(rec))
    broken["metrics"]["mu"]["n_empty"] = "0"
    with pytest.raises(StackbenchError, match="metrics.mu.n_empty must be int"):
        validate_record(broken)


def test_cli_evaluate_prints_table_and_saves_maps_and_overlays(folder, tmp_path):
    out = tmp_path / "cli"
    # progress on, stderr not a terminal (the runner's pipe): plain lines, one per pass, no escape codes
    res = CliRunner().invoke(main, ["evaluate", "--method", "GradCAM", "--method", "HiResCAM", "--dataset", folder,
                                    "--model", MODEL, "--limit", "2", "--save-maps", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "GradCAM" in res.output and "mu x100" in res.output and "0.0 ± 0.0" in res.output
    assert "\x1b[" not in res.stderr and "\r" not in res.stderr
    passes = [line for line in res.stderr.splitlines() if line.startswith("evaluate mix") and " img (" in line]
    assert passes and all("GradCAM" in line and "HiResCAM" in line for line in passes)
    # the model's top-1 on the scored images: in the record, the table, and a warning when near chance
    acc = read_record(out / "GradCAM.json")["accuracy"]
    rows = pq.read_table(out / "GradCAM.parquet").to_pandas()
    assert acc["top1"] == (rows["predicted"] == rows["label"]).mean() and acc["classes"] == "names"
    assert acc["n"] == 2 and acc["chance"] == 0.1 and "model top-1" in res.output and f"{acc['top1']:.1%}" in res.output
    assert ("near chance" in res.output) == (acc["top1"] < 0.2)
    maps = np.load(out / "HiResCAM.maps.npz")
    assert maps["maps"].shape == (2, 224, 224) and np.all(maps["maps"][:, 170:] == 0)
    assert (out / "overlays.png").stat().st_size > 1000
    res = CliRunner().invoke(main, ["evaluate", "--method", "GradCAMM", "--dataset", folder, "--model", MODEL,
                                    "--out", str(out)])
    assert res.exit_code == 2 and "did you mean" in res.output


def test_a_folder_where_a_result_goes_is_named_before_any_work(folder, tmp_path):
    (tmp_path / "o" / "HiResCAM.json").mkdir(parents=True)
    with pytest.raises(StackbenchError, match="HiResCAM.json is not a file, and method HiResCAM writes"):
        evaluate(["HiResCAM"], folder, "minivgg-masked", out=tmp_path / "o", progress=False)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["HiResCAM.json"]
