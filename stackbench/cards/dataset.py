"""The dataset card (README.md of a dataset folder): YAML built with huggingface_hub's DatasetCardData, body
rendered from cards/dataset_card.md.

Its YAML header carries `configs` (data_files) and `dataset_info` (features and real sizes), so
`datasets.load_dataset(folder)` and the Hub read the folder with its features, class names included. Every value
the body shows is formatted here (no Python reprs reach the Markdown), and every column gets a meaning that says
what its value is for this set's kind and generator.
"""
from __future__ import annotations

import shlex
from pathlib import Path

import datasets
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData

from .. import datafolder as df
from ..errors import StackbenchError
from ..resources import resource
from .common import citation, hub_dataset_id, is_imagenet, save_card, source_licence

TEMPLATE = ("cards", "dataset_card.md")

DESCRIPTIONS = {
    "stack-mix": "STACK-MIX: each image stacks two images of the same class: one in the part the model sees, one "
                 "behind the wall.",
    "stack-gen": "STACK-GEN: each image is one generated scene with two objects of the same class, one of them "
                 "behind the wall.",
}


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def _shipped_prompts() -> dict:
    """The default STACK-GEN prompt template, as shipped (generation/stack-gen/prompts/default.json)."""
    import json

    return json.loads(resource("generation", "stack-gen", "prompts", "default.json").read_text())


def command_line(generation: dict) -> str:
    """The `stackbench generate` command that rebuilds the recipe."""
    r = generation["recipe"]
    parts, notes = ["stackbench", "generate", generation["kind"]], []
    for key, value in r.items():
        if value is None or key in ("size", "wall_row", "encoding"):
            continue
        if key == "prompts":  # a template object, not a word: the shipped one is the default, any other a file
            if value == _shipped_prompts():
                continue
            notes.append("# prompts.json: the recipe's `prompts` object in generation.json")
            value = "prompts.json"
        if isinstance(value, list):
            value = ",".join(value)
        parts += [f"--{key.replace('_', '-')}", str(value)]
    parts += ["--shard-size", str(generation["shard_size"]), "--out", "DIR"]
    return "\n".join(notes + [shlex.join(parts)])


# --- what the body shows ----------------------------------------------------------------------------------

def _text(value) -> str:
    """A recipe value as Markdown text: lists joined, numbers and words as they are."""
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def recipe_lines(recipe: dict) -> list[str]:
    """The recipe as Markdown list lines: unset values left out, a dict (the prompts) as a nested list."""
    lines = []
    for key, value in recipe.items():
        if value is None:
            continue
        if isinstance(value, dict):
            lines.append(f"- `{key}`:")
            lines += [f"  - `{k}`: {_text(v)}" for k, v in value.items() if v is not None]
        else:
            lines.append(f"- `{key}`: `{_text(value)}`")
    return lines


def source_line(source: dict) -> str:
    details = [f"{k} `{_text(v)}`" for k, v in source.items() if k != "ref" and v is not None]
    return f"`{source['ref']}`" + (f" ({', '.join(details)})" if details else "")


def _box_meanings(generation: dict) -> dict[str, str]:
    """What top_box / bottom_box are, for this kind and generator (x0, y0, x1, y1; x1, y1 exclusive)."""
    r, exclusive = generation["recipe"], "x0, y0, x1, y1 in stored pixels (x1, y1 exclusive)"
    if generation["kind"] == "stack-mix" and generation["source"].get("kind") == "shapes":
        exact = (f"{exclusive}: the smallest box holding every pixel of the {{}} object that lands {{}} (its mask, "
                 "resized and cropped as the image is); null when none of it does")
        return {"top_box": exact.format("seen", "above the wall"),
                "bottom_box": exact.format("hidden", "in the band behind the wall (y0 >= wall_row)")}
    if generation["kind"] == "stack-mix":
        bottom = ("the band behind the wall, where rows {w}..{e} of the second photo (resized and centre-cropped to "
                  "{s} px) were placed; it may show only part of that photo's object" if r.get("layout") == "cut" else
                  "where the whole second photo, scaled to fit, sits inside the band behind the wall (the rest of the "
                  "band is its mean colour)").format(w=r["wall_row"], e=r["size"] - 1, s=r["size"])
        return {"top_box": f"{exclusive}: the region the seen photo fills (resized and centre-cropped); the box bounds "
                           "the placed photo, not its object",
                "bottom_box": f"{exclusive}: {bottom}; the box bounds the placed photo, not its object"}
    if r.get("generator") == "shapes":
        scaled = (f" (drawn at {r['gen_size']} px, scaled and rounded outward)"
                  if r.get("gen_size") and r["gen_size"] != r["size"] else "")
        exact = f"{exclusive}: the smallest box holding every pixel of the {{}} object's mask{scaled}"
        return {"top_box": exact.format("seen"),
                "bottom_box": exact.format("hidden") + "; it lies wholly behind the wall (y0 >= wall_row)"}
    return {"top_box": f"{exclusive} of the region the seen object's prompt was confined to (regional "
                       "cross-attention): where the model was asked to draw it, not a detected box",
            "bottom_box": f"{exclusive} of the region behind the wall the hidden object's prompt was confined to "
                          "(it starts at the wall row): where the model was asked to draw it, not a detected box"}


