"""Floats that come out the same on every CPU: the arithmetic the `shapes` pixels are made of.

numpy's exp, sin and cos run SIMD loops whose last bit depends on the CPU (under shapes/2, one ulp of an aspect
ratio moved test item 712 by 907 pixels between AVX-512 and AVX2), BLAS and numpy's norm pick kernels by CPU,
glibc's libm picks FMA variants at run time, and a C compiler may fuse a*b+c into one rounding (ARM). One Python
float operation is one IEEE-754 operation, correctly rounded, on every platform, and so are numpy's element-wise
+, -, *, /, floor and comparisons. The functions here use nothing else: no libm, no BLAS, no numpy
transcendental, so they return the same bits on any CPU, at any SIMD level and thread count.
"""
from __future__ import annotations

import math

import numpy as np

PI = math.pi
_PIO2_HI = 1.5707963267948966  # pi/2 in two parts (Cody-Waite): k * pi/2 is subtracted with little loss
_PIO2_LO = 6.123233995736766e-17
_LN2_HI = 0.6931471805599453
_LN2_LO = 2.3190468138462996e-17
_INV = [1.0 / math.factorial(n) for n in range(22)]  # exact integers, each divided once: the same everywhere


def _poly(r2: float, first: int) -> float:
    """sum_j (-1)^j r2^j / (first + 2j)! by Horner's rule, to the 20th power: the Taylor series on |r| <= pi/4."""
    acc = 0.0
    for n in range(first + 20, first - 1, -2):
        acc = _INV[n] - r2 * acc
    return acc


def _quadrant(x: float) -> tuple[int, float]:
    """(k mod 4, r) with x = k * pi/2 + r and |r| <= pi/4 (to rounding)."""
    k = math.floor(x * (2.0 / PI) + 0.5)
    return k % 4, (x - k * _PIO2_HI) - k * _PIO2_LO


def _sin_r(r: float) -> float:
    return r * _poly(r * r, 1)


def _cos_r(r: float) -> float:
    return _poly(r * r, 0)


def sin(x: float) -> float:
    """sin(x) to about 1e-16 for |x| < 1e6, bit-identical on every CPU."""
    q, r = _quadrant(float(x))
    return (_sin_r, _cos_r, lambda v: -_sin_r(v), lambda v: -_cos_r(v))[q](r)


def cos(x: float) -> float:
    """cos(x), as sin."""
    q, r = _quadrant(float(x))
    return (_cos_r, lambda v: -_sin_r(v), lambda v: -_cos_r(v), _sin_r)[q](r)


def exp(x: float) -> float:
    """exp(x) to about 1e-16 for |x| < 700, bit-identical on every CPU."""
    x = float(x)
    k = math.floor(x * (1.0 / _LN2_HI) + 0.5)
    r = (x - k * _LN2_HI) - k * _LN2_LO  # |r| <= ln(2)/2
    acc = 0.0
    for n in range(17, -1, -1):
        acc = _INV[n] + r * acc
    return math.ldexp(acc, k)  # a power of two: exact


def uniform(rng: np.random.Generator, low: float, high: float, size=None):
    """`rng.uniform(low, high, size)`, with the affine step done here: numpy's C code may fuse it into one FMA
    on a CPU that has them (ARM), here it is two roundings everywhere (and equal to numpy's on x86-64)."""
    u = rng.random(size)
    return float(low) + (float(high) - float(low)) * (float(u) if size is None else u)


_IH = 1.0 / math.sqrt(4 * (256 ** 2 - 1) / 12)  # 1 / std of a sum of four uniform bytes (sqrt: correctly rounded)


def gauss(rng: np.random.Generator, shape) -> np.ndarray:
    """float32 noise of mean 0 and std 1, close to normal: a centred sum of four uniform bytes (Irwin-Hall).
    numpy's normal draws take log and exp from libm on their slow paths; this is integers and one multiply."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    s = rng.integers(0, 256, shape + (4,), dtype=np.uint8).sum(-1, dtype=np.int16) - 510
    return s.astype(np.float32) * np.float32(_IH)
