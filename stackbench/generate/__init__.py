"""Dataset generation: STACK-MIX and STACK-GEN builders over one resumable, parallel writer.

    from stackbench.generate import generate_stack_mix
    result = generate_stack_mix("stack-mix-mini", source="shapes", per_class=10, layout="cut", seed=0)
"""
from .compose import LAYOUTS, compose, contain, cover, encode
from .resources import load_preset, presets, resource
from .stackmix import StackMixBuilder, StackMixRecipe, generate_stack_mix, read_class_spec, resolve_classes
from .writer import Builder, Report, WriteResult, write_dataset

__all__ = ["LAYOUTS", "Builder", "Report", "StackMixBuilder", "StackMixRecipe", "WriteResult", "compose", "contain",
           "cover", "encode", "generate_stack_mix", "load_preset", "presets", "read_class_spec", "resolve_classes",
           "resource", "write_dataset"]