def column_meanings(generation: dict) -> dict[str, str]:
    """Every column this kind can have -> its meaning in this set."""
    r, src = generation["recipe"], generation["source"]
    fmt = "PNG (lossless)" if r.get("format", "png") == "png" else "JPEG"
    verify = r.get("verify_model")
    crop = f"zero-shot probability that CLIP (`{verify}`) gives the item's class on the crop of the {{}} object's slot"
    return {
        "id": f"stable item id: `{generation['kind']}-<seed>-<index>`",
        "image": f"the {r['size']}x{r['size']} px image, {fmt}",
        "label": f"class index in the label space of `{src['ref']}` (ClassLabel; names in the YAML header)",
        "class_name": "the label's human name",
        "wall_row": f"first row behind the wall in the stored image ({r['wall_row']}): rows {r['wall_row']}.."
                    f"{r['size'] - 1} cannot change any logit of a walled model",
        "seed": "the recipe seed: item i draws from random streams seeded by (seed, i)",
        **_box_meanings(generation),
        "top_source": f"id of the source image placed above the wall (an item id of `{src['ref']}`)",
        "bottom_source": f"id of the source image placed behind the wall (an item id of `{src['ref']}`)",
        "layout": "`cut`: CutMix rows of two full-size images; `fit`: the whole second image scaled into the band",
        "prompt_top": "the prompt of the seen object's region",
        "prompt_bottom": "the prompt of the hidden object's region, behind the wall",
        "prompt_scene": "the prompt of every other pixel",
        "negative_prompt": "the prompt of classifier-free guidance's unconditional branch",
        "generator": ("the renderer: the version of stackbench's `shapes` scenes" if r.get("generator") == "shapes"
                      else "the checkpoint that generated the scene (`id@revision` for a Hub checkpoint)"),
        "steps": "denoising steps of the sampler",
        "guidance": "classifier-free guidance scale",
        "verify_top": crop.format("seen"),
        "verify_bottom": crop.format("hidden"),
    }


def creation_text(generation: dict) -> str:
    """How the items were made, in words that match the recipe that ran."""
    r, src = generation["recipe"], generation["source"]
    if generation["kind"] == "stack-mix":
        how = ("rows 0..{w1} come from the first image and rows {w}..{e} from the second, both resized and "
               "centre-cropped to {s} px (the paper's CutMix stacking)" if r.get("layout") == "cut" else
               "the first image fills the seen part; the whole second image is scaled into the band behind the wall, "
               "centred on its mean colour").format(w1=r["wall_row"] - 1, w=r["wall_row"], e=r["size"] - 1, s=r["size"])
        return (f"Each item takes two different images of one class from `{src['ref']}`"
                f"{' (split `' + str(r['split']) + '`)' if r.get('split') else ''}: item i of class slot c uses the "
                f"(i // classes)-th pair of a seeded permutation of that class' images; {how}.")
    if r.get("generator") == "shapes":
        return (f"Each item is one scene drawn by stackbench's `shapes` renderer ({src.get('version', 'shapes')}): a "
                "cluttered background, one object of the class in the seen part and a second one inside the band "
                "behind the wall (its drop shadow clipped to the band, so nothing of it shows above the wall), then "
                "sensor noise over the whole scene. No diffusion model, prompt or sampler is involved.")
    verified = (f" Each item was scored by CLIP (`{r['verify_model']}`) on both object regions"
                + (f"; items under {r['min_verify']} were regenerated from new seeds (at most {r['max_attempts']} "
                   "attempts) and dropped after that" if r.get("min_verify") is not None else "") + "."
                if r.get("verify_model") else " The objects were not checked by a classifier.")
    return (f"Each item is one scene generated by `{src['ref']}` with regional prompts ({r.get('steps')} denoising "
            f"steps, guidance {r.get('guidance')}): the seen object's prompt confined to a box above the wall, the "
            f"hidden object's to the band behind it, a scene prompt elsewhere; initial noise drawn on the CPU from the "
            f"item's seed.{verified}")


