"""Class-labelled image sources: `imagefolder:PATH`, `hf:REPO[:CONFIG]`, `shapes[:N][@SEED]`.

    from stackbench.sources import open_source
    src = open_source("shapes", split="val")
    item = src.load(0)          # SourceItem(image, label, id, converted_from)
"""
from __future__ import annotations

from ..constants import SOURCE_HELP
from ..refs import source_ref
from .base import Skip, Source, SourceItem
from .images import DEFAULT_MIN_SIZE, SkipImage, decode, to_rgb


def open_source(ref: str, split: str | None = None, min_size: int = DEFAULT_MIN_SIZE) -> Source:
    """A source from its reference. `split`: the ImageNet-style sub-folder, the `datasets` split, or the shapes
    split (train/val/test)."""
    parsed = source_ref(ref)
    if parsed.scheme == "imagefolder":
        from .imagefolder import ImageFolderSource

        return ImageFolderSource(parsed.body, split=split, min_size=min_size)
    if parsed.scheme == "hf":
        from .hf import HFSource

        return HFSource(parsed.text, split=split, min_size=min_size)
    from .shapes import DEFAULT_ITEMS, ShapesSource

    return ShapesSource(split=split, seed=parsed.options["seed"], n=parsed.options["n"] or DEFAULT_ITEMS)


__all__ = ["SOURCE_HELP", "DEFAULT_MIN_SIZE", "Skip", "SkipImage", "Source", "SourceItem", "decode",
           "open_source", "to_rgb"]
