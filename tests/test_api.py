"""The Python API: the README's example runs as written; objects are accepted wherever a reference is; methods are
context managers and callables; explain + mu give exactly the harness's numbers."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import stackbench
from stackbench.evaluate import evaluate

PAGE = Path(__file__).resolve().parents[1] / "docs" / "evaluation.md"  # the manual's page of the Python API


def _readme_example() -> str:
    section = PAGE.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "__main__"}  # as in a notebook
    exec(compile(_readme_example(), "docs/evaluation.md#python-api", "exec"), scope)
    runs = scope["runs"]
    assert [r.status for r in runs] == ["done", "done"]
    assert runs[0].record["method"]["source"] == "__main__:MeanActivation"
    assert (tmp_path / "results-8" / "MeanActivation.json").is_file()
    assert scope["maps"].shape == (4, 224, 224) and scope["maps"].dtype == np.float32


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = stackbench.build_dataset("stack-mix", tmp_path_factory.mktemp("api") / "mix", num_images=6)
    return folder, stackbench.open_dataset(folder), stackbench.load_model("minivgg-masked")


@pytest.fixture(scope="module")
def scored(stack, tmp_path_factory):
    """GradCAM's run by references and by objects (a Dataset, a model, the method's class)."""
    from stackbench.methods.gradient import GradCAM

    folder, data, model = stack
    out = tmp_path_factory.mktemp("scored")
    by_ref = evaluate(["GradCAM"], str(folder), "minivgg-masked", out=out / "ref", progress=False, figure=False)[0]
    by_obj = evaluate(GradCAM, data, model, out=out / "obj", progress=False, figure=False)[0]
    return by_ref, by_obj


def test_objects_and_references_give_the_same_record(scored):
    """A model object, a Dataset object and a method class score exactly what their references score."""
    a, b = (r.record for r in scored)
    assert a["dataset"]["fingerprint"] == b["dataset"]["fingerprint"]
    assert b["dataset"]["ref"] == "object:datasets.Dataset"
    assert a["metrics"] == b["metrics"] and a["maps"] == b["maps"]
    json.dumps(b)  # the record of objects is plain JSON


def test_explain_and_mu_are_the_harness_numbers(stack, scored):
    folder, data, model = stack
    run = scored[1]
    rows = pq.read_table(run.record_path.with_suffix(".parquet")).to_pandas()
    images = [r["image"] for r in data]
    maps = stackbench.explain(model, images, method="GradCAM", batch_size=8)
    assert np.array_equal(stackbench.mu(maps, model), rows["mu"].to_numpy())
    # a tensor in [0, 1], a uint8 array and a PIL image are the same image (one batch of one: bit for bit)
    x = torch.from_numpy(np.array(images[0])).permute(2, 0, 1).float() / 255
    one = stackbench.explain(model, x, "GradCAM")
    assert one.shape == (1, 224, 224) and np.allclose(one[0], maps[0], atol=1e-6)
    for same in (np.array(images[0]), images[0]):
        assert np.array_equal(stackbench.explain(model, same, "GradCAM"), one)
    # a hidden wall: mu reads the band where the wall is, so a map turned with the wall keeps its mu
    turned = stackbench.Wall().oriented("rot90")
    from stackbench.wall import apply

    assert np.allclose(stackbench.mu(apply(torch.from_numpy(maps), "rot90").numpy(), turned), rows["mu"].to_numpy())


def test_methods_are_context_managers_and_callables(stack):
    from pytorch_grad_cam import HiResCAM as LibraryHiResCAM

    _, data, model = stack
    images = [r["image"] for r in data.select(range(3))]
    with stackbench.get_method("HiResCAM", model) as cam:
        ours = cam(images, targets=2)
    assert (stackbench.mu(ours, model) == 0).all()
    with stackbench.get_method(LibraryHiResCAM, model) as cam:  # pytorch-grad-cam's own class, adapted
        assert np.allclose(cam(images, targets=2), ours, atol=1e-5)
    bare = stackbench.get_method("GradCAM")
    with pytest.raises(stackbench.StackbenchError, match="no model to explain"):
        bare(images)
    assert np.array_equal(bare.bind(model)(images), stackbench.explain(model, images, "GradCAM"))
    # an instance in use keeps its model: explain works on a copy, and rebinding inside `with` is refused
    other = stackbench.load_model("minivgg-masked@random")
    with stackbench.get_method("GradCAM", model) as cam:
        stackbench.explain(other, images, method=cam)
        assert cam._use["model"] is model and np.array_equal(cam(images), ours_gradcam := bare(images))
        copy = stackbench.get_method(cam, other)  # a bound copy; cam keeps its model
        assert copy is not cam and copy._use["model"] is other and cam._use["model"] is model
        with pytest.raises(stackbench.StackbenchError, match="in use inside `with`"):
            cam.bind(other)
        with cam:  # a nested `with` (a helper's own) shares the set-up and leaves the outer one in use
            pass
        with pytest.raises(stackbench.StackbenchError, match="in use inside `with`"):
            cam.bind(other)
    assert np.array_equal(cam(images), ours_gradcam)
    assert np.array_equal(stackbench.explain(model, np.stack([np.asarray(im) for im in images])), ours_gradcam)


@pytest.mark.parametrize("call, message", [
    (lambda m, x: stackbench.explain(m, x * 4 - 2), "in \\[0, 1\\]"),
    (lambda m, x: stackbench.explain(m, x[..., :100, :100]), "resize it to 224x224"),
    (lambda m, x: stackbench.explain(m, x, targets=[1, 2, 3]), "3 given for 2 images"),
    (lambda m, x: stackbench.explain(m, x, targets=10), "from 0 to 9"),
    (lambda m, x: stackbench.explain(torch.nn.Linear(2, 2), x), "no stackbench wall"),
    (lambda m, x: stackbench.explain(m, x, method=3), "method int object"),
    (lambda m, x: stackbench.explain(m, x, method="GradCAMM"), "did you mean"),
    (lambda m, x: stackbench.mu(np.zeros((2, 100, 100)), m), "expected \\(N, 224, 224\\)"),
    (lambda m, x: stackbench.open_dataset(42), "expected a dataset folder"),
    (lambda m, x: stackbench.open_dataset(__file__), "is a file; give a dataset folder"),
    (lambda m, x: stackbench.load_model(__file__[:-3] + ".pt"), "is a weights file, not a reference: give paper:"),
    (lambda m, x: stackbench.explain(m, None), "images: got NoneType"),
    (lambda m, x: stackbench.explain(m, []), "images: none given"),
    (lambda m, x: stackbench.explain(m, x[:0]), "images: none given"),
    (lambda m, x: stackbench.explain(m, x * float("nan")), "values are NaN or infinite"),
    (lambda m, x: stackbench.explain(m, [x[0], x[1, :, :100, :100]]), "image 1 is \\(100, 100\\) px"),
    (lambda m, x: stackbench.explain(m, x, targets=["circle", "square"]), "class indices"),
    (lambda m, x: stackbench.explain(m, x, targets=[None, 1]), "class indices"),
    (lambda m, x: stackbench.explain(m, x, targets=[0.5, 1.0]), "class indices"),
    (lambda m, x: stackbench.mu(np.ones((1, 224, 224)), stackbench.load_model("minivgg@random")), "has no wall"),
    (lambda m, x: stackbench.load_model("minivgg-masked", device="mps"), "mps is not available"),
    (lambda m, x: evaluate([], "nowhere", m), "no method given"),
])
def test_bad_objects_are_named_in_one_line(stack, call, message):
    _, _, model = stack
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with pytest.raises(stackbench.StackbenchError, match=message):
        call(model, x)


def test_import_stackbench_does_not_load_torch():
    code = "import sys, stackbench; stackbench.__version__; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_the_jobs_take_objects_too(stack, tmp_path):
    """The demo plans with a model object (named as load_model names it); submit refuses a class nobody else could
    re-run (defined in __main__) before it creates anything."""
    from stackbench import leaderboard as lb
    from stackbench.demo import demo

    _, _, model = stack
    said = []
    assert demo(out=tmp_path / "demo", quick=True, model=model, dry_run=True, echo=said.append) is None
    assert any(f"with {model.ref}" in line for line in said) and not (tmp_path / "demo").exists()

    class Notebook(stackbench.SaliencyMethod):
        name = "Notebook"

        def explain(self, batch):
            return batch.activations.mean(dim=1)

    Notebook.__module__ = "__main__"
    with pytest.raises(stackbench.StackbenchError, match="defined in a notebook or script"):
        lb.submit(Notebook, store=tmp_path / "board", progress=False)
    assert not (tmp_path / "board").exists()


def test_bad_input_leaves_nothing_behind(stack, tmp_path, monkeypatch):
    folder, data, model = stack
    with pytest.raises(stackbench.StackbenchError, match="num_images=4.5 must be int"):
        stackbench.build_dataset("stack-mix", tmp_path / "half", num_images=4.5)
    with pytest.raises(stackbench.StackbenchError, match="--min-size must be 0 .* got -1"):
        stackbench.build_dataset("stack-mix", tmp_path / "half", min_size=-1)
    with pytest.raises(stackbench.StackbenchError, match="classes 2.5: expected class names or indices"):
        stackbench.build_dataset("stack-mix", tmp_path / "half", classes=2.5)
    one = stackbench.build_dataset("stack-mix", tmp_path / "one", classes=3, num_images=2, progress=False)
    assert set(stackbench.open_dataset(one)["class_name"]) == {"star"}  # an int is one class index
    with pytest.raises(stackbench.StackbenchError, match="give .all., .none. or a stackbench.axes.Axes"):
        evaluate(["GradCAM"], data, model, out=tmp_path / "ev", axes="x")
    with pytest.raises(stackbench.StackbenchError, match="has no rows"):
        stackbench.open_dataset(data.select([]))
    assert not (tmp_path / "half").exists() and not (tmp_path / "ev").exists()
    # a submission that fails after starting a new board removes what it started
    from stackbench import leaderboard as lb

    with pytest.raises(stackbench.StackbenchError, match="unknown track 'bogus'"):
        lb.submit("GradCAM", "bogus", store=tmp_path / "board", progress=False)
    assert not (tmp_path / "board").exists()
    (tmp_path / "ro").mkdir()
    tracks = Path(lb.__file__).parents[2] / "leaderboard/tracks.json"
    (tmp_path / "ro" / "tracks.json").write_bytes(tracks.read_bytes())
    import tempfile

    def read_only(*args, **kwargs):  # a read-only mount (root ignores chmod, so the mount is simulated)
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(stackbench.StackbenchError, match="--store .*ro is not writable"):  # before any evaluation
        lb.submit("GradCAM", store=tmp_path / "ro", progress=False)
