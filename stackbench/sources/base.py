"""The source interface: a finite, indexed collection of class-labelled images.

A source knows its class names, the label of every item without decoding it (so a builder can pick same-class
pairs cheaply), a stable id per item, and decodes item i on request (or raises SkipImage).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .images import DEFAULT_MIN_SIZE


@dataclass
class SourceItem:
    image: Image.Image  # RGB
    label: int
    id: str  # stable across runs: a relative path, REPO/split/index, or the shapes seed stream and index
    converted_from: str | None = None
    #: Where the object is: an 'L' image of the image's size, nonzero exactly on the object's pixels, where the
    #: source knows it (procedural sources); None for photos, whose object nobody has outlined.
    object_mask: Image.Image | None = None


@dataclass(frozen=True)
class Skip:
    path: str
    reason: str


class Source(ABC):
    """Subclasses set `kind`, `ref`, `split`, `class_names` and implement the abstract methods."""

    kind: str = ""
    ref: str = ""
    split: str | None = None
    class_names: list[str]
    min_size: int = DEFAULT_MIN_SIZE
    #: True when every item decodes (procedural sources): builders need not probe for bad files.
    always_usable: bool = False

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def labels(self) -> np.ndarray:
        """int64 label of every item, without decoding images."""

    @abstractmethod
    def item_id(self, i: int) -> str: ...

    @abstractmethod
    def load(self, i: int) -> SourceItem:
        """Decode item i as RGB, or raise SkipImage(path, reason)."""

    @abstractmethod
    def fingerprint(self) -> str:
        """Identity of the source's content, recorded in generation.json and checked on resume."""

    @property
    def listing_skips(self) -> list[Skip]:
        """Files dropped while listing the source (e.g. non-image files in a class folder)."""
        return []

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> dict:
        return {"kind": self.kind, "ref": self.ref, "split": self.split, "n_items": len(self),
                "n_classes": self.num_classes, "fingerprint": self.fingerprint()}
