import contextlib
import io

import numpy as np
import pytest
import pytorch_grad_cam as L
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from stackbench import metrics as M
from stackbench.errors import StackbenchError
from stackbench.methods import PAPER_METHODS, Batch, backbone_for, get_method, list_methods
from stackbench.methods.passes import check_maps, shared_pass
from stackbench.models import load_model


def batch_on(ref: str):
    """(model, backbone, a batch of 3 seeded random images through the harness's shared pass) for a model ref."""
    net = load_model(ref)
    bb = backbone_for(net)
    x01 = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    x = bb.normalize(x01)
    logits, t, A, G, extra = shared_pass(bb, x, "predicted", None, True)
    batch = Batch(x=x, x01=x01, targets=t, logits=logits, index=[0, 1, 2], ids=["a", "b", "c"], backbone=bb,
                  activations=A, gradients=G, extra=extra)
    return net, bb, batch


@pytest.fixture(scope="module")
def setup():
    return batch_on("minivgg-masked@random")


def run(name, bb, batch, **cfg):
    m = get_method(name, **cfg)
    m.setup(bb)
    try:
        return check_maps(m.explain(batch), len(batch.ids)), m
    finally:
        m.teardown()


def library(cls, net, batch, targets="classifier", **kw):
    """The pytorch-grad-cam class's maps, as its README uses it (a ViT: with the reshape_transform to the grid)."""
    cam = cls(model=net, target_layers=[net.target_layer], reshape_transform=getattr(net, "reshape_transform", None),
              **kw)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            t = [ClassifierOutputTarget(int(i)) for i in batch.targets] if targets == "classifier" else targets
            return cam(input_tensor=batch.x, targets=t)
    finally:
        ag = getattr(cam, "base_cam", cam).activations_and_grads
        for h in ag.handles:
            h.remove()
        ag.handles, ag.activations, ag.gradients = [], [], []
        for p in net.parameters():
            p.grad = None


NATIVE = {"GradCAM": L.GradCAM, "GradCAM++": L.GradCAMPlusPlus, "XGradCAM": L.XGradCAM, "HiResCAM": L.HiResCAM,
          "LayerCAM": L.LayerCAM, "GradCAMElementWise": L.GradCAMElementWise, "EigenCAM": L.EigenCAM,
          "EigenGradCAM": L.EigenGradCAM, "AblationCAM": L.AblationCAM, "ScoreCAM": L.ScoreCAM}


def test_eigencam_projection_is_the_librarys_to_the_bit():
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    from stackbench.methods.gradient import _projection

    g = torch.Generator().manual_seed(0)
    for shape in ((3, 32, 14, 14), (2, 64, 7, 9), (1, 5, 3, 3)):
        a = torch.randn(*shape, generator=g)
        a[0, 0, 0, 0] = float("nan")  # NaN activations count as 0, as in the library
        ours, theirs = _projection(a), get_2d_projection(a.numpy())
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)


