"""Walled ViTs: the walls proven bitwise (with unwalled controls), hidden walls, the token-CAM family against
pytorch-grad-cam's ViT usage, and attention rollout / relevancy against hand-computed cases."""

import numpy as np
import pytest
import pytorch_grad_cam as L
import torch
from pytorch_grad_cam.ablation_layer import AblationLayerVit
from test_methods import batch_on, library, run

from stackbench import metrics as M
from stackbench.errors import StackbenchError
from stackbench.methods import TokenBackbone, get_method
from stackbench.methods.attention import relevancy, rollout
from stackbench.models import create_model, load_model
from stackbench.models.variants import orient
from stackbench.wall import ORIENTATIONS, apply, check, dead_zone, logits_unchanged

BAND = list(range(160, 224))


def _nonzero_head(net):
    # torchvision's trap: a zero class token or head makes every logit constant and every invariance test trivial.
    assert (net.cls_token is None or net.cls_token.abs().max() > 0) and net.head.weight.abs().max() > 0
    return net


def test_the_patch_embedding_is_the_convolution_forward_and_backward():
    # Its backward is two matrix products, not oneDNN's convolution backward: the gradients must be the same.
    from torch.nn import functional as F

    from stackbench.models.vit import _PatchEmbedding

    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((2, 3, 48, 32), (5, 3, 16, 16), (5,)))
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(_PatchEmbedding.apply, (x, w, b))
    x32, w32, b32 = (t.detach().float().requires_grad_() for t in (x, w, b))
    out = _PatchEmbedding.apply(x32, w32, b32)
    conv = F.conv2d(x32, w32, b32, stride=16)
    assert torch.equal(out, conv)  # the forward is nn.Conv2d's, to the bit
    up = torch.randn(out.shape, generator=g)
    ours, theirs = (torch.autograd.grad(y, (x32, w32, b32), up) for y in (out, conv))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    only_x = torch.autograd.grad(_PatchEmbedding.apply(x32, w32.detach(), None), x32, up)[0]  # no weight gradient asked
    torch.testing.assert_close(only_x, torch.autograd.grad(F.conv2d(x32, w32.detach(), None, stride=16), x32, up)[0])


@pytest.mark.parametrize("name,unwalled", [("minivit-masked", "minivit"), ("minivit-pixel", "minivit"),
                                           ("vit-b16-masked", "vit-b16"), ("vit-b16-pixel", "vit-b16")])
def test_the_dead_band_changes_no_logit_and_the_unwalled_model_does(name, unwalled):
    net = _nonzero_head(load_model(f"{name}@random"))
    zone = dead_zone(net, net.input_size, traces=2 if "b16" in name else 4)
    assert zone.rows == BAND and zone.matches(net.wall)          # the traced zone is the stated one
    assert net.wall.dead_from == 160 and net.wall.dead_from <= 170  # it holds the datasets' band
    result = check(net, net.input_size, zone=zone)
    assert result.identical and result.holds(net.wall)
    control = _nonzero_head(load_model(f"{unwalled}@random"))
    changed = logits_unchanged(control, BAND)
    assert not changed.identical and changed.max_abs_diff > 1e-3


def test_the_pixel_wall_holds_for_non_finite_pixels_and_the_attention_wall_does_not():
    x = torch.rand(1, 3, 224, 224)
    y = x.clone()
    y[:, :, 200, 5] = float("inf")
    with torch.no_grad():
        pixel = load_model("minivit-pixel@random")
        assert torch.equal(pixel(x), pixel(y))
        attention = load_model("minivit-masked@random")
        assert not torch.isfinite(attention(y)).all()  # 0 x inf in the masked attention: the trap noted in the issue


def test_the_wall_is_a_buffer_of_the_config_never_of_the_checkpoint(tmp_path):
    net = load_model("minivit-masked@random")
    assert {"keys", "dead_tokens", "live_index", "readout", "pos_embed"}.isdisjoint(net.state_dict())
    net.save_pretrained(tmp_path)
    again = load_model(str(tmp_path))
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(net(x), again(x))
    assert again.num_prefix_tokens == 0 and torch.equal(again.keys, ~again.dead_tokens)  # no class token
    assert int(again.dead_tokens.sum()) == 4 * 14 and again.dead_tokens.view(14, 14)[10:].all()
    assert again.live_grid == (10, 14) and torch.equal(again.readout, torch.arange(140))


