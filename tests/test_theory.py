"""Section 2 of the paper checked by computation: Proposition 2.1, Theorem 1, the figure and the CLI."""
import io
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from stackbench import theory as T
from stackbench.cli import main
from stackbench.errors import StackbenchError
from stackbench.theory_figures import bound_figure_png
from stackbench.wall import dead_zone, logits_unchanged

GEOM = T.Geometry()


@pytest.fixture(scope="module")
def digit():
    return T.digit_image(0)


def run(*args):
    return CliRunner().invoke(main, ["theory", *args], catch_exceptions=False)


# ------------------------------------------------------------------------------------- model and geometry

def test_paper_mnist_geometry():
    assert GEOM.conv_size == (28, 28) and GEOM.pooled_size == (14, 14) and GEOM.masked_rows == 7
    assert GEOM.wall.dead_from == 15 and list(GEOM.behind_rows) == list(range(14, 28))
    with pytest.raises(StackbenchError, match="not divisible by pool"):
        T.Geometry((28, 28))  # 27x27 conv map cannot be pooled by 2
    with pytest.raises(StackbenchError, match="h' even"):
        T.Geometry((27, 27))  # 26 -> 13 pooled rows: h'/2 is not an integer


def test_the_mask_is_the_theorems_wall():
    """Traced, not declared: no score depends on image rows 15..28, and noise there changes nothing."""
    model = T.WalledCNN(filters=6, layers=2, hidden=8, classes=3).double().init_(1.0, torch.Generator().manual_seed(0))
    w1 = model.weight(0).reshape(8, 6, 14, 14)  # W^(1): hidden x (V, h', w')
    assert torch.equal(w1[:, :, 7:], torch.zeros(8, 6, 7, 14)) and (w1[:, :, :7] != 0).all()
    zone = dead_zone(model, (29, 29), traces=6, channels=1)
    assert zone.rows == list(model.wall.dead_rows) == list(range(15, 29))
    assert logits_unchanged(model, zone.rows, (29, 29), channels=1).identical
    assert not logits_unchanged(model, [13, 14], (29, 29), channels=1).identical  # row 14 is still seen


def test_digit_image_is_a_real_mnist_like_digit(digit):
    image, info = digit
    assert image.shape == (29, 29) and image.dtype == torch.float64
    assert 0 <= float(image.min()) and float(image.max()) <= 1 and float(image.max()) > 0.5
    assert image[:2].abs().sum() == 0 and image[-3:].abs().sum() == 0  # zero padding around the 24x24 digit
    assert image[15:].sum() > 0 and image[:15].sum() > 0  # the digit straddles the wall, as in Figure 3
    assert info["label"] == 0 and info["index"] == 0
    other, info3 = T.digit_image(3)
    assert info3["label"] == 3 and not torch.equal(other, image)
    with pytest.raises(StackbenchError, match="--digit 5000"):
        T.digit_image(5000)


# ------------------------------------------------------------------------------------ Proposition 2.1

@pytest.mark.parametrize("layers", [1, 2, 3])
def test_alpha_closed_form_equals_autograd(digit, layers):
    report = T.alpha_check(digit[0], layers=[layers], filters=5, hidden=12, trials=8, seed=layers)
    row = report["results"][0]
    assert row["evaluations"] == 8 * 4 and row["zero_alpha_evaluations"] < row["evaluations"]
    assert row["max_rel_err"] < 1e-5 and report["passed"]
    assert row["max_rel_err"] < 1e-12  # float64: round-off only


