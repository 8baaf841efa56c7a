"""`--device`: what `auto` means and how a device name is checked, in one place for every command."""
from __future__ import annotations

from .errors import StackbenchError


def pick_device(device: str):
    """A torch.device for auto (cuda if present, else cpu), cpu, cuda, cuda:N, mps or xpu; one clear error
    otherwise. torch is imported here, not at the top: `stackbench --help` must stay fast."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise StackbenchError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise StackbenchError(f"--device {device}: CUDA is not available here; use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise StackbenchError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda", "mps", "xpu") or (dev.type == "cpu" and dev.index not in (None, 0)):
        raise StackbenchError(f"--device {device}: unsupported device; use auto, cpu, cuda or cuda:N")
    backend = getattr(torch.backends, "mps", None) if dev.type == "mps" else getattr(torch, "xpu", None)
    if dev.type in ("mps", "xpu") and not (backend is not None and backend.is_available()):
        raise StackbenchError(f"--device {device}: {dev.type} is not available here; use --device cpu or auto")
    return dev
