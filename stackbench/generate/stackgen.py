"""STACK-GEN: one generated scene with two objects of one class, one in the seen part, one behind the wall.

Two generators behind one builder:
  diffusers  any SD 1.x/2.x checkpoint with regional cross-attention (regional.py): object A's prompt in a box
             above the wall, object B's inside the band behind it, a scene prompt for the rest;
  shapes     the embedded renderer: one shared background, two instances of a `shapes` class.

Item i is a pure function of (recipe, seed, i): its class is slot i of a seeded class order, attempt a of it
uses the seed derived from (seed, i, a) (initial latents drawn on the CPU, so any device starts from the same
noise), and with --min-verify the first attempt whose two crops CLIP recognises is kept. Batches are fixed
slices of a shard, so process counts and resumes never change bytes; a different --batch-size changes
pixels only by float round-off (it is part of the recipe).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import StackbenchError, close_matches
from ..wall import Wall
from .compose import FORMATS, encode, encoding
from .resources import FromFields, resource
from .stackmix import read_class_spec
from .writer import Report, WriteResult, write_dataset

KIND = "stack-gen"
GENERATORS = ("shapes", "diffusers")
_CLASS_ORDER, _ITEM = 11, 12  # seed-stream tags (distinct from STACK-MIX's)


def load_prompts(name: str = "default") -> dict:
    import json

    path = resource("generation", "stack-gen", "prompts", f"{name}.json") if not Path(name).is_file() else Path(name)
    prompts = json.loads(Path(path).read_text())
    for key in ("top", "bottom", "scene", "negative"):
        if not str(prompts.get(key, "")).strip():
            raise StackbenchError(f"prompt template {path} has an empty {key!r} prompt; every one of top, bottom, "
                                  "scene and negative must say something")
    for key in ("top", "bottom"):
        if "{name}" not in prompts[key]:
            raise StackbenchError(f"prompt template {path}: the {key!r} prompt must contain {{name}} (the class name)")
    return prompts


@dataclass
class StackGenRecipe(FromFields):
    """Everything that decides the bytes of a STACK-GEN set (recorded in generation.json)."""

    generator: str = "shapes"
    model: str | None = None          # diffusers: Hub id or folder
    revision: str | None = None       # diffusers: Hub revision (resolved to a commit in generation.json)
    classes: list[str] | None = None  # None: the generator's default class list
    num_images: int = 100
    seed: int = 0
    steps: int = 30
    guidance: float = 7.5
    gen_size: int | None = None       # native size of the generator (None: the checkpoint's own)
    batch_size: int = 1
    prompts: dict = field(default_factory=load_prompts)
    verify_model: str | None = None
    min_verify: float | None = None
    max_attempts: int = 8
    format: str = "png"
    size: int = 224
    wall_row: int = field(default_factory=lambda: Wall().dead_from)

    def __post_init__(self):
        self.classes = read_class_spec(self.classes)  # a list, a comma-separated string or a file

    def validate(self) -> None:
        if self.generator not in GENERATORS:
            raise StackbenchError(f"unknown --generator {self.generator!r}{close_matches(self.generator, GENERATORS)}; "
                                  f"use {' or '.join(GENERATORS)}")
        if self.generator == "diffusers" and not self.model:
            raise StackbenchError("--generator diffusers needs --model (a Stable Diffusion Hub id or folder)")
        if self.format not in FORMATS:
            raise StackbenchError(f"unknown --format {self.format!r}; use {' or '.join(FORMATS)}")
        for name in ("num_images", "steps", "batch_size", "max_attempts"):
            if getattr(self, name) < 1:
                raise StackbenchError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.min_verify is not None and not self.verify_model:
            raise StackbenchError("--min-verify needs --verify-model (a CLIP checkpoint)")
        if self.min_verify is not None and not 0 <= self.min_verify <= 1:
            raise StackbenchError(f"--min-verify is a probability in [0, 1], got {self.min_verify}")


def label_space(generator: str) -> list[str]:
    """Class names of the label space: shapes' ten, or ImageNet-1k's (torchvision's human names)."""
    if generator == "shapes":
        from ..sources.shapes import CLASSES

        return list(CLASSES)
    from ..sources.imagefolder import imagenet_names

    return imagenet_names()


def default_classes(generator: str) -> list[str]:
    if generator == "shapes":
        return label_space("shapes")
    return read_class_spec(str(resource("generation", "classes", "imagenette.txt")))


def item_seed(seed: int, i: int, attempt: int) -> int:
    return int(np.random.SeedSequence([seed, _ITEM, i, attempt]).generate_state(1)[0])


def folder_fingerprint(folder: Path) -> str:
    """sha256 over every file (relative name and bytes) of a local checkpoint folder."""
    from ..datafolder import digest_files

    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and ".git" not in p.parts and ".cache" not in p.parts]
    return digest_files([(p.relative_to(folder).as_posix(), p) for p in files])


