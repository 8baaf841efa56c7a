"""`hf:REPO[:CONFIG]`: an image-classification dataset loaded with `datasets` (Hub repo or local folder)."""
from __future__ import annotations

import hashlib

import numpy as np

from ..errors import StackbenchError, first_line
from ..refs import source_ref
from .base import Source, SourceItem
from .images import DEFAULT_MIN_SIZE, decode

PREFERRED_SPLITS = ("validation", "val", "test", "train")


def _fail(ref: str, e: Exception, what: str) -> StackbenchError:
    return StackbenchError(f"{ref}: could not {what} ({first_line(e)}); check the repo id or path, "
                           "the config name, network access and `huggingface-cli login` for gated sets")


class HFSource(Source):
    kind = "hf"

    def __init__(self, ref: str, split: str | None = None, min_size: int = DEFAULT_MIN_SIZE):
        import datasets

        self.ref, self.min_size = ref if ref.startswith("hf:") else f"hf:{ref}", min_size
        parsed = source_ref(self.ref)
        self.repo, self.config = parsed.body, parsed.options["config"]
        if split is None:
            try:
                names = datasets.get_dataset_split_names(self.repo, self.config)
            except Exception as e:  # noqa: BLE001 - any failure to reach the set gets the same advice
                raise _fail(self.ref, e, "list the splits") from None
            split = next((s for s in PREFERRED_SPLITS if s in names), names[0])
        self.split = split
        try:
            ds = datasets.load_dataset(self.repo, self.config, split=split)
        except ValueError as e:
            if "split" in str(e).lower():
                raise StackbenchError(f"{self.ref} has no split {split!r}; give --split with one of its splits "
                                      "(e.g. validation, train)") from None
            raise _fail(self.ref, e, "load the dataset") from None
        except Exception as e:  # noqa: BLE001
            raise _fail(self.ref, e, "load the dataset") from None
        image_cols = [k for k, f in ds.features.items() if isinstance(f, datasets.Image)]
        label_cols = [k for k, f in ds.features.items() if isinstance(f, datasets.ClassLabel)]
        if not image_cols or not label_cols:
            raise StackbenchError(f"{self.ref} (split {split}) needs an Image and a ClassLabel column; it has "
                                  f"{dict((k, type(f).__name__) for k, f in ds.features.items())}")
        self.image_col, self.label_col = image_cols[0], label_cols[0]
        self.class_names = list(ds.features[self.label_col].names)
        self._labels = np.asarray(ds.select_columns([self.label_col]).with_format("numpy")[self.label_col],
                                  dtype=np.int64)
        # Decode ourselves (robust loader, skip reasons) rather than letting `datasets` raise mid-run.
        self._ds = ds.select_columns([self.image_col]).cast_column(self.image_col, datasets.Image(decode=False))
        self._fingerprint = "sha256:" + hashlib.sha256(
            f"{self.repo}\n{self.config}\n{split}\n{ds._fingerprint}\n{len(ds)}".encode()).hexdigest()

    def __len__(self) -> int:
        return len(self._labels)

    def labels(self) -> np.ndarray:
        return self._labels

    def item_id(self, i: int) -> str:
        return f"{self.repo}/{self.split}/{i}"

    def load(self, i: int) -> SourceItem:
        value = self._ds[int(i)][self.image_col]
        name = self.item_id(i)
        data = value.get("bytes") or value.get("path") or b""
        d = decode(data, name, self.min_size)
        return SourceItem(d.image, int(self._labels[i]), name, d.converted_from)

    def fingerprint(self) -> str:
        return self._fingerprint
