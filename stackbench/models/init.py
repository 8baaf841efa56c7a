"""Building a model whose weights a checkpoint is about to replace, without initialising them first.

Random initialisation of VGG16's 138M parameters took longer than reading them (about 5 s of a 7 s load on a
2-core CPU). Inside `weights_to_come()`, torch.nn.init's functions leave tensors as they are, for the calling
thread only: another thread building a model meanwhile still gets its initialisation. The loader then replaces
every persistent tensor (`load_state_dict(strict=True)`); non-persistent buffers (the walls) are built from the
config, never by torch.nn.init, so they are untouched by this.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

from torch import nn

_lock = threading.Lock()
_threads: dict[int, int] = {}  # thread id -> nesting depth inside weights_to_come
_saved: dict = {}


def _skipping(original):
    def init(tensor, *args, **kwargs):
        if threading.get_ident() in _threads:
            return tensor
        return original(tensor, *args, **kwargs)
    init.__wrapped__ = original
    return init


@contextmanager
def weights_to_come():
    """torch.nn.init does nothing in this thread meanwhile: build the model, then load every tensor into it."""
    me = threading.get_ident()
    with _lock:
        if not _threads:
            names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
            _saved.update({n: getattr(nn.init, n) for n in names})
            for n, f in _saved.items():
                setattr(nn.init, n, _skipping(f))
        _threads[me] = _threads.get(me, 0) + 1
    try:
        yield
    finally:
        with _lock:
            _threads[me] -= 1
            if not _threads[me]:
                del _threads[me]
            if not _threads:
                for n, f in _saved.items():
                    setattr(nn.init, n, f)
                _saved.clear()
