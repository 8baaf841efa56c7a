"""STACK-GEN: one generated scene with two objects of one class, one in the seen part, one behind the wall.

Two generators behind one builder:
  diffusers  any SD 1.x/2.x checkpoint with regional cross-attention (regional.py): object A's prompt in a box
             above the wall, object B's inside the band behind it, a scene prompt for the rest;
  shapes     the embedded renderer: one shared background, two instances of a `shapes` class.

Boxes say where each object is: for shapes, the exact bounds of its mask; for diffusers, the region its prompt was
confined to. Columns only a diffusion model gives a meaning to (prompts, steps, guidance) exist on diffusers sets
only, and the verifier's scores only when one ran.

Item i is a pure function of (recipe, seed, i): its class is slot i of a seeded class order, attempt a of it
uses the seed derived from (seed, i, a) (initial latents drawn on the CPU, so any device starts from the same
noise), and with --min-verify the first attempt whose two crops CLIP recognises is kept. Batches are fixed
slices of a shard, so process counts and resumes never change bytes; a different --batch-size changes
pixels only by float round-off (it is part of the recipe).
"""
from __future__ import annotations

import math
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
DEFAULT_STEPS, DEFAULT_GUIDANCE, DEFAULT_ATTEMPTS = 30, 7.5, 8
# Recipe fields and columns that only a diffusion model gives a meaning to: a shapes scene has none of them.
DIFFUSERS_FIELDS = ("model", "revision", "steps", "guidance", "prompts")
DIFFUSERS_COLUMNS = ("prompt_top", "prompt_bottom", "prompt_scene", "negative_prompt", "steps", "guidance")
VERIFY_COLUMNS = ("verify_top", "verify_bottom")
_CLASS_ORDER, _ITEM = 11, 12  # seed-stream tags (distinct from STACK-MIX's)


