"""Pixels and board rows that do not depend on the CPU: what this machine computes is re-computed under every lower
kernel level it can emulate (numpy's dispatch, torch's own loops, oneDNN, MKL, OpenCV; stackbench.cpu), and must
come out the same (pixels, fingerprints) or within the recorded tolerances (board rows)."""
from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys

import pytest

from stackbench import cpu
from stackbench.sources import exact

# Renders shapes items of both splits and the two mini presets, and says what it loaded on the way.
RENDER = r"""
import hashlib, json, sys, tempfile
from stackbench.datafolder import fingerprint
from stackbench.generate.build import build_dataset
from stackbench.sources import shapes

n = int(sys.argv[1])
items = hashlib.sha256()
for split in ("test", "train"):
    for i in range(n):
        img, label, _ = shapes.item(0, i, split)
        items.update(img.tobytes())
out = {"items": items.hexdigest()}
with tempfile.TemporaryDirectory() as tmp:
    for kind in ("stack-mix", "stack-gen"):
        out[kind] = fingerprint(build_dataset(kind, f"{tmp}/{kind}", preset="mini"))
out["opencv"] = "cv2" in sys.modules
print(json.dumps(out))
"""


def _run(code: str, level: str, *args: str) -> dict:
    env = {**os.environ, **cpu.kernel_env(level)}
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_pixels_are_the_same_under_every_kernel_level():
    """200 items of each shapes split (shapes/2 moved test items 145 and 162 under AVX-512) and both mini presets
    (its mini STACK-MIX moved through test item 712): the same digests at every level. Under shapes/2 this failed on
    an AVX-512 machine; on an AVX2 machine it compares AVX2/FMA against the baseline."""
    levels = ["native", *cpu.lower_levels()]
    got = {level: _run(RENDER, level, "200") for level in levels}
    native = got["native"]
    assert not native["opencv"], "OpenCV is on the rendering path: add its optimisations-off run to this test"
    for level in levels[1:]:
        assert got[level] == native, f"{level} kernels render other pixels than {cpu.machine_level()}: {got}"


def _bits(x: float) -> str:
    return struct.pack("<d", x).hex()


def test_exact_functions_are_accurate_and_pinned_to_the_bit():
    xs = [i * 0.01 - 7.0 for i in range(1400)]
    assert max(abs(exact.sin(x) - math.sin(x)) for x in xs) < 2e-15
    assert max(abs(exact.cos(x) - math.cos(x)) for x in xs) < 2e-15
    assert max(abs(exact.exp(x * 0.05) - math.exp(x * 0.05)) / math.exp(x * 0.05) for x in xs) < 1e-15
    # IEEE operations only: these bits are the same on every platform (a libm or numpy call here would not be)
    assert [_bits(f(0.7)) for f in (exact.sin, exact.cos, exact.exp)] == PINNED_BITS


PINNED_BITS = ["b81946696e9de43f", "939d9f529679e83f", "878926612a1c0040"]


def test_uniform_is_numpys_draw_and_gauss_is_standard():
    import numpy as np

    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert [exact.uniform(a, -0.22, 0.22) for _ in range(100)] == [b.uniform(-0.22, 0.22) for _ in range(100)] \
        or cpu.machine_level() == "native"  # numpy may fuse the affine step on ARM; ours never does
    g = exact.gauss(np.random.default_rng(0), (256, 256))
    assert g.dtype == np.float32 and abs(float(g.mean())) < 0.02 and abs(float(g.std()) - 1) < 0.01


@pytest.mark.parametrize("level", ["sideways"])
def test_an_unknown_level_is_refused(level):
    with pytest.raises(ValueError, match="unknown kernel level"):
        cpu.kernel_env(level)


VERIFY = r"""
import json, sys
from stackbench import leaderboard as lb
verdicts = lb.verify("small", store=sys.argv[1], device="cpu", progress=False)
print(json.dumps({v.row: [v.status, v.message] for v in verdicts}))
"""


def test_rows_reproduce_one_kernel_level_down(tmp_path):
    """GradCAM and Opti-CAM rows (Opti-CAM's 50 optimisation steps amplify round-off) made here re-run under the
    next lower kernel level (numpy, torch, oneDNN, MKL, OpenCV switched down) and are `reproduced`: every metric
    within the tolerance its record states."""
    from stackbench import leaderboard as lb
    from stackbench.generate.build import build_dataset
    from stackbench.methods import get_method_class

    store = tmp_path / "board"
    store.mkdir()
    datasets = {}
    for kind in ("stack-mix", "stack-gen"):
        folder = build_dataset(kind, tmp_path / kind, preset="mini", **({"per_class": 1} if kind == "stack-mix"
                                                                          else {"num_images": 6}))
        datasets[kind] = {"path": str(folder)}
    (store / "tracks.json").write_text(json.dumps({"tracks": {"small": {
        "description": "the mini track's model on a few images", "model": "minivgg-masked", "datasets": datasets,
        "batch_size": 8}}}))
    for method in ("GradCAM", "Opti-CAM"):
        lb.submit(method, "small", store=store, progress=False, device="cpu")
    level = cpu.lower_levels()[0]
    got = _run(VERIFY, level, str(store))
    assert len(got) == 4 and all(status == "reproduced" for status, _ in got.values()), (level, got)
    opti = next(msg for row, (_, msg) in got.items() if row.endswith("Opti-CAM") and "/stack-mix/" in row)
    spread = get_method_class("Opti-CAM").rerun_spread["mu"]
    assert f"mu {4 * spread / math.sqrt(10):.2g}" in opti, opti  # 4 x its measured spread over sqrt(10 images)
    record = json.loads(next(store.glob("results/small/stack-mix/*/Opti-CAM.json")).read_text())
    assert record["tolerances"]["mu"] == 4 * spread / math.sqrt(10) and cpu.machine_level() in record["env"]["cpu"]


def test_tolerances_follow_the_measured_spread_and_a_plugin_cannot_loosen_them_past_the_cap():
    from stackbench.methods import get_method_class
    from stackbench.metrics import METRICS, rerun_tolerances

    plain = rerun_tolerances(get_method_class("GradCAM").rerun_spread, 100)
    assert plain == {k: m.rerun_atol for k, m in METRICS.items()}
    spread = get_method_class("Opti-CAM").rerun_spread
    opti = rerun_tolerances(spread, 100)
    assert opti["mu"] == 4 * spread["mu"] / 10 and opti["leak_rate"] == plain["leak_rate"]
    assert rerun_tolerances(spread, 9)["mu"] == 4 * spread["mu"] / 3  # fewer images: a mean moves more
    greedy = rerun_tolerances({"mu": 1e9, "deletion_auc": float("inf"), "rand_corr": "all", "dead_mass": True}, 1)
    assert greedy["mu"] == METRICS["mu"].rerun_atol_max and greedy["deletion_auc"] == plain["deletion_auc"]
    assert greedy["rand_corr"] == plain["rand_corr"] and greedy["dead_mass"] == plain["dead_mass"]