def test_the_mini_vit_is_a_vit_whose_tokens_each_read_one_patch():
    # hMLP stem (every kernel its stride), fixed sin-cos positions, a conv head over the 10x14 live tokens: a pixel
    # moves only its own token before the blocks, and the head reads no dead token.
    net = load_model("minivit-masked@random")
    assert (net.stem, net.global_pool, net.cls_token) == ("hmlp", "conv", None)
    assert [(m.kernel_size[0], m.stride[0]) for m in net.patch_embed.modules() if isinstance(m, torch.nn.Conv2d)] \
        == [(4, 4), (2, 2), (2, 2)]
    x = torch.rand(1, 3, 224, 224)
    y = x.clone()
    y[0, :, 37, 50] += 1.0  # inside patch (2, 3)
    with torch.no_grad():
        moved = (net.embed(y) - net.embed(x)).abs().amax(-1)[0].view(14, 14)
    assert moved[2, 3] > 0 and int((moved > 0).sum()) == 1
    from stackbench.models.vit import sincos_positions

    pos = sincos_positions(14, 64)
    assert torch.equal(net.pos_embed[0], pos) and pos.shape == (196, 64) and float(pos[0, 16:32].min()) == 1.0


@pytest.mark.parametrize("name", ["minivit-masked", "minivit-pixel", "vit-ti16-masked"])
def test_hidden_walls_reorient_a_vit_exactly(name):
    net = load_model(f"{name}@random")
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = net(x)
        for g in ORIENTATIONS:
            turned = orient(net, g)
            assert (turned(apply(x, g)) - ref).abs().max() <= 1e-5, g
    rot = orient(net, "rot90")
    assert rot.wall.side != "bottom" and check(rot, rot.input_size).holds(rot.wall)
    with pytest.raises(StackbenchError, match="re-oriented"):
        rot.save_pretrained("never")


@pytest.fixture(scope="module", params=["minivit-masked", "vit-ti16-masked@random"], ids=["conv-head", "class-token"])
def vit_batch(request):
    # The conv-head ViT as shipped (trained): at initialisation its maps are driven by the fixed positions (HiResCAM's
    # are all empty), which would test nothing
    return batch_on(request.param)


def _ours(name, bb, batch):
    return run(name, bb, batch)[0]


TOKEN_CAMS = {"GradCAM": L.GradCAM, "GradCAM++": L.GradCAMPlusPlus, "XGradCAM": L.XGradCAM, "HiResCAM": L.HiResCAM,
              "LayerCAM": L.LayerCAM, "EigenCAM": L.EigenCAM, "ScoreCAM": L.ScoreCAM, "AblationCAM": L.AblationCAM}


@pytest.mark.parametrize("name", list(TOKEN_CAMS))
def test_token_cams_match_pytorch_grad_cam_vit_usage(vit_batch, name):
    net, bb, batch = vit_batch
    ours = M.postprocess(_ours(name, bb, batch), "gradcam-lib")
    kw = {"ablation_layer": AblationLayerVit()} if name == "AblationCAM" else {}
    ref = library(TOKEN_CAMS[name], net, batch, **kw)
    assert ours.shape == ref.shape == (3, 224, 224)
    assert np.abs(ours - ref).max() <= 1e-5


def test_the_token_grid_is_the_target_layer_without_the_class_token(vit_batch):
    net, bb, batch = vit_batch
    seen = []
    h = net.target_layer.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    try:
        with torch.no_grad():
            net(batch.x)
    finally:
        h.remove()
    D, k = net.dim, net.num_prefix_tokens
    assert batch.activations.shape == (3, D, 14, 14)
    assert torch.equal(batch.activations, seen[0][:, k:].reshape(3, 14, 14, D).permute(0, 3, 1, 2))


def test_attention_methods_put_nothing_on_dead_tokens_under_the_attention_wall(vit_batch):
    _, bb, batch = vit_batch
    for name in ("RawAttention", "AttentionRollout", "AttentionRelevancy"):
        maps = _ours(name, bb, batch)
        assert maps.shape == (3, 14, 14) and np.all(maps[:, 10:] == 0) and np.all(maps[:, :10].max(axis=(1, 2)) > 0)
        assert np.all(M.mu(M.postprocess(maps)) == 0)  # the 8 px spill ends at row 167, above the band
    pixel = TokenBackbone(load_model("minivit-pixel@random"))
    x = batch.x
    attn, _ = pixel.attention(x)
    assert float(attn[-1][:, :, 0].reshape(3, -1, 14, 14)[:, :, 10:].sum()) > 0  # the pixel wall is still attended


