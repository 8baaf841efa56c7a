import numpy as np
import pytest

from stackbench import metrics as M


def test_mu_is_paper_eq1_over_rows_170_to_223():
    m = np.ones((224, 224))
    assert M.mu(m)[0] == pytest.approx(np.sqrt(54 / 224), abs=1e-12)
    only_169, only_170, only_223 = np.zeros((3, 224, 224))
    only_169[169] = 1
    only_170[170] = 1
    only_223[223, 5] = 3
    assert M.mu(np.stack([only_169, only_170, only_223])).tolist() == [0.0, 1.0, 1.0]
    rng = np.random.default_rng(0)
    r = rng.random((224, 224))
    assert M.mu(r)[0] == pytest.approx(np.linalg.norm(r[-54:]) / np.linalg.norm(r), rel=1e-12)


def test_empty_maps_are_counted_never_zero():
    maps = np.stack([np.zeros((224, 224)), np.ones((224, 224))])
    vals = M.mu(maps)
    assert np.isnan(vals[0]) and vals[1] > 0
    agg = M.aggregate(vals)
    assert agg["n"] == 1 and agg["n_empty"] == 1 and agg["mean"] == pytest.approx(vals[1])
    assert M.aggregate([np.nan, np.nan]) == {"mean": None, "std": None, "ci95": None, "n": 0, "n_empty": 2}


def test_gradcam_lib_postprocess_equals_pytorch_grad_cam():
    from pytorch_grad_cam.utils.image import scale_cam_image

    rng = np.random.default_rng(1)
    raw = rng.normal(size=(3, 14, 14)).astype(np.float32)
    lib = scale_cam_image(scale_cam_image(np.maximum(raw, 0), (224, 224)))  # BaseCAM, one target layer
    ours = M.postprocess(raw, "gradcam-lib")
    assert ours.shape == (3, 224, 224) and ours.dtype == np.float32
    assert np.abs(ours - lib).max() <= 1e-6


def test_raw_postprocess_has_no_shift_and_the_shift_changes_mu():
    rng = np.random.default_rng(2)
    raw = rng.random((2, 14, 14)).astype(np.float32) + 1.0  # strictly positive: min-max shift matters
    a, b = M.postprocess(raw, "raw"), M.postprocess(3 * raw, "raw")
    assert np.allclose(M.mu(a), M.mu(b), atol=1e-6)  # scale-invariant
    lib = M.postprocess(raw, "gradcam-lib")
    assert np.all(np.abs(M.mu(lib) - M.mu(a)) > 1e-3)
    with pytest.raises(ValueError, match="post-processing"):
        M.postprocess(raw, "bogus")


def test_dead_mass_and_leak_rate():
    m = np.zeros((3, 224, 224))
    m[0, :170] = 1                       # nothing behind the wall
    m[1, :] = 1                          # uniform
    m[2, 200, 0] = 1                     # everything behind it
    assert M.dead_mass(m).tolist() == pytest.approx([0.0, 54 / 224, 1.0])
    assert M.leaks(m).tolist() == [0.0, 1.0, 1.0]
    assert np.isnan(M.leaks(np.zeros((224, 224)))[0])
    assert M.aggregate(M.leaks(m))["mean"] == pytest.approx(2 / 3)


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    v = np.random.default_rng(3).random(50)
    a, b = M.bootstrap_ci(v, seed=7), M.bootstrap_ci(v, seed=7)
    assert a == b and a[0] < v.mean() < a[1]
    assert M.bootstrap_ci(v, seed=8) != a
