"""Class-labelled image sources: `imagefolder:PATH`, `hf:REPO[:CONFIG]`, `shapes[:N][@SEED]`.

    from stackbench.sources import open_source
    src = open_source("shapes", split="val")
    item = src.load(0)          # SourceItem(image, label, id, converted_from)
"""
from __future__ import annotations

import re

from ..constants import SOURCE_HELP  # noqa: F401  (defined light: --help shows it)
from ..errors import StackbenchError
from .base import Skip, Source, SourceItem
from .images import DEFAULT_MIN_SIZE, SkipImage, decode, to_rgb

_SHAPES = re.compile(r"^shapes(?::(\d+))?(?:@(\d+))?$")


def open_source(ref: str, split: str | None = None, min_size: int = DEFAULT_MIN_SIZE) -> Source:
    """A source from its reference. `split`: the ImageNet-style sub-folder, the `datasets` split, or the shapes
    split (train/val/test)."""
    ref = (ref or "").strip()
    if ref.startswith("imagefolder:"):
        from .imagefolder import ImageFolderSource

        return ImageFolderSource(ref[len("imagefolder:"):], split=split, min_size=min_size)
    if ref.startswith("hf:"):
        from .hf import HFSource

        return HFSource(ref, split=split, min_size=min_size)
    m = _SHAPES.match(ref)
    if m:
        from .shapes import DEFAULT_ITEMS, ShapesSource

        return ShapesSource(split=split, seed=int(m.group(2) or 0), n=int(m.group(1) or DEFAULT_ITEMS))
    raise StackbenchError(f"unknown source {ref!r}; give {SOURCE_HELP}")


__all__ = ["SOURCE_HELP", "DEFAULT_MIN_SIZE", "Skip", "SkipImage", "Source", "SourceItem", "decode",
           "open_source", "to_rgb"]