class StackGenBuilder:
    """Plans a STACK-GEN set and builds rows in fixed batches (see writer.Builder)."""

    kind = KIND

    def __init__(self, recipe: StackGenRecipe, device: str = "cpu"):
        recipe.validate()
        self.recipe, self.device = recipe, device
        self.class_names = label_space(recipe.generator)
        lower = {n.lower(): k for k, n in enumerate(self.class_names)}
        wanted = []
        for name in recipe.classes or default_classes(recipe.generator):
            if name.lower() not in lower:
                raise StackbenchError(f"unknown class {name!r} for --generator {recipe.generator}"
                                      f"{close_matches(name, self.class_names)}")
            wanted.append(lower[name.lower()])
        wanted = sorted(set(wanted))
        perm = np.random.default_rng([recipe.seed, _CLASS_ORDER]).permutation(len(wanted))
        self.class_order = [wanted[j] for j in perm]
        self.n_items = recipe.num_images
        self.batch_size = recipe.batch_size
        self._pipe = self._verifier = None
        self.source = self._describe_generator()

    # --- the generator ---------------------------------------------------------------------------------
    def _describe_generator(self) -> dict:
        r = self.recipe
        if r.generator == "shapes":
            from ..sources.shapes import VERSION

            return {"kind": "shapes", "ref": "shapes", "version": VERSION}
        from .pipelines import resolve_checkpoint

        folder, revision = resolve_checkpoint(r.model, r.revision)
        self._folder = folder
        return {"kind": "diffusers", "ref": r.model, "revision": revision,
                "fingerprint": folder_fingerprint(folder) if revision is None else None}

    def _pipeline(self):
        if self._pipe is None:
            from .pipelines import load_pipeline

            self._pipe = load_pipeline(str(self._folder), self.device)
        return self._pipe

    def native_size(self) -> int:
        r = self.recipe
        if r.gen_size:
            return r.gen_size
        if r.generator == "shapes":
            return r.size
        pipe = self._pipeline()
        return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)

    def _verify(self):
        if self._verifier is None and self.recipe.verify_model:
            from .verify import ClipVerifier

            self._verifier = ClipVerifier(self.recipe.verify_model, self.class_names, self.device)
        return self._verifier

    # --- building --------------------------------------------------------------------------------------
    def prompts(self, c: int) -> dict:
        name = self.class_names[c]
        p = self.recipe.prompts
        return {"top": p["top"].format(name=name), "bottom": p["bottom"].format(name=name),
                "scene": p["scene"].format(name=name), "negative": p["negative"].format(name=name)}

    def _render(self, items: list[tuple[int, int, int]], layout) -> list[Image.Image]:
        """items: (index, class, attempt) -> images at the native size."""
        r = self.recipe
        if r.generator == "shapes":
            return [self._render_shapes(c, item_seed(r.seed, i, a), layout) for i, c, a in items]
        from .regional import generate_regional

        ps = [self.prompts(c) for _, c, _ in items]
        return generate_regional(self._pipeline(), layout, [p["scene"] for p in ps], [p["top"] for p in ps],
                                 [p["bottom"] for p in ps], [p["negative"] for p in ps],
                                 [item_seed(r.seed, i, a) for i, _, a in items], steps=r.steps,
                                 guidance=r.guidance)

    @staticmethod
    def _render_shapes(c: int, seed: int, layout) -> Image.Image:
        from ..sources.shapes import draw_object, finish, render_background

        rng = np.random.default_rng(seed)
        canvas = render_background((layout.width, layout.height), rng)
        for box in (layout.top_box, layout.bottom_box):
            x0, y0, x1, y1 = box
            side = min(y1 - y0, x1 - x0) * rng.uniform(0.8, 1.0)
            cx = rng.uniform(x0 + side / 2, x1 - side / 2)
            cy = (y0 + y1) / 2
            draw_object(canvas, c, (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), rng)
        return finish(canvas, rng)

    def layout(self):
        from .regional import Layout

        n = self.native_size()
        return Layout.for_wall(n, n, round(self.recipe.wall_row * n / self.recipe.size))

    def build_batch(self, indices: list[int], report: Report) -> list[dict | None]:
        r = self.recipe
        layout = self.layout()
        classes = {i: self.class_order[i % len(self.class_order)] for i in indices}
        attempt = {i: 0 for i in indices}
        done: dict[int, tuple[Image.Image, float | None, float | None]] = {}
        verifier = self._verify()
        pending = list(indices)
        while pending:
            images = self._render([(i, classes[i], attempt[i]) for i in pending], layout)
            scores = self._scores(verifier, images, [classes[i] for i in pending], layout)
            retry = []
            for i, img, (s_top, s_bottom) in zip(pending, images, scores):
                ok = r.min_verify is None or (s_top >= r.min_verify and s_bottom >= r.min_verify)
                if ok or attempt[i] + 1 >= r.max_attempts:
                    done[i] = (img, s_top, s_bottom) if ok else None
                    if not ok:
                        report.drop(i, f"CLIP scores ({s_top:.3f}, {s_bottom:.3f}) below --min-verify "
                                       f"{r.min_verify} after {r.max_attempts} attempts")
                else:
                    attempt[i] += 1
                    retry.append(i)
            pending = retry
        return [self._row(i, classes[i], attempt[i], done[i], layout) if done[i] else None for i in indices]

    def _scores(self, verifier, images, labels, layout):
        if verifier is None:
            return [(None, None)] * len(images)
        crops = [img.crop(layout.top_box) for img in images] + [img.crop(layout.bottom_box) for img in images]
        s = verifier.scores(crops, list(labels) * 2)
        return list(zip(s[:len(images)], s[len(images):]))

    def _row(self, i: int, c: int, attempt: int, done, layout) -> dict:
        r = self.recipe
        img, s_top, s_bottom = done
        scale = r.size / layout.height
        box = lambda b: [int(round(v * scale)) for v in b]  # noqa: E731
        top_box, bottom_box = box(layout.top_box), box(layout.bottom_box)
        bottom_box[1] = r.wall_row  # the band starts exactly at the wall in the stored image
        if img.size != (r.size, r.size):
            img = img.resize((r.size, r.size), Image.BILINEAR)
        p = self.prompts(c)
        gen = self.source
        return {"id": f"stack-gen-{r.seed}-{i:06d}", "image": {"bytes": encode(img, r.format), "path": None},
                "label": c, "class_name": self.class_names[c], "wall_row": r.wall_row, "seed": r.seed,
                "top_box": top_box, "bottom_box": bottom_box, "prompt_top": p["top"], "prompt_bottom": p["bottom"],
                "prompt_scene": p["scene"], "negative_prompt": p["negative"],
                "generator": gen["ref"] + (f"@{gen['revision']}" if gen.get("revision") else ""),
                "steps": r.steps if r.generator == "diffusers" else 0,
                "guidance": r.guidance if r.generator == "diffusers" else 0.0,
                "verify_top": s_top, "verify_bottom": s_bottom}

    def build(self, i: int, report: Report) -> dict | None:
        return self.build_batch([i], report)[0]

    def identity(self) -> dict:
        recipe = asdict(self.recipe)
        recipe["classes"] = [self.class_names[c] for c in sorted(set(self.class_order))]
        recipe["encoding"] = encoding(self.recipe.format)
        return {"recipe": recipe, "source": self.source}

    def info(self) -> dict:
        return {"classes_used": [self.class_names[c] for c in sorted(set(self.class_order))]}


def generate_stack_gen(out: str | Path, recipe: StackGenRecipe | None = None, *, device: str = "cpu",
                       num_proc: int = 1, shard_size: int = 500, overwrite: bool = False, progress: bool = True,
                       state=None, **recipe_fields) -> WriteResult:
    """Build (or resume) a STACK-GEN dataset folder. `recipe_fields` are StackGenRecipe fields."""
    from .card import write_card

    recipe = recipe or StackGenRecipe(**recipe_fields)
    builder = StackGenBuilder(recipe, device=device)
    return write_dataset(out, builder, shard_size=shard_size, num_proc=num_proc, overwrite=overwrite,
                         progress=progress, card=write_card, state=state)
