"""STACK-MIX: every item stacks two images of one class, one in the seen part and one behind the wall.

Item i is a pure function of (recipe, seed, i): its class is slot i of a seeded class order, its two images
are the (i // classes)-th pair of a seeded permutation of that class' images (so pairs do not repeat until a
class runs out), and an unusable image is replaced from a per-item stream. Nothing depends on shards,
resumes or process counts.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import StackbenchError, close_matches
from ..sources import DEFAULT_MIN_SIZE, SkipImage, Source, open_source
from ..wall import Wall
from .compose import FORMATS, LAYOUTS, compose, encode, encoding
from .resources import FromFields
from .writer import Report, WriteResult, write_dataset

KIND = "stack-mix"
DEFAULT_NUM_IMAGES = 100  # the size of the paper's STACK-MIX
_CLASS_ORDER, _PAIR, _REPLACE = 1, 2, 3  # seed-stream tags: each use of randomness has its own stream


@dataclass
class StackMixRecipe(FromFields):
    """Everything that decides the bytes of a STACK-MIX set (recorded in generation.json)."""

    source: str = "shapes"
    split: str | None = None
    classes: list[str] | None = None  # None: every class of the source
    num_images: int | None = None
    per_class: int | None = None
    layout: str = "cut"
    seed: int = 0
    format: str = "png"
    min_size: int = DEFAULT_MIN_SIZE
    size: int = 224
    wall_row: int = field(default_factory=lambda: Wall().dead_from)

    def __post_init__(self):
        self.classes = read_class_spec(self.classes)  # a list, a comma-separated string or a file
        if self.num_images is None and self.per_class is None:
            self.num_images = DEFAULT_NUM_IMAGES

    def validate(self) -> None:
        if self.layout not in LAYOUTS:
            raise StackbenchError(f"unknown --layout {self.layout!r}{close_matches(self.layout, LAYOUTS)}; use "
                                  f"{' or '.join(LAYOUTS)}")
        if self.format not in FORMATS:
            raise StackbenchError(f"unknown --format {self.format!r}; use {' or '.join(FORMATS)}")
        if self.num_images is not None and self.per_class is not None:
            raise StackbenchError("give either --num-images or --per-class, not both")
        for name in ("num_images", "per_class"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise StackbenchError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
        if self.min_size < 0:
            raise StackbenchError(f"--min-size must be 0 (keep every size) or more pixels, got {self.min_size}")
        if self.seed < 0:
            raise StackbenchError(f"--seed must be >= 0, got {self.seed}")
        if not 0 < self.wall_row < self.size:
            raise StackbenchError(f"wall_row {self.wall_row} outside 1..{self.size - 1}")


def read_class_spec(spec: str | list[str] | None) -> list[str] | None:
    """--classes: a comma-separated list, or a file with one class per line (# comments allowed)."""
    if spec is None:
        return None
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = [spec]  # one class index
    if isinstance(spec, (list, tuple)):
        tokens = [str(t).strip() for t in spec]
    elif not isinstance(spec, str):
        raise StackbenchError(f"classes {spec!r}: expected class names or indices (a list, or a comma-separated "
                              "string) or a file with one per line")
    elif Path(spec).is_file():
        lines = Path(spec).read_text().splitlines()
        tokens = [ln.split("#", 1)[0].strip() for ln in lines]
    else:
        tokens = [t.strip() for t in spec.split(",")]
    tokens = [t for t in tokens if t]
    if not tokens:
        raise StackbenchError(f"--classes {spec!r} gives an empty class list; name at least one class (or omit "
                              "--classes for all)")
    return tokens


def resolve_classes(source: Source, tokens: list[str] | None) -> list[int]:
    """Class tokens -> sorted label indices. A token is a class name (exact, case-insensitive, or the first
    comma-separated part of a name such as 'tench, Tinca tinca'), a folder name (synset) or an index."""
    if tokens is None:
        return list(range(source.num_classes))
    lookup: dict[str, int] = {}
    for idx, name in enumerate(source.class_names):
        for key in (name, name.lower(), name.split(",")[0].strip().lower()):
            lookup.setdefault(key, idx)
    for idx, folder in enumerate(getattr(source, "folders", [])):
        lookup.setdefault(folder, idx)
    out = []
    for t in tokens:
        if t in lookup or t.lower() in lookup:
            out.append(lookup.get(t, lookup.get(t.lower())))
        elif t.isdigit() and int(t) < source.num_classes:
            out.append(int(t))
        else:
            raise StackbenchError(f"unknown class {t!r} in --classes{close_matches(t, source.class_names)}; "
                                  f"{source.ref} has {source.num_classes} classes (e.g. "
                                  f"{', '.join(source.class_names[:3])})")
    return sorted(set(out))


class StackMixBuilder:
    """Plans a STACK-MIX set over a source and builds row i on demand (see writer.Builder)."""

    kind = KIND

    def __init__(self, recipe: StackMixRecipe, source: Source | None = None, allow_repeats: bool = False):
        recipe.validate()
        self.recipe = recipe
        self.source = source or open_source(recipe.source, recipe.split, recipe.min_size)
        self.class_names = list(self.source.class_names)
        wanted = resolve_classes(self.source, recipe.classes)
        labels = self.source.labels()
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(self.source.num_classes + 1))
        self.pools = {c: order[bounds[c]:bounds[c + 1]] for c in wanted}
        self._plan_skips: dict[str, str] = {s.path: s.reason for s in self.source.listing_skips}
        self.skipped_classes: list[dict] = []
        usable = [c for c in wanted if self._has_pair(c)]
        if not usable:
            why = "; ".join(f"{s['class']}: {s['reason']}" for s in self.skipped_classes[:3])
            raise StackbenchError(f"no class of {self.source.ref} has two usable images ({why}"
                                  f"{'; ...' if len(self.skipped_classes) > 3 else ''}); give a source or --classes "
                                  "with at least two readable images per class")
        # Slot i -> class: a seeded shuffle, so the first N items span N random classes, balanced over runs.
        perm = np.random.default_rng([recipe.seed, _CLASS_ORDER]).permutation(len(usable))
        self.class_order = [usable[j] for j in perm]
        self.n_items = recipe.num_images if recipe.num_images is not None else recipe.per_class * len(usable)
        if not allow_repeats:
            self._check_capacity()

    def _check_capacity(self) -> None:
        """Refuse, before any shard is planned, more items than the source gives before an image is used twice
        (item i takes pair i // classes of its class, so the first reuse is at the smallest slot + classes x pairs
        of that slot's class; after it, pairs are drawn again from a new permutation)."""
        n_cls = len(self.class_order)
        pairs = [len(self.pools[c]) // 2 for c in self.class_order]
        cap = min(s + n_cls * p for s, p in enumerate(pairs))
        if self.n_items > cap:
            per = "--per-class" if self.recipe.per_class is not None else "--num-images"
            ask = self.recipe.per_class if self.recipe.per_class is not None else self.n_items
            most = min(pairs) if self.recipe.per_class is not None else cap
            split = f"{self.source.split} split, " if self.source.split else ""
            raise StackbenchError(f"{per} {ask}: {self.source.ref} ({split}{n_cls} classes, the smallest with "
                                  f"{min(pairs)} pairs of images) gives at most {cap} STACK-MIX items before it uses "
                                  f"an image twice; ask for at most {most}, give a larger source, or pass "
                                  "--allow-repeats")

    def _has_pair(self, c: int) -> bool:
        """At least two usable images (checked in file order, stopping at the second)."""
        pool, good, why = self.pools[c], 0, Counter()
        if len(pool) >= 2 and self.source.always_usable:
            return True
        for idx in pool:
            try:
                self.source.load(int(idx))
                good += 1
            except SkipImage as e:
                self._plan_skips.setdefault(e.path, e.reason)
                why[e.reason.split(" (")[0]] += 1  # "too small (40x30; ...)" -> "too small"
            if good == 2:
                return True
        named = {"too small": f"too small for --min-size {self.recipe.min_size}"}
        skipped = "".join(f", {n} {named.get(reason, reason)}" for reason, n in why.most_common())
        self.skipped_classes.append({"class": self.class_names[c], "reason": f"fewer than two usable images "
                                     f"({good} of {len(pool)}{skipped})"})
        return False

    def pair(self, i: int) -> tuple[int, list[int]]:
        """(class, candidate source indices in preference order) for item i."""
        n_cls = len(self.class_order)
        c, k = self.class_order[i % n_cls], i // n_cls
        pool = self.pools[c]
        per_round = len(pool) // 2
        rnd, j = divmod(k, per_round)
        perm = np.random.default_rng([self.recipe.seed, _PAIR, c, rnd]).permutation(len(pool))
        first = [int(pool[perm[2 * j]]), int(pool[perm[2 * j + 1]])]
        rest = np.random.default_rng([self.recipe.seed, _REPLACE, i]).permutation(len(pool))
        return c, first + [int(pool[r]) for r in rest if int(pool[r]) not in first]

    def build(self, i: int, report: Report) -> dict | None:
        r = self.recipe
        c, candidates = self.pair(i)
        got = []
        for idx in candidates:  # the class has two usable images (checked while planning): this ends
            try:
                got.append(self.source.load(idx))
            except SkipImage as e:
                report.skip(e.path, e.reason)
                continue
            if got[-1].converted_from:
                report.convert(got[-1].converted_from)
            if len(got) == 2:
                break
        if len(got) < 2:
            report.drop(i, f"class {self.class_names[c]!r} has fewer than two usable images")
            return None
        top, bottom = got
        img, top_box, bottom_box = compose(top.image, bottom.image, r.layout, r.size, r.wall_row,
                                           masks=(top.object_mask, bottom.object_mask))
        return {"id": f"stack-mix-{r.seed}-{i:06d}", "image": {"bytes": encode(img, r.format), "path": None},
                "label": c, "class_name": self.class_names[c], "wall_row": r.wall_row, "seed": r.seed,
                "top_box": top_box, "bottom_box": bottom_box, "top_source": top.id, "bottom_source": bottom.id,
                "layout": r.layout}

    def identity(self) -> dict:
        recipe = asdict(self.recipe)
        recipe["classes"] = [self.class_names[c] for c in sorted(self.pools)] if self.recipe.classes else None
        recipe["split"] = self.source.split
        recipe["encoding"] = encoding(self.recipe.format)
        return {"recipe": recipe, "source": self.source.describe()}

    def info(self) -> dict:
        return {"classes_used": [self.class_names[c] for c in sorted(self.class_order)],
                "skipped_classes": self.skipped_classes,
                "skipped": [{"path": p, "reason": q} for p, q in sorted(self._plan_skips.items())]}


def generate_stack_mix(out: str | Path, recipe: StackMixRecipe | None = None, *, num_proc: int = 1,
                       shard_size: int = 500, overwrite: bool = False, progress: bool = True,
                       allow_repeats: bool = False, **recipe_fields) -> WriteResult:
    """Build (or resume) a STACK-MIX dataset folder. `recipe_fields` are StackMixRecipe fields. More items than
    the source gives before an image is used twice are refused unless `allow_repeats` (it changes no item)."""
    from ..cards.dataset import write_card

    recipe = recipe or StackMixRecipe(**recipe_fields)
    builder = StackMixBuilder(recipe, allow_repeats=allow_repeats)
    return write_dataset(out, builder, shard_size=shard_size, num_proc=num_proc, overwrite=overwrite,
                         progress=progress, card=write_card)