def test_rollout_by_hand():
    # One head, two tokens. Block 1: A = [[.5,.5],[0,1]] -> (A+I)/2 = [[.75,.25],[0,1]] (rows sum to 1).
    # Block 2: A = [[1,0],[.5,.5]] -> [[1,0],[.25,.75]]. Rollout = block2 @ block1 = [[.75,.25],[.1875,.8125]].
    a1 = torch.tensor([[[[0.5, 0.5], [0.0, 1.0]]]])
    a2 = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])
    r = rollout([a1, a2])
    assert torch.allclose(r[0], torch.tensor([[0.75, 0.25], [0.1875, 0.8125]]))
    # Heads are averaged before the residual: two heads [[1,0],[0,1]] and [[0,1],[1,0]] fuse to all 0.5.
    two = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]])
    assert torch.allclose(rollout([two])[0], torch.tensor([[0.75, 0.25], [0.25, 0.75]]))


def test_a_pooled_head_is_read_at_the_tokens_it_pools_by_hand():
    # Three tokens on a 1x3 grid, no class token; the head pools tokens 0 and 1 (2 is dead). Rows 0 and 1 of
    # [[.5,.5,0],[.2,.8,0],[.3,.3,.4]] average to [.35,.65,0]: token 2's own row (.4 on itself) is never read.
    from stackbench.methods.attention import readout_map

    m = torch.tensor([[[0.5, 0.5, 0.0], [0.2, 0.8, 0.0], [0.3, 0.3, 0.4]]])
    out = readout_map(m, torch.tensor([0, 1]), 0, (1, 3))
    assert torch.allclose(out, torch.tensor([[[0.35, 0.65, 0.0]]]))
    # with a class token (prefix 1) read alone: its row, the patch columns
    cls = torch.tensor([[[0.1, 0.6, 0.3], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    assert torch.allclose(readout_map(cls, torch.tensor([0]), 1, (1, 2)), torch.tensor([[[0.6, 0.3]]]))
    # rollout through a pooled head: one block [[1,0],[.5,.5]] -> (A+I)/2 = [[1,0],[.25,.75]]; both tokens pooled:
    # [.625, .375]
    r = rollout([torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])])
    assert torch.allclose(readout_map(r, torch.tensor([0, 1]), 0, (1, 2)), torch.tensor([[[0.625, 0.375]]]))


def test_relevancy_by_hand():
    # R0 = I. Block 1: cam = mean_h((g*a)^+); with g*a = [[.2,-.1],[.3,.4]] -> [[.2,0],[.3,.4]]; R1 = I + cam.
    # Block 2: g*a = [[0,.5],[0,0]] -> R2 = R1 + [[0,.5],[0,0]] @ R1 = R1 + [[.15,.7],[0,0]].
    a1, g1 = torch.tensor([[[[0.4, 0.1], [0.5, 0.8]]]]), torch.tensor([[[[0.5, -1.0], [0.6, 0.5]]]])
    a2, g2 = torch.tensor([[[[0.5, 0.5], [0.1, 0.9]]]]), torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])
    R = relevancy([a1, a2], [g1, g2])
    R1 = torch.tensor([[1.2, 0.0], [0.3, 1.4]])
    assert torch.allclose(R[0], R1 + torch.tensor([[0.15, 0.7], [0.0, 0.0]]))


def test_a_method_that_cannot_run_on_a_vit_says_so_in_one_line():
    with pytest.raises(StackbenchError, match="FullGrad does not run on vit models") as e:
        with get_method("FullGrad", model=create_model("minivit-masked")) as cam:
            cam(torch.rand(1, 3, 224, 224))
    assert "\n" not in str(e.value)
    with pytest.raises(StackbenchError, match="RawAttention does not run on vgg models"):
        get_method("RawAttention", model="minivgg-masked@random")(torch.rand(1, 3, 224, 224))
    with pytest.raises(StackbenchError, match="head_fusion 'min' must be mean or max"):
        get_method("AttentionRollout", head_fusion="min")
    from stackbench.commands.evaluate import method_rows

    runs_on = {r["name"]: r["architectures"] for r in method_rows()}
    assert runs_on["FullGrad"] == ["vgg"] and runs_on["AttentionRollout"] == ["vit"]
    assert runs_on["GradCAM"] == ["vgg", "vit"]


