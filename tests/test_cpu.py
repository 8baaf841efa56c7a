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
