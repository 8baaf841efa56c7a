"""The CPU's kernel levels, and the switches that make this machine compute as a lesser CPU would.

numpy, torch (its own loops, oneDNN's convolutions, MKL's matrix products) and OpenCV each pick SIMD kernels by
CPU at run time, and their last bits can differ between levels. Anything stackbench pins (pixels, fingerprints,
board numbers) must not move between them, and tests see that on any machine by re-running under each level this
machine has (`kernel_env`). Ground floor: imports nothing of stackbench.
"""
from __future__ import annotations

import platform

LEVELS = ("avx512", "avx2", "baseline")  # x86-64, best first; elsewhere (ARM) only "native" and "baseline"

# Each library's name for the highest kernel set allowed at a level.
_TORCH = {"avx512": "avx512", "avx2": "avx2", "baseline": "default"}
_ONEDNN = {"avx512": "AVX512_CORE", "avx2": "AVX2", "baseline": "SSE41"}
_MKL = {"avx512": "AVX512", "avx2": "AVX2", "baseline": "SSE4_2"}
# OpenCV's run-time dispatched features above each level (its wheels' baseline is SSE3).
_OPENCV = {"avx2": "AVX512-SKX,AVX512-CLX,AVX512-CNL,AVX512-ICL",
           "baseline": "SSE4.1,SSE4.2,AVX,FP16,AVX2,AVX_VNNI,AVX512-SKX,AVX512-CLX,AVX512-CNL,AVX512-ICL"}


def _numpy_features() -> tuple[list[str], dict]:
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    return list(__cpu_dispatch__), dict(__cpu_features__)


def _numpy_rank(target: str) -> int:
    """2 for numpy's AVX-512 dispatch targets, 1 for AVX2/FMA ones, 0 for anything else (ARM's included)."""
    t = target.upper()
    if "AVX512" in t or t == "X86_V4":
        return 2
    return 1 if t in ("X86_V3", "AVX2", "FMA3", "AVX", "F16C") else 0


def _x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def machine_level() -> str:
    """This CPU's level: avx512, avx2 or baseline on x86-64 (as numpy sees it); native elsewhere."""
    if not _x86():
        return "native"
    _, have = _numpy_features()
    if have.get("AVX512F") and have.get("AVX512_SKX", have.get("X86_V4")):
        return "avx512"
    return "avx2" if have.get("AVX2") and have.get("FMA3") else "baseline"


def lower_levels() -> list[str]:
    """The levels this machine can emulate below its own, nearest first."""
    level = machine_level()
    if level == "native":
        return ["baseline"]
    return list(LEVELS[LEVELS.index(level) + 1:])


def kernel_env(level: str) -> dict[str, str]:
    """Environment variables that make numpy, torch, oneDNN, MKL and OpenCV use no kernel above `level` (set them
    before the process starts: the libraries read them once). "native" is the machine as it is."""
    if level == "native" or level == machine_level():
        return {}
    if level not in LEVELS:
        raise ValueError(f"unknown kernel level {level!r}; expected native or one of {', '.join(LEVELS)}")
    targets, _ = _numpy_features()
    keep = {"avx512": 2, "avx2": 1, "baseline": -1}[level]  # the highest numpy rank left on (baseline: none)
    off = [t for t in targets if _numpy_rank(t) > keep]
    env = {"NPY_DISABLE_CPU_FEATURES": " ".join(off)} if off else {}
    if _x86():
        env.update(ATEN_CPU_CAPABILITY=_TORCH[level], ONEDNN_MAX_CPU_ISA=_ONEDNN[level],
                   MKL_ENABLE_INSTRUCTIONS=_MKL[level], OPENCV_CPU_DISABLE=_OPENCV.get(level, ""))
    return env


def describe() -> str:
    """One line naming the kernels in use, for records: 'x86_64 avx512 (torch AVX512, numpy X86_V4...)'."""
    targets, have = _numpy_features()
    on = [t for t in targets if have.get(t)]
    try:
        import torch

        cap = torch.backends.cpu.get_cpu_capability()
    except ImportError:
        cap = "no torch"
    return f"{platform.machine()} {machine_level()} (torch {cap}, numpy {' '.join(on) or 'baseline'})"
