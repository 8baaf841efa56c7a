"""The model card (README.md of a trained model folder): YAML built with huggingface_hub's ModelCardData (licence,
`datasets`, `model-index` with the run's validation top-1 / top-5), body rendered from cards/model_card.md.

    from stackbench.cards.model import write_card
    write_card(out, summary)        # summary: train.json's content (stackbench.train/1)

The optimiser line comes from the run's real optimiser (`describe_optimizer`, recorded in train.json), never from
a guess about what the configuration's name implies. Every value the body shows is formatted here, so no Python
repr (None, dicts) reaches the Markdown.
"""
from __future__ import annotations

import json
from pathlib import Path

from .. import __version__
from ..resources import resource
from .common import citation, hub_dataset_id, save_card, source_licence

TEMPLATE = ("cards", "model_card.md")
RECORD = "train.json"
# param_group keys that choose an implementation, not the mathematics of the update
IMPLEMENTATION_KEYS = ("params", "foreach", "fused", "capturable", "differentiable", "initial_lr")


def describe_optimizer(optimizer) -> dict:
    """{class, param_groups}: the optimiser's class and the hyperparameters of each parameter group, with the base
    learning rate (a scheduler leaves its last value in `lr` and the base one in `initial_lr`)."""
    opt = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimiser
    cls = type(opt)
    import torch

    name = f"torch.optim.{cls.__name__}" if getattr(torch.optim, cls.__name__, None) is cls else \
        f"{cls.__module__}.{cls.__qualname__}"
    groups = []
    for g in opt.param_groups:
        hp = {k: list(v) if isinstance(v, tuple) else v for k, v in g.items() if k not in IMPLEMENTATION_KEYS}
        hp["lr"] = g.get("initial_lr", g["lr"])
        if hp.get("maximize") is False:  # the default direction says nothing
            hp.pop("maximize")
        groups.append(dict(sorted(hp.items())))
    return {"class": name, "param_groups": groups}


def _value(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_value(x) for x in v) + ")"
    return f"{v:g}" if isinstance(v, float) else str(v)


def optimizer_text(summary: dict) -> str:
    """One line: the optimiser's class and hyperparameters as the run had them."""
    opt = summary.get("optimizer")
    if not opt:  # a record written before optimisers were described: the name alone, nothing implied
        cfg = summary.get("config", {})
        return f"{cfg.get('optimizer', 'unknown')} (lr {_value(cfg.get('lr'))}; other settings not recorded)"
    first = opt["param_groups"][0] if opt["param_groups"] else {}
    keys = ["lr"] + [k for k in first if k != "lr"]
    text = f"`{opt['class']}`: " + ", ".join(f"{k.replace('_', ' ')} {_value(first[k])}" for k in keys)
    if any(g != first for g in opt["param_groups"][1:]):
        text += f" (first of {len(opt['param_groups'])} parameter groups; all in `{RECORD}`)"
    return text


# config fields that only one optimiser / schedule reads
USED_ONLY_BY = {"momentum": ("optimizer", "sgd"), "step_epochs": ("schedule", "step"), "gamma": ("schedule", "step"),
                "warmup_fraction": ("schedule", "onecycle")}


def used_config(cfg: dict) -> dict:
    """The configuration without the fields this run did not read (train.json keeps them all)."""
    return {k: v for k, v in cfg.items() if k not in USED_ONLY_BY or cfg.get(USED_ONLY_BY[k][0]) == USED_ONLY_BY[k][1]}


def schedule_text(cfg: dict) -> str:
    kind = cfg.get("schedule")
    if kind == "step":
        return f"step: lr x {_value(cfg.get('gamma'))} every {cfg.get('step_epochs')} epochs"
    if kind == "cosine":
        return "cosine: from lr down to 0 over the run, from the first step"
    if kind == "onecycle":
        return (f"one-cycle: linear warm-up from lr/25 over {100 * cfg.get('warmup_fraction', 0):.0f}% of the steps, "
                "then cosine down to ~0")
    return str(kind)


def eval_results(summary: dict, model_name: str) -> list:
    """model-index entries: the validation top-1 and top-5 the run measured (none before its first epoch)."""
    from huggingface_hub import EvalResult

    m, val = summary.get("metrics") or {}, (summary.get("sources") or {}).get("val") or {}
    if m.get("top1") is None:
        return []
    where = dict(task_type="image-classification", task_name="Image Classification",
                 dataset_type=hub_dataset_id(val), dataset_name=f"{val.get('ref')} ({val.get('split')})",
                 dataset_split=val.get("split") or None, metric_type="accuracy")
    out = [EvalResult(**where, metric_name="top-1 accuracy", metric_value=m["top1"])]
    if m.get("top5") is not None:
        out.append(EvalResult(**where, metric_name="top-5 accuracy", metric_value=m["top5"], metric_config="top5"))
    return out


def card_data(summary: dict):
    """The YAML header: licence from the training images, `datasets`, and `model-index` results."""
    from huggingface_hub import ModelCardData

    train = (summary.get("sources") or {}).get("train") or {}
    name = f"{summary['model']} trained on {train.get('ref', 'unknown data')}"
    return ModelCardData(
        library_name="stackbench", **source_licence(train).fields, pipeline_tag="image-classification",
        tags=["stackbench", "saliency", "walled-model", summary["model"]], datasets=[hub_dataset_id(train)],
        metrics=["accuracy"], model_name=name, eval_results=eval_results(summary, name) or None)


