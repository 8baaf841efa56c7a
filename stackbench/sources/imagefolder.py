"""`imagefolder:PATH`: one folder per class (ImageNet train/val layout, or any class-per-folder tree)."""
from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import StackbenchError
from .base import Skip, Source, SourceItem
from .images import DEFAULT_MIN_SIZE, IMAGE_EXTENSIONS, decode

SYNSET = re.compile(r"^n\d{8}$")
IMAGENET_CLASSES = 1000


def imagenet_names() -> list[str]:
    """The 1000 ImageNet category names in sorted-synset order (torchvision's list; offline)."""
    from torchvision.models import VGG16_Weights

    return list(VGG16_Weights.IMAGENET1K_V1.meta["categories"])


def class_names_for(folders: list[str]) -> tuple[list[str], str]:
    """Human names for the class folders, and how they were found."""
    if len(folders) == IMAGENET_CLASSES and all(SYNSET.match(f) for f in folders):
        names = imagenet_names()
        # ClassLabel names must be unique; ImageNet has two 'crane's and two 'maillot's.
        dup = {n for n, c in Counter(names).items() if c > 1}
        return [f"{n} ({s})" if n in dup else n for n, s in zip(names, folders, strict=True)], "imagenet-synsets"
    return list(folders), "folder-names"


class ImageFolderSource(Source):
    kind = "imagefolder"

    def __init__(self, path: str | os.PathLike, split: str | None = None, min_size: int = DEFAULT_MIN_SIZE):
        root = Path(path).expanduser()
        if split and root.is_dir():
            if not (root / split).is_dir():
                raise StackbenchError(f"imagefolder:{path} has no '{split}' folder; name an existing sub-folder "
                                      "as the split (e.g. train, val) or point at the class folders directly")
            root = root / split
        if not root.is_dir():
            raise StackbenchError(f"imagefolder:{path} does not exist or is not a folder; give a folder with one "
                                  "sub-folder per class (e.g. ImageNet's val/n01440764/...)")
        self.root, self.ref, self.split, self.min_size = root, f"imagefolder:{path}", split, min_size
        folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        if not folders:
            raise StackbenchError(f"imagefolder:{path} has no class folders; it needs one sub-folder per class")
        self.folders = folders
        self.class_names, self.naming = class_names_for(folders)
        self._files: list[tuple[str, int]] = []  # (path relative to root, size)
        labels: list[int] = []
        self._listing_skips: list[Skip] = []
        for label, folder in enumerate(folders):
            for e in sorted(os.scandir(root / folder), key=lambda e: e.name):
                if e.name.startswith(".") or not e.is_file():
                    continue
                rel = f"{folder}/{e.name}"
                if os.path.splitext(e.name)[1].lower() not in IMAGE_EXTENSIONS:
                    self._listing_skips.append(Skip(rel, f"not an image file (extension "
                                                         f"'{os.path.splitext(e.name)[1] or 'none'}')"))
                    continue
                self._files.append((rel, e.stat().st_size))
                labels.append(label)
        self._labels = np.asarray(labels, dtype=np.int64)
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self._files)

    def labels(self) -> np.ndarray:
        return self._labels

    def item_id(self, i: int) -> str:
        return self._files[i][0]

    def load(self, i: int) -> SourceItem:
        rel = self._files[i][0]
        d = decode(self.root / rel, rel, self.min_size)
        return SourceItem(d.image, int(self._labels[i]), rel, d.converted_from)

    @property
    def listing_skips(self) -> list[Skip]:
        return list(self._listing_skips)

    def fingerprint(self) -> str:
        """sha256 of the class folders and every file's relative path and size (hashing the bytes of
        ImageNet would take longer than the generation)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for f in self.folders:
                h.update(f"class {f}\n".encode())
            for rel, size in self._files:
                h.update(f"{rel}\t{size}\n".encode())
            for s in self._listing_skips:
                h.update(f"skip {s.path}\n".encode())
            self._fingerprint = "sha256:" + h.hexdigest()
        return self._fingerprint

    def describe(self) -> dict:
        return {**super().describe(), "class_naming": self.naming}