def limitations(generation: dict) -> list[str]:
    r, src = generation["recipe"], generation["source"]
    out = [f"The wall holds for the benchmark's walled models fed the stored {r['size']} px images as they are; a "
           "resize or crop before the model moves the rows it cannot see.",
           "Both objects share the class, so class evidence exists behind the wall: saliency mass there is what the "
           "benchmark measures, not a flaw of the set."]
    if generation["kind"] == "stack-mix":
        out.append("`cut` leaves a seam at the wall row, and the band shows only the bottom rows of the second photo, "
                   "often background rather than its object." if r.get("layout") == "cut" else
                   "`fit` shrinks the second photo into a letterboxed band: it is smaller and flatter than the seen "
                   "one.")
    elif r.get("generator") != "shapes":
        out.append("Generated objects can be missing, doubled or malformed; the boxes are prompt regions, not "
                   "detections" + ("." if r.get("min_verify") is not None else ", and no classifier filtered them."))
    if src.get("kind") == "shapes" or r.get("generator") == "shapes":
        out.append("Procedural shapes are not natural images: the mini track checks a method's mechanics cheaply; "
                   "the paper's numbers come from ImageNet-scale sets.")
    out.append(f"{generation['n']} images: compare methods with confidence intervals (stackbench's result records "
               "carry ci95), not single means.")
    return out


def data_sizes(folder: Path) -> tuple[int, int]:
    """(num_bytes, download_size): the rows' size in Arrow, as `datasets` counts a split, and the Parquet files'
    size on disk."""
    import pyarrow.parquet as pq

    shards = df.list_shards(folder)
    return sum(pq.read_table(p).nbytes for p in shards), sum(p.stat().st_size for p in shards)


def card_data(feats: datasets.Features, generation: dict, sizes: tuple[int, int]) -> DatasetCardData:
    """The YAML header: licence, task, size, configs (data_files) and dataset_info with real sizes."""
    kind, n, src = generation["kind"], generation["n"], generation["source"]
    licence = source_licence(src, generation.get("generator_license"))
    # the Hub's convention: a set built from another names it `extended|ID`; one drawn from nothing, `original`
    origin = ["original"] if src.get("kind") in ("shapes", "diffusers") else \
        [f"extended|{hub_dataset_id(src)}"] if src.get("kind") == "hf" or is_imagenet(src) else None
    data = DatasetCardData(**licence.fields, task_categories=["image-classification"],
                           tags=["stackbench", kind, "saliency", "explainability", "xai"],
                           pretty_name=f"stackbench {kind.upper()}", size_categories=[_size_category(n)],
                           source_datasets=origin)
    MetadataConfigs({"default": {"data_files": [{"split": df.SPLIT, "path": f"{df.DATA_DIR}/{df.SPLIT}-*"}]}}
                    ).to_dataset_card_data(data)
    num_bytes, download = sizes
    splits = datasets.SplitDict()
    splits.add(datasets.SplitInfo(name=df.SPLIT, num_bytes=num_bytes, num_examples=n))
    info = datasets.DatasetInfo(features=feats, splits=splits, download_size=download, dataset_size=num_bytes)
    DatasetInfosDict({"default": info}).to_dataset_card_data(data)
    return data


def render_card(feats: datasets.Features, generation: dict, sizes: tuple[int, int] = (0, 0)) -> DatasetCard:
    kind, r = generation["kind"], generation["recipe"]
    meanings = column_meanings(generation)
    missing = [k for k in feats if k not in meanings]
    if missing:  # a column the card cannot explain is a bug here, never an empty cell
        raise StackbenchError(f"the dataset card has no meaning for the column(s) {', '.join(missing)}")
    licence = source_licence(generation["source"], generation.get("generator_license"))
    skipped = len(generation.get("skipped", []))
    classes_skipped = len(generation.get("skipped_classes", []))
    return DatasetCard.from_template(
        card_data(feats, generation, sizes), template_path=str(resource(*TEMPLATE)),
        pretty_name=f"stackbench {kind.upper()}", description=DESCRIPTIONS.get(kind, kind), n=generation["n"],
        shards=generation["shards"], fingerprint=generation["fingerprint"], source=source_line(generation["source"]),
        classes_used=len(generation.get("classes_used", [])), num_classes=len(feats["label"].names),
        skipped=f"{skipped}" + (f"; classes skipped: {classes_skipped}" if classes_skipped else ""),
        dropped=len(generation.get("dropped", [])), size=r["size"], wall_row=r["wall_row"],
        stackbench=generation["versions"]["stackbench"], command=command_line(generation),
        columns=[(k, meanings[k]) for k in feats], recipe="\n".join(recipe_lines(r)),
        creation=creation_text(generation), limitations=limitations(generation), license_note=licence.note,
        citation=citation(generation["versions"]["stackbench"]), mib=f"{sizes[1] / 2**20:.1f}")


def write_card(folder: str | Path, feats: datasets.Features, generation: dict) -> None:
    save_card(folder, render_card(feats, generation, data_sizes(Path(folder))))