def test_closed_form_uses_the_relu_indicators(digit):
    """For L >= 2 alpha depends on the input through the indicators; dropping them breaks the equality,
    so the check above could fail."""
    model = T.WalledCNN(filters=4, layers=2, hidden=16, classes=1).double().init_(1.0, torch.Generator().manual_seed(1))
    noise = torch.rand(29, 29, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = torch.stack([digit[0], noise])[:, None]
    ag = T.alpha_autograd(model, x)
    assert not torch.allclose(ag[0], ag[1])
    torch.testing.assert_close(T.alpha_closed_form(model, x), ag, rtol=1e-10, atol=0)
    no_indicator = (model.weight(1)[0] @ model.weight(0)).reshape(4, 14, 14).sum((-2, -1)) / (28 * 28)
    assert (no_indicator - ag[0]).abs().max() > 1e-3 * ag[0].abs().max()


def test_alpha_l1_is_the_mean_of_the_unmasked_weights(digit):
    model = T.WalledCNN(filters=3, layers=1).double().init_(2.0, torch.Generator().manual_seed(4))
    w = model.dense[0].weight.reshape(3, 14, 14)
    torch.testing.assert_close(T.alpha_autograd(model, digit[0])[0], w[:, :7].sum((-2, -1)) / 784, rtol=1e-12, atol=0)


def test_alpha_check_refuses_single_filter(digit):
    with pytest.raises(StackbenchError, match="V > 1"):
        T.alpha_check(digit[0], filters=1)


# ----------------------------------------------------------------------------------------- Theorem 1

def test_batched_gradcam_equals_the_model_gradcam(digit):
    """The vectorised Monte Carlo computes exactly the autograd GradCAM of each drawn [CNN]."""
    filt, weights = T.draw_initialisations(3, 7, GEOM, 1.5, torch.Generator().manual_seed(5))
    batched = T.gradcam_l1(digit[0], filt, weights, GEOM)
    for t in range(3):
        model = T.WalledCNN(filters=7, layers=1).double()
        with torch.no_grad():
            model.conv.weight.copy_(filt[t][:, None])
            model.dense[0].weight.copy_(weights[t].reshape(1, -1))
        torch.testing.assert_close(batched[t], T.gradcam(model, digit[0])[0], rtol=1e-10, atol=1e-14)
    assert (batched > 0).any()


def test_kappa_is_the_mean_norm_of_rectified_gaussians():
    z = torch.randn(200_000, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mc = z.clamp_min(0).norm(dim=1)
    assert abs(T.kappa(9) - float(mc.mean())) < 4 * float(mc.std()) / 200_000 ** 0.5
    assert abs(T.kappa(400) / (400 / 2) ** 0.5 - 1) < 2e-3  # sqrt(V/2) asymptotically


@pytest.mark.parametrize("filters,trials", [(64, 600), (256, 300)])
def test_monte_carlo_mean_is_above_the_bound(digit, filters, trials):
    image, info = digit
    report = T.bound_report(image, info, filters=[filters], trials=trials, seed=11)
    r = report["results"][0]
    mean, se = np.array(r["maps"]["mean"]), np.array(r["maps"]["se"])
    bound, exact = np.array(r["maps"]["bound"]), np.array(r["maps"]["exact"])
    live = T.patch_norms(image, 2).numpy() > 0
    assert live.sum() == r["pixels_nonzero_patch"] > 300
    # Theorem 1 at every pixel with a non-zero patch, within 3 standard errors.
    assert (mean[live] >= bound[live] - 3 * se[live]).all()
    assert r["share_mean_ge_bound_3se"] == 1.0 and report["passed"] is True
    # Zero patch: B = 0, so GradCAM and the bound are exactly 0.
    assert (mean[~live] == 0).all() and (bound[~live] == 0).all()
    # The exact L = 1 expectation agrees with the Monte Carlo, and lies above the bound.
    assert np.abs((mean - exact)[live] / se[live]).max() < 5
    assert (exact[live] > bound[live]).all()
    # GradCAM is positive behind the wall although no score depends on those features.
    bw = r["behind_wall"]
    assert bw["pixels_nonzero_patch"] > 100 and bw["share_positive_mean"] == 1.0 and bw["share_mean_above_3se"] == 1.0


def test_mean_gradcam_behind_the_wall_grows_with_filters(digit):
    report = T.bound_report(*digit, filters=[21, 64, 256], trials=120, seed=3)
    behind = [r["behind_wall"]["mean_gradcam"] for r in report["results"]]
    assert behind[0] < behind[1] < behind[2]
    ratios = [r["exact_over_bound"] for r in report["results"]]
    assert ratios[0] > ratios[1] > ratios[2] > 2 ** 0.5  # the bound is loose by >= sqrt(2) V / (V - 20)


@pytest.mark.parametrize("filters", [1, 12, 20])
def test_no_bound_is_claimed_for_20_filters_or_fewer(digit, filters):
    assert T.theorem1_bound(digit[0], filters, GEOM) is None
    assert T.theorem1_rhs(filters, GEOM) <= 0  # the formula itself says nothing there
    report = T.bound_report(*digit, filters=[filters], trials=50, seed=0)
    r = report["results"][0]
    assert r["bound_claimed"] is False and r["maps"]["bound"] is None and r["share_mean_ge_bound_3se"] is None
    assert "claims no bound" in r["bound_note"] and report["passed"] is None
    assert r["behind_wall"]["share_positive_mean"] == 1.0  # yet GradCAM is still positive in expectation
    assert T.theorem1_bound(digit[0], 21, GEOM) is not None and T.theorem1_rhs(21, GEOM) > 0


def test_same_seed_same_json_bytes(digit):
    a = T.bound_report(*digit, filters=[30], trials=40, seed=7)
    b = T.bound_report(*digit, filters=[30], trials=40, seed=7)
    c = T.bound_report(*digit, filters=[30], trials=40, seed=8)
    dump = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert dump(a) == dump(b) and dump(a) != dump(c)
    assert a["config"]["seed"] == 7 and a["image"]["sha256"] == T.image_sha256(digit[0])
    assert T.alpha_check(digit[0], [2], trials=3, seed=1) == T.alpha_check(digit[0], [2], trials=3, seed=1)


# --------------------------------------------------------------------------------------- figure, CLI

def test_figure_is_a_readable_png(digit):
    report = T.bound_report(*digit, filters=[12, 64], trials=30, seed=0)
    png = bound_figure_png(report, digit[0].numpy())
    img = Image.open(io.BytesIO(png))
    img.load()
    assert img.format == "PNG" and img.mode in ("RGB", "RGBA")
    w, h = img.size
    assert w > 800 and 500 < h < w  # two rows of three panels
    pixels = np.asarray(img.convert("RGB")).astype(int)
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
    assert red.sum() > 500  # the wall is drawn


def test_cli_bound_writes_json_and_png(tmp_path):
    r = run("bound", "--digit", "3", "--filters", "12", "--filters", "64", "--trials", "200", "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert "verdict: PASS" in r.output and "V=12: Theorem 1 claims no bound" in r.output
    rec = json.loads((tmp_path / "bound.json").read_text())
    assert rec["schema"] == "stackbench.theory.bound/1" and rec["image"]["label"] == 3
    assert [x["filters"] for x in rec["results"]] == [12, 64] and rec["config"]["trials"] == 200
    assert Image.open(tmp_path / "bound.png").format == "PNG"
    again = tmp_path / "again"
    result = run("bound", "--digit", "3", "--filters", "12", "--filters", "64", "--trials", "200", "--out", str(again))
    assert result.exit_code == 0
    assert (again / "bound.json").read_bytes() == (tmp_path / "bound.json").read_bytes()


def test_cli_bound_says_when_no_bound_is_claimed(tmp_path):
    r = run("bound", "--filters", "20", "--trials", "20", "--out", str(tmp_path))
    assert r.exit_code == 0 and "verdict: no bound claimed (Theorem 1 needs V > 20)" in r.output


def test_cli_alpha(tmp_path):
    r = run("alpha", "--trials", "4", "-L", "1", "-L", "2", "--filters", "3", "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert "verdict: PASS" in r.output
    rec = json.loads((tmp_path / "alpha.json").read_text())
    assert [x["layers"] for x in rec["results"]] == [1, 2] and rec["max_rel_err"] < 1e-12


def test_cli_bound_with_an_image_file(tmp_path):
    arr = np.zeros((56, 56), dtype=np.uint8)
    arr[10:46, 20:36] = 255
    Image.fromarray(arr).convert("RGB").save(tmp_path / "bar.png")
    r = run("bound", "--image", str(tmp_path / "bar.png"), "--filters", "32", "--trials", "50", "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "bound.json").read_text())
    assert rec["image"]["original_size"] == [56, 56] and rec["image"]["mode"] == "RGB"
    assert rec["results"][0]["behind_wall"]["pixels_nonzero_patch"] > 0


@pytest.mark.parametrize("args,needle", [
    (["--image", "missing.png"], "--image missing.png: no such file"),
    (["--digit", "1797"], "--digit 1797"),
    (["--digit", "1", "--image", "x.png"], "--image and --digit both given"),
    (["--tau", "0"], "--tau 0"),
    (["--trials", "1"], "--trials 1"),
])
def test_cli_bad_input_is_one_line(tmp_path, args, needle):
    r = run("bound", *args, "--out", str(tmp_path))
    assert r.exit_code == 2 and f"error: {needle}" in r.output


def test_cli_corrupt_image(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    r = run("bound", "--image", str(bad), "--out", str(tmp_path))
    assert r.exit_code == 2 and "not a readable image" in r.output