def test_training_leaves_the_dead_tokens_out_and_computes_the_same_function():
    import copy

    net = load_model("minivit-masked@random")
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        masked, live = net(x), net.live_logits(x)
        assert torch.allclose(masked, live, rtol=1e-5, atol=1e-6) and not torch.equal(net(x), net(x * 0.5))
        training = copy.deepcopy(net).train()  # training's forward is the live one (batch statistics in the norms)
        assert torch.equal(training(x), copy.deepcopy(net).train().live_logits(x))
        tokens = net.live_forward(x)[1]
    assert tokens.shape == (2, 140, 64)


@pytest.mark.parametrize("name", ["minivit-masked", "minivit-pixel"])
def test_the_scoring_forward_is_the_model_and_blind_to_the_band(name):
    # Opti-CAM and deletion score through backbone.logits: under the attention wall it leaves the dead
    # tokens out (fewer tokens, the same function up to rounding); under the pixel wall it is the forward itself.
    net = load_model(f"{name}@random")
    bb = TokenBackbone(net)
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    noisy = x.clone()
    noisy[:, :, 160:] = torch.rand(2, 3, 64, 224, generator=torch.Generator().manual_seed(5)) * 50
    with torch.no_grad():
        full, scored, scored_noisy = net(x), bb.logits(x), bb.logits(noisy)
    assert torch.equal(scored, scored_noisy)
    if name == "minivit-pixel":
        assert torch.equal(scored, full)
    else:
        assert torch.allclose(scored, full, rtol=1e-5, atol=1e-6) and not torch.equal(bb.logits(x * 0.5), scored)


@pytest.mark.parametrize("name", ["HiResCAM", "LayerCAM"])
def test_token_cams_blind_to_dead_tokens_score_mu_zero_on_the_band(vit_batch, name):
    _, bb, batch = vit_batch
    maps = _ours(name, bb, batch)
    assert np.all(maps[:, 10:] == 0) and np.all(M.mu(M.postprocess(maps)) == 0)
    assert np.all(M.mu(M.postprocess(_ours("GradCAM", bb, batch))) > 0)


def test_evaluate_scores_a_vit_on_the_datasets_band_and_records_both(tmp_path):
    from test_evaluate import make_folder

    from stackbench.axes import Axes
    from stackbench.evaluate import evaluate

    folder = make_folder(tmp_path / "mix", n=3)
    runs = {r.name: r for r in evaluate(["HiResCAM", "GradCAM", "AttentionRollout"], folder, "minivit-masked",
                                        out=tmp_path / "out", progress=False, axes=Axes(sample=1))}
    assert all(r.status == "done" for r in runs.values())
    rec = runs["HiResCAM"].record
    assert rec["band"] == {"axis": "rows", "first": 170, "last": 223}
    assert rec["model"]["wall"]["dead_from"] == 160 and rec["model"]["arch"] == "vit"
    assert rec["model"]["wall_kind"] == "attention"
    assert rec["metrics"]["mu"]["mean"] == 0.0 and runs["AttentionRollout"].record["metrics"]["mu"]["mean"] == 0.0
    assert runs["GradCAM"].record["metrics"]["mu"]["mean"] > 0
    with pytest.raises(StackbenchError, match="dead zone holds the dataset's band"):
        evaluate(["GradCAM"], make_folder(tmp_path / "high", n=1, wall_row=150), "minivit-masked",
                 out=tmp_path / "x", progress=False)
    with pytest.raises(StackbenchError, match="does not run on vit models"):
        evaluate(["FullGrad"], folder, "minivit-masked", out=tmp_path / "y", progress=False)
    # "all" is every method that runs on the model; FullGrad (VGG only) named beside it is still refused
    every = evaluate(["all"], folder, "minivit-masked", out=tmp_path / "all", progress=False, limit=1, axes=None)
    names = {r.name for r in every}
    assert {"AttentionRollout", "GradCAM", "RandomCAM"} <= names and not names & {"FullGrad", "ShapleyCAM"}
    assert all(r.status == "done" for r in every), [(r.name, r.error) for r in every if r.status != "done"]
    with pytest.raises(StackbenchError, match="FullGrad does not run on vit models"):
        evaluate(["all", "FullGrad"], folder, "minivit-masked", out=tmp_path / "all2", progress=False, limit=1)
    # the pixel wall through every axis (its hidden-wall copies carry no `wall` attribute)
    (pixel,) = evaluate(["HiResCAM"], folder, "minivit-pixel", out=tmp_path / "p", progress=False,
                        axes=Axes(sample=1))
    assert pixel.status == "done" and pixel.record["model"]["wall_kind"] == "pixel", pixel.error