def _percent(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _log_rows(summary: dict) -> list[str]:
    rows = []
    for r in summary.get("log") or []:
        speed = f"{r['images_per_s']:.1f}" if r.get("images_per_s") else "-"
        loss = f"{r['loss']:.4f}" if r.get("loss") is not None else "-"
        rows.append(f"| {r.get('epoch')} | {loss} | {_percent(r.get('top1'))} | {_percent(r.get('top5'))} | {speed} "
                    f"| {r.get('seconds', 0):.0f} |")
    return rows


def wall_lines(wall: dict | None) -> list[str]:
    if not wall:
        return ["not checked yet: the run has not finished (the wall check runs on the final weights)"]
    rows = wall.get("traced_rows")
    lines = [f"declared: {wall.get('declared')}", f"traced rows: {f'{rows[0]}..{rows[1]}' if rows else 'none'}",
             f"check: {wall.get('check')}"]
    if wall.get("dead_weight_max") is not None:
        lines.append(f"largest weight behind the wall: {wall['dead_weight_max']}")
    return lines + [f"verdict: **{wall.get('verdict')}**"]


def limitations(summary: dict) -> list[str]:
    train = (summary.get("sources") or {}).get("train") or {}
    size = (summary.get("config") or {}).get("image_size", 224)
    out = [f"The wall is a property of these weights at {size}x{size} input: resize or crop images to that size "
           "before the model, never after, or the rows it cannot see move.",
           "The top-1 above is on the validation split named there; it says how well the model classifies, not how "
           "faithful any saliency method is on it."]
    aux = (summary.get("config") or {}).get("aux_masks") or 0
    if aux:
        out.append(f"Trained with the object-mask loss (weight {_value(aux)}): a training-only head on every live "
                   "token predicted the object's coverage of the token's 4x4 sub-cells from the source's masks. It "
                   "told every token where the object is, which may shape what the model attends to; weigh that when "
                   "reading saliency on it. The head is not part of these weights.")
    if train.get("kind") == "shapes":
        out.append("Trained on procedural shapes only: it knows those ten outlines, not natural images; use it for "
                   "the mini track, not as a general classifier.")
    return out


def wall_sentence(summary: dict) -> str:
    """How this architecture's wall works, in one sentence (a ViT's dead patch tokens, a VGG's walled dense layer)."""
    from ..models import create_model, list_models

    name = summary.get("model")
    arch = "vgg"
    if name in list_models():
        import torch

        with torch.device("meta"):
            net = create_model(name, seed=None)
        arch = getattr(net, "arch", "vgg")
        if arch == "vit" and getattr(net, "kind", None) == "pixel":
            return "Its bottom patch rows are dead tokens whose embeddings are replaced by a constant (the pixel wall)"
    if arch == "vit":
        return ("Its bottom patch rows are dead tokens, masked as keys for every query in every block (the attention "
                "wall)")
    return "Its first dense layer ignores the bottom rows of the last feature map"


def render_card(summary: dict):
    """The ModelCard of a run summary (train.json's content)."""
    from huggingface_hub import ModelCard

    cfg, m = summary.get("config") or {}, summary.get("metrics") or {}
    src = summary.get("sources") or {}
    train, val = src.get("train") or {}, src.get("val") or {}
    timing = summary.get("timing") or {}
    licence = source_licence(train)
    data = card_data(summary)
    status = "" if summary.get("finished", True) else (
        f"This run stopped after {summary.get('steps', summary.get('global_step', 0))} steps; resume it with "
        f"`stackbench train --resume --out {summary.get('out', 'OUT')}`.")
    return ModelCard.from_template(
        data, template_str=resource(*TEMPLATE).read_text(), title=data.model_name, status=status,
        model=summary["model"], num_classes=summary.get("num_classes"), cfg=cfg, wall_sentence=wall_sentence(summary),
        train=train, val=val, val_split=val.get("split") or "all", val_n=m.get("val_n") or "-",
        top1=_percent(m.get("top1")), top5=_percent(m.get("top5")), wall=wall_lines(summary.get("wall")),
        preset=f" (preset `{cfg['preset']}`)" if cfg.get("preset") else "",
        minutes=f"{timing.get('seconds', 0) / 60:.1f}", steps=summary.get("steps", 0),
        processes=timing.get("processes", 1), device=timing.get("device", "-"),
        mixed_precision=timing.get("mixed_precision", "-"), optimizer=optimizer_text(summary),
        schedule=schedule_text(cfg), crop_scale=_value(cfg.get("crop_scale", ())),
        env=", ".join(f"{k} {v}" for k, v in (summary.get("env") or {}).items()), log=_log_rows(summary),
        limitations=limitations(summary), license_note=f"The weights were trained with stackbench (MIT) on "
        f"`{train.get('ref')}`. {licence.note}",
        citation=citation((summary.get("env") or {}).get("stackbench") or __version__),
        config_json=json.dumps(used_config(cfg), indent=2, sort_keys=True))


def write_card(out: str | Path, summary: dict) -> None:
    """README.md of a model folder, written atomically."""
    save_card(out, render_card(summary))
