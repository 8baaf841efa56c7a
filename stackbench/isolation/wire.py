"""What a worker sends back, in a form the harness reads without running any of the worker's code: a JSON header
and, for maps, the raw bytes of one float array. (Unpickling a reply would let a method run code in the harness.)"""
from __future__ import annotations

import json
import struct

import numpy as np

FLOATS = ("float16", "float32", "float64")
HEADER = struct.Struct("<I")


class BadReply(Exception):
    """The worker's reply is not one the protocol allows."""


def encode(header: dict, array: np.ndarray | None = None) -> bytes:
    if array is not None:
        array = np.ascontiguousarray(array)
        header = {**header, "dtype": array.dtype.name, "shape": list(array.shape)}
    head = json.dumps(header).encode()
    return HEADER.pack(len(head)) + head + (array.tobytes() if array is not None else b"")


def decode(data: bytes) -> tuple[dict, np.ndarray | None]:
    """(header, array or None); BadReply for anything else."""
    try:
        (n,) = HEADER.unpack_from(data)
        header = json.loads(data[HEADER.size:HEADER.size + n])
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise BadReply(f"an unreadable reply ({type(e).__name__})") from None
    if not isinstance(header, dict) or not isinstance(header.get("kind"), str):
        raise BadReply("a reply without a kind")
    body = data[HEADER.size + n:]
    if "dtype" not in header:
        if body:
            raise BadReply("a reply with bytes but no array header")
        return header, None
    dtype, shape = header.get("dtype"), header.get("shape")
    if dtype not in FLOATS or not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
        raise BadReply(f"an array reply of dtype {str(dtype)[:20]!r}, shape {str(shape)[:40]}")
    if int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize != len(body):
        raise BadReply("an array reply whose bytes do not match its shape")
    return header, np.frombuffer(body, dtype=dtype).reshape(shape).copy()


# ---- tensors through shared memory: one flat buffer, one file descriptor, whatever the number of tensors

ALIGN = 64


def layout_of(tensors: dict, start: int = 0) -> tuple[list, int]:
    """[(key, offset, dtype name, shape)] for the tensors of `tensors` (None skipped), laid out from `start` (a
    multiple of ALIGN), and the end of the last: the bytes they need from 0."""
    out, offset = [], start
    for key, t in tensors.items():
        if t is None:
            continue
        out.append((key, offset, str(t.dtype).removeprefix("torch."), tuple(t.shape)))
        offset += -(-t.numel() * t.element_size() // ALIGN) * ALIGN
    return out, offset


def shared_buffer(nbytes: int, device):
    """A flat uint8 buffer another process can map (CPU: shared memory; CUDA: an IPC handle); its bytes are whatever
    the caller copies in (a model's whole reference, padding included; a batch's tensors)."""
    import torch

    buf = torch.empty(max(nbytes, ALIGN), dtype=torch.uint8, device=device)
    return buf.share_memory_() if buf.device.type == "cpu" else buf


def put(buffer, tensors: dict, layout: list) -> None:
    for key, offset, dtype, shape in layout:
        view(buffer, offset, dtype, shape).copy_(tensors[key])


def view(buffer, offset: int, dtype: str, shape):
    """The tensor of `dtype` (a torch dtype's name) and `shape` at `offset` of a flat uint8 buffer."""
    import torch

    dt = getattr(torch, dtype)
    n = 1
    for s in shape:
        n *= s
    return buffer[offset:offset + n * dt.itemsize].view(dt).view(tuple(shape))
