"""The dataset card (README.md of a dataset folder), rendered from cards/dataset_card.md with huggingface_hub.

Its YAML header carries `configs` (data_files) and `dataset_info` (features), so `datasets.load_dataset(folder)`
and the Hub read the folder with its features, class names included.
"""
from __future__ import annotations

import shlex
from pathlib import Path

import datasets
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData

from .. import datafolder as df
from .resources import resource

TEMPLATE = ("cards", "dataset_card.md")

COLUMNS = {
    "id": "stable item id: kind, seed and index",
    "image": "the composed image (PNG unless the recipe says jpeg)",
    "label": "class index in the source's label space (ClassLabel)",
    "class_name": "the class' human name",
    "wall_row": "first row behind the wall in the stored image",
    "seed": "the recipe seed (item i uses streams derived from (seed, i))",
    "top_box": "x0, y0, x1, y1 (exclusive) where the seen object was placed",
    "bottom_box": "x0, y0, x1, y1 (exclusive) where the hidden object was placed (behind the wall)",
    "top_source": "id of the source image above the wall",
    "bottom_source": "id of the source image behind the wall",
    "layout": "`cut`: CutMix rows of two 224 px images; `fit`: the whole second image scaled into the band",
}

DESCRIPTIONS = {
    "stack-mix": "STACK-MIX: each image stacks two images of the same class, CutMix-style: one in the part the "
                 "model sees, one behind the wall.",
    "stack-gen": "STACK-GEN: each image is one generated scene with two objects of the same class, one of them "
                 "behind the wall.",
}


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def command_line(generation: dict) -> str:
    """The `stackbench generate` command that rebuilds the recipe."""
    r = generation["recipe"]
    parts, notes = ["stackbench", "generate", generation["kind"]], []
    for key, value in r.items():
        if value is None or key in ("size", "wall_row", "encoding"):
            continue
        if key == "prompts":  # a template object, not a word: the shipped one is the default, any other a file
            from .stackgen import load_prompts

            if value == load_prompts():
                continue
            notes.append("# prompts.json: the recipe's `prompts` object in generation.json")
            value = "prompts.json"
        if isinstance(value, list):
            value = ",".join(value)
        parts += [f"--{key.replace('_', '-')}", str(value)]
    parts += ["--shard-size", str(generation["shard_size"]), "--out", "DIR"]
    return "\n".join(notes + [shlex.join(parts)])


def render_card(feats: datasets.Features, generation: dict) -> DatasetCard:
    kind, n = generation["kind"], generation["n"]
    synthetic = generation["source"]["kind"] == "shapes"
    data = DatasetCardData(
        license="mit" if synthetic else "other",
        task_categories=["image-classification"],
        tags=["stackbench", kind, "saliency", "explainability", "xai"],
        pretty_name=f"stackbench {kind.upper()}",
        size_categories=[_size_category(n)],
    )
    MetadataConfigs({"default": {"data_files": [{"split": df.SPLIT, "path": f"{df.DATA_DIR}/{df.SPLIT}-*"}]}}
                    ).to_dataset_card_data(data)
    splits = datasets.SplitDict()
    splits.add(datasets.SplitInfo(name=df.SPLIT, num_examples=n))
    info = datasets.DatasetInfo(features=feats, splits=splits)
    DatasetInfosDict({"default": info}).to_dataset_card_data(data)
    license_note = ("The images are procedural (the `shapes` source of stackbench) and released under the MIT "
                    "licence." if synthetic else
                    f"The images derive from `{generation['source']['ref']}`; its terms of use apply (ImageNet: "
                    "non-commercial research and education only).")
    columns = [(k, COLUMNS.get(k, "")) for k in feats]
    return DatasetCard.from_template(
        data, template_path=str(resource(*TEMPLATE)), pretty_name=f"stackbench {kind.upper()}",
        description=DESCRIPTIONS.get(kind, kind), n=n, shards=generation["shards"],
        fingerprint=generation["fingerprint"], recipe=generation["recipe"], source=generation["source"],
        classes_used=generation.get("classes_used", []), num_classes=len(feats["label"].names),
        skipped=generation.get("skipped", []), skipped_classes=generation.get("skipped_classes", []),
        size=generation["recipe"]["size"], wall_row=generation["recipe"]["wall_row"],
        versions=generation["versions"], command=command_line(generation), columns=columns,
        license_note=license_note)


def write_card(folder: str | Path, feats: datasets.Features, generation: dict) -> None:
    card = render_card(feats, generation)
    df.atomic_write_bytes(Path(folder) / "README.md", str(card).encode())