@pytest.mark.parametrize("name", list(NATIVE))
def test_native_methods_match_pytorch_grad_cam(setup, name):
    net, bb, batch = setup
    ours, _ = run(name, bb, batch)
    ref = library(NATIVE[name], net, batch)
    pp = M.postprocess(ours, "gradcam-lib")
    assert pp.shape == ref.shape == (3, 224, 224)
    assert np.abs(pp - ref).max() <= 1e-5
    assert np.allclose(M.mu(pp), M.mu(ref), atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("name,cls", [("KPCA-CAM", L.KPCA_CAM), ("ShapleyCAM", L.ShapleyCAM), ("FullGrad", L.FullGrad)])
def test_library_adapters_give_the_library_maps(setup, name, cls):
    net, bb, batch = setup
    ours, m = run(name, bb, batch)
    assert m.describe()["reference"].startswith("pytorch_grad_cam.")
    ref = library(cls, net, batch)
    assert np.abs(M.postprocess(ours) - ref).max() <= 1e-5


def test_finercam_adapter_uses_the_library_rule_for_the_top1_target(setup):
    net, bb, batch = setup
    ours, _ = run("FinerCAM", bb, batch)
    ref = library(L.FinerCAM, net, batch, targets=None)  # the library's own targets: top-1 vs its nearest classes
    assert np.abs(M.postprocess(ours) - ref).max() <= 1e-5


def test_hirescam_is_exactly_zero_behind_the_wall(setup):
    _, bb, batch = setup
    maps, _ = run("HiResCAM", bb, batch)
    assert np.all(M.mu(M.postprocess(maps)) == 0.0)
    g, _ = run("GradCAM", bb, batch)
    assert np.all(M.mu(M.postprocess(g)) > 0)


def test_live_crop_logits_equal_the_full_forward(setup):
    net, bb, batch = setup
    assert bb.live_lines == 176
    with torch.no_grad():
        full = net(batch.x)
        assert torch.allclose(bb.logits(batch.x), full, rtol=1e-5, atol=1e-7)


def test_opticam_raises_the_target_logit_and_records_its_config(setup):
    _, bb, batch = setup
    maps, m = run("Opti-CAM", bb, batch, steps=8, lr=0.1)
    trace = np.array(m.trace)
    assert trace.shape[1] == 3 and np.all(trace[-1] > trace[0])
    cfg = m.describe()["config"]
    assert cfg["lr"] == 0.1 and cfg["steps"] == 8 and cfg["loss"] == "max-logit"
    assert maps.shape == (3, 14, 14) and np.all(maps >= 0)
    with pytest.raises(StackbenchError, match="loss"):
        get_method("Opti-CAM", loss="mse")


def test_randomcam_is_seeded_per_item_not_per_batch(setup):
    _, bb, batch = setup
    a, _ = run("RandomCAM", bb, batch, seed=1)
    b, _ = run("RandomCAM", bb, batch, seed=1)
    c, _ = run("RandomCAM", bb, batch, seed=2)
    assert np.array_equal(a, b) and not np.allclose(a, c)
    one = Batch(**{**batch.__dict__, "index": [2], "ids": ["c"], "activations": batch.activations[2:],
                   "gradients": batch.gradients[2:], "targets": batch.targets[2:]})
    d, _ = run("RandomCAM", bb, one, seed=1)
    assert np.allclose(d[0], a[2], atol=1e-6)


def test_captum_input_gradient_matches_autograd_and_is_blind(setup):
    net, bb, batch = setup
    ours, m = run("InputGradient", bb, batch)
    x = batch.x.clone().requires_grad_(True)
    out = net(x)
    (g,) = torch.autograd.grad(out.gather(1, batch.targets[:, None]).sum(), x)
    assert np.allclose(ours, g.abs().amax(1).numpy(), atol=1e-6 * float(g.abs().max()))
    assert np.all(ours[:, 170:] == 0)
    ig, m = run("IntegratedGradients", bb, batch, steps=4)
    assert ig.shape == (3, 224, 224) and np.all(ig[:, 170:] == 0) and m.describe()["config"]["steps"] == 4


def test_registry_lists_the_paper_methods_and_aliases():
    names = list_methods()
    assert set(PAPER_METHODS) <= set(names)
    assert {"LayerCAM", "GradCAMElementWise", "EigenGradCAM", "FullGrad", "KPCA-CAM", "ShapleyCAM", "FinerCAM",
            "RandomCAM", "InputGradient", "IntegratedGradients"} <= set(names)
    assert get_method("gradcam").name == "GradCAM" and get_method("GradCAMPlusPlus").name == "GradCAM++"
    assert list_methods(family="perturbation") == ["AblationCAM", "ScoreCAM"]


def test_unknown_method_lists_close_matches():
    with pytest.raises(StackbenchError, match="did you mean.*GradCAM"):
        get_method("GradCAMM")
    with pytest.raises(StackbenchError, match="unknown option"):
        get_method("ScoreCAM", bogus=1)


def test_bad_plugins_fail_with_one_clear_line(tmp_path):
    with pytest.raises(StackbenchError, match="does not exist"):
        get_method(f"{tmp_path}/nope.py:X")
    f = tmp_path / "p.py"
    f.write_text("VALUE = 3\nclass Helper: pass\n")
    with pytest.raises(StackbenchError, match="no attribute 'Helpr'.*Helper"):
        get_method(f"{f}:Helpr")
    with pytest.raises(StackbenchError, match="neither"):
        get_method(f"{f}:VALUE")
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(StackbenchError, match="failed to import.*boom"):
        get_method(f"{tmp_path / 'broken.py'}:X")
    with pytest.raises(StackbenchError, match="failed to import"):
        get_method("no_such_module_xyz:Thing")


def test_check_maps_refuses_bad_outputs():
    from stackbench.methods.passes import MethodFailure

    good = torch.zeros(2, 14, 14)
    assert check_maps(good, 2).shape == (2, 14, 14)
    for bad, msg in [(torch.zeros(2, 14), "shape"), (torch.zeros(3, 14, 14), "shape"),
                     (torch.zeros(2, 14, 14, dtype=torch.int64), "dtype"), ([[0.0]], "expected a tensor")]:
        with pytest.raises(MethodFailure, match=msg):
            check_maps(bad, 2)
    nan = torch.zeros(2, 14, 14)
    nan[1, 3, 3] = float("inf")
    with pytest.raises(MethodFailure) as e:
        check_maps(nan, 2)
    assert e.value.item == "1"
