"""A STACK dataset from a kind, a preset and recipe fields: what the board's tracks (regenerated from their
presets) and `stackbench.build_dataset` share."""
from __future__ import annotations

from pathlib import Path

from ..errors import StackbenchError
from .resources import load_preset


def build_dataset(kind: str, out, *, preset: str | None = "mini", progress: bool = False, overwrite: bool = False,
                  **fields) -> Path:
    """Build (or resume) a STACK-MIX or STACK-GEN folder as `stackbench generate KIND --preset PRESET` does;
    `fields` (recipe fields: num_images, seed, source, ...) go on top of the preset. Returns the folder."""
    from .stackgen import StackGenRecipe, generate_stack_gen
    from .stackmix import StackMixRecipe, generate_stack_mix

    kinds = {"stack-mix": (StackMixRecipe, generate_stack_mix), "stack-gen": (StackGenRecipe, generate_stack_gen)}
    if kind not in kinds:
        raise StackbenchError(f"kind {kind!r}: expected stack-mix or stack-gen")
    recipe, run = kinds[kind]
    base = load_preset(kind, preset) if preset else {}
    if "num_images" in fields or "per_class" in fields:  # a count given here replaces the preset's count
        base.pop("num_images", None), base.pop("per_class", None)
    unknown = set(fields) - set(recipe.__dataclass_fields__)
    if unknown:
        raise StackbenchError(f"{kind}: unknown recipe field(s) {sorted(unknown)}; it has "
                              f"{', '.join(recipe.__dataclass_fields__)}")
    if not isinstance(out, (str, Path)):
        raise StackbenchError(f"out {out!r:.40}: a folder path")
    for k, v in fields.items():  # checked here: a wrong type would fail half-way and leave a folder behind
        _check_field(kind, k, v, str(recipe.__dataclass_fields__[k].type))
    run(out, recipe.from_fields({**base, **fields}), progress=progress, overwrite=overwrite)
    return Path(out)


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _check_field(kind: str, name: str, value, annotation: str) -> None:
    """A recipe field given from Python has the type its dataclass declares (int, float, str; None if allowed)."""
    if value is None and "None" in annotation:
        return
    want = _TYPES.get(annotation.split("|")[0].strip())
    if want and (not isinstance(value, want) or (bool not in want and isinstance(value, bool))):
        raise StackbenchError(f"{kind}: {name}={value!r:.40} must be {annotation.split('|')[0].strip()}"
                              f"{' or None' if 'None' in annotation else ''}")