def load_prompts(name: str = "default") -> dict:
    import json

    path = resource("generation", "stack-gen", "prompts", f"{name}.json") if not Path(name).is_file() else Path(name)
    try:
        prompts = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise StackbenchError(f"prompt template {path} is not a readable JSON file ({type(e).__name__}: {e}); give "
                              "a JSON object with top, bottom, scene and negative prompts") from None
    if not isinstance(prompts, dict):
        raise StackbenchError(f"prompt template {path} is not a JSON object; give one with top, bottom, scene and "
                              "negative prompts")
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
    steps: int | None = None          # diffusers: denoising steps (None: DEFAULT_STEPS)
    guidance: float | None = None     # diffusers: guidance scale (None: DEFAULT_GUIDANCE)
    gen_size: int | None = None       # native size of the generator (None: the checkpoint's own)
    batch_size: int = 1
    prompts: dict | None = None       # diffusers: prompt templates (None: the shipped default)
    verify_model: str | None = None
    min_verify: float | None = None
    max_attempts: int | None = None   # with --min-verify: attempts per item (None: DEFAULT_ATTEMPTS)
    format: str = "png"
    size: int = 224
    wall_row: int = field(default_factory=lambda: Wall().dead_from)

    def __post_init__(self):
        self.classes = read_class_spec(self.classes)  # a list, a comma-separated string or a file
        if self.generator == "diffusers":  # defaults only where they mean something: the recipe records what ran
            self.steps = DEFAULT_STEPS if self.steps is None else self.steps
            self.guidance = DEFAULT_GUIDANCE if self.guidance is None else self.guidance
            self.prompts = load_prompts() if self.prompts is None else self.prompts
        if self.min_verify is not None and self.max_attempts is None:
            self.max_attempts = DEFAULT_ATTEMPTS

    def validate(self) -> None:
        if self.generator not in GENERATORS:
            raise StackbenchError(f"unknown --generator {self.generator!r}{close_matches(self.generator, GENERATORS)}; "
                                  f"use {' or '.join(GENERATORS)}")
        if self.generator == "diffusers" and not self.model:
            raise StackbenchError("--generator diffusers needs --model (a Stable Diffusion Hub id or folder)")
        given = [f"--{k}" for k in DIFFUSERS_FIELDS if self.generator == "shapes" and getattr(self, k) is not None]
        if given:
            raise StackbenchError(f"--generator shapes draws its scenes without a diffusion model: {', '.join(given)} "
                                  "(given here or by the preset) apply to --generator diffusers only; drop them")
        if self.format not in FORMATS:
            raise StackbenchError(f"unknown --format {self.format!r}; use {' or '.join(FORMATS)}")
        for name in ("num_images", "steps", "batch_size", "max_attempts"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise StackbenchError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_attempts is not None and self.min_verify is None:
            raise StackbenchError("--max-attempts counts the attempts under --min-verify; give --min-verify too, or "
                                  "drop --max-attempts")
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


def stored_box(box, scale: float, size: int) -> list[int]:
    """A box at the native size -> the stored image's pixels, rounded outward (exact when the scale is 1)."""
    x0, y0, x1, y1 = box
    lo = lambda v: max(0, math.floor(v * scale + 1e-9))  # noqa: E731 - the epsilon keeps exact products exact
    hi = lambda v: min(size, math.ceil(v * scale - 1e-9))  # noqa: E731
    return [lo(x0), lo(y0), hi(x1), hi(y1)]


def checkpoint_licence(folder: Path) -> str | None:
    """The `license` of a checkpoint's model card (README.md YAML), or None when it has no readable one."""
    card = Path(folder) / "README.md"
    if not card.is_file():
        return None
    try:
        from huggingface_hub import ModelCard

        lic = ModelCard.load(card, ignore_metadata_errors=True).data.license
    except Exception:  # noqa: BLE001 - a broken card only means the licence is not known
        return None
    return lic if isinstance(lic, str) and lic else None


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
        n = len(self.class_names)
        for name in recipe.classes or default_classes(recipe.generator):
            if name.lower() in lower:
                wanted.append(lower[name.lower()])
            elif name.isdigit() and int(name) < n:  # an index, as stack-mix takes it
                wanted.append(int(name))
            else:
                raise StackbenchError(f"unknown class {name!r} for --generator {recipe.generator}"
                                      f"{close_matches(name, self.class_names)}; give a class name or an index "
                                      f"0..{n - 1}"
                                      + (f" ({', '.join(self.class_names)})" if n <= 20 else ""))
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

    def _render(self, items: list[tuple[int, int, int]], layout) -> list[tuple[Image.Image, list]]:
        """items: (index, class, attempt) -> (image, [top box, bottom box]) at the native size. Shapes give each
        object's exact bounds; a diffusion model gives the regions its prompts were confined to."""
        r = self.recipe
        if r.generator == "shapes":
            return [self._render_shapes(c, item_seed(r.seed, i, a), layout) for i, c, a in items]
        from .regional import generate_regional

        ps = [self.prompts(c) for _, c, _ in items]
        images = generate_regional(self._pipeline(), layout, [p["scene"] for p in ps], [p["top"] for p in ps],
                                   [p["bottom"] for p in ps], [p["negative"] for p in ps],
                                   [item_seed(r.seed, i, a) for i, _, a in items], steps=r.steps,
                                   guidance=r.guidance)
        return [(img, [layout.top_box, layout.bottom_box]) for img in images]

    @staticmethod
    def _render_shapes(c: int, seed: int, layout) -> tuple[Image.Image, list]:
        from ..sources.exact import uniform
        from ..sources.shapes import draw_object, finish, render_background

        rng = np.random.default_rng(seed)
        canvas = render_background((layout.width, layout.height), rng)
        boxes = []
        for k, box in enumerate((layout.top_box, layout.bottom_box)):
            x0, y0, x1, y1 = box
            side = min(y1 - y0, x1 - x0) * uniform(rng, 0.8, 1.0)
            cx = uniform(rng, x0 + side / 2, x1 - side / 2)
            cy = (y0 + y1) / 2
            hidden = k == 1
            # The hidden object is drawn on a copy and only its band is kept: its drop shadow must not show above
            # the wall, where the model would see it.
            target = canvas.copy() if hidden else canvas
            boxes.append(list(draw_object(target, c, (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2),
                                          rng)))
            if hidden:
                band = (0, y0, layout.width, layout.height)
                canvas.paste(target.crop(band), band[:2])
        return finish(canvas, rng), boxes

    def layout(self):
        from .regional import Layout

        n = self.native_size()
        return Layout.for_wall(n, n, round(self.recipe.wall_row * n / self.recipe.size))

    def build_batch(self, indices: list[int], report: Report) -> list[dict | None]:
        r = self.recipe
        layout = self.layout()
        classes = {i: self.class_order[i % len(self.class_order)] for i in indices}
        attempt = {i: 0 for i in indices}
        done: dict[int, tuple | None] = {}
        verifier = self._verify()
        pending = list(indices)
        while pending:
            images = self._render([(i, classes[i], attempt[i]) for i in pending], layout)
            scores = self._scores(verifier, [img for img, _ in images], [classes[i] for i in pending], layout)
            retry = []
            for i, (img, boxes), (s_top, s_bottom) in zip(pending, images, scores, strict=True):
                ok = r.min_verify is None or (s_top >= r.min_verify and s_bottom >= r.min_verify)
                if ok or attempt[i] + 1 >= r.max_attempts:
                    done[i] = (img, boxes, s_top, s_bottom) if ok else None
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
        return list(zip(s[:len(images)], s[len(images):], strict=True))

    def features(self):
        """The columns of this set: no diffusion columns on shapes scenes, no scores without a verifier."""
        import datasets

        from ..datafolder import features

        drop = (DIFFUSERS_COLUMNS if self.recipe.generator == "shapes" else ()) + \
            (VERIFY_COLUMNS if not self.recipe.verify_model else ())
        return datasets.Features({k: v for k, v in features(KIND, self.class_names).items() if k not in drop})

    def _row(self, i: int, c: int, attempt: int, done, layout) -> dict:
        r = self.recipe
        img, boxes, s_top, s_bottom = done
        top_box, bottom_box = (stored_box(b, r.size / layout.height, r.size) for b in boxes)
        if r.generator == "diffusers":
            bottom_box[1] = r.wall_row  # the prompt band starts exactly at the wall in the stored image
        if img.size != (r.size, r.size):
            img = img.resize((r.size, r.size), Image.BILINEAR)
        gen = self.source
        row = {"id": f"stack-gen-{r.seed}-{i:06d}", "image": {"bytes": encode(img, r.format), "path": None},
               "label": c, "class_name": self.class_names[c], "wall_row": r.wall_row, "seed": r.seed,
               "top_box": top_box, "bottom_box": bottom_box}
        if r.generator == "diffusers":
            p = self.prompts(c)
            row.update(prompt_top=p["top"], prompt_bottom=p["bottom"], prompt_scene=p["scene"],
                       negative_prompt=p["negative"], steps=r.steps, guidance=r.guidance,
                       generator=gen["ref"] + (f"@{gen['revision']}" if gen.get("revision") else ""))
        else:
            row["generator"] = gen["version"]
        if r.verify_model:
            row.update(verify_top=s_top, verify_bottom=s_bottom)
        return row

    def build(self, i: int, report: Report) -> dict | None:
        return self.build_batch([i], report)[0]

    def identity(self) -> dict:
        recipe = asdict(self.recipe)
        recipe["classes"] = [self.class_names[c] for c in sorted(set(self.class_order))]
        recipe["encoding"] = encoding(self.recipe.format)
        return {"recipe": recipe, "source": self.source}

    def info(self) -> dict:
        info = {"classes_used": [self.class_names[c] for c in sorted(set(self.class_order))]}
        if self.recipe.generator == "diffusers":  # the checkpoint's licence governs its outputs: the card says it
            info["generator_license"] = checkpoint_licence(self._folder)
        return info


def generate_stack_gen(out: str | Path, recipe: StackGenRecipe | None = None, *, device: str = "cpu",
                       num_proc: int = 1, shard_size: int = 500, overwrite: bool = False, progress: bool = True,
                       state=None, **recipe_fields) -> WriteResult:
    """Build (or resume) a STACK-GEN dataset folder. `recipe_fields` are StackGenRecipe fields."""
    from ..cards.dataset import write_card

    recipe = recipe or StackGenRecipe(**recipe_fields)
    builder = StackGenBuilder(recipe, device=device)
    return write_dataset(out, builder, shard_size=shard_size, num_proc=num_proc, overwrite=overwrite,
                         progress=progress, card=write_card, state=state)
