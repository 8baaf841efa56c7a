"""Other libraries' ViT weights as a walled ViT (`ARCH:PATH`, `ARCH:hf:REPO[@REV]`; models.loading opens them).

A state dict's format is told by its keys and renamed to WalledViT's, which are timm's:

    torchvision  VisionTransformer: conv_proj, class_token, encoder.pos_embedding, encoder.layers.encoder_layer_i
                 (ln_1, self_attention.in_proj_*/out_proj, ln_2, mlp.0/mlp.3; before torchvision 0.13
                 mlp.linear_1/linear_2), encoder.ln, heads.head
    timm         VisionTransformer: WalledViT's own keys
    transformers ViTForImageClassification: vit.embeddings.*, vit.encoder.layer.i (layernorm_before,
                 attention.attention.query/key/value, attention.output.dense, layernorm_after, intermediate.dense,
                 output.dense), vit.layernorm, classifier. That is every 4.x name, and what 5.x's save_pretrained
                 still writes; 5.x's modules (model.state_dict()) name the layers vit.layers.i with
                 attention.q_proj/k_proj/v_proj/o_proj and mlp.fc1/fc2 (transformers' conversion_mapping.py,
                 "ViTModel"). Both are read; q, k and v are stacked into qkv as timm and torchvision store them.

A key WalledViT has no place for is refused, never dropped: an extra (an average-pool norm, layer scale, register
tokens, a pre-logits layer) changes the function, and the wall would be proven for another network than the one
named. Only weights no logit reads are dropped (transformers' pooler and mask token), and empty tensors. The
geometry must be the named architecture's; the LayerNorm eps is the checkpoint's (config.json when a folder has
one, else its library's default: transformers 1e-12, torchvision and timm 1e-6), since it changes the logits.
What only a config says (the activation, timm's pooling) is checked when a folder's config.json says it; a bare
state dict cannot tell a timm average-pooling ViT without fc_norm from a class-token one, nor its heads.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from ..errors import StackbenchError, close_matches
from .registry import create_model, list_models
from .vit import WalledViT


@dataclass(frozen=True)
class Format:
    name: str                  # what a message calls it
    eps: float                 # its library's LayerNorm eps
    rules: tuple               # (full-key regex, replacement): a key no rule matches is refused
    unused: tuple = ()         # regexes of keys no logit reads (dropped)


def _block_rules(layer: str, names: tuple) -> tuple:
    """Rules for the keys of block i under `layer` (a regex with the block index as its one group)."""
    return tuple((rf"{layer}\.{src}\.(weight|bias)", rf"blocks.\1.{dst}.\2") for src, dst in names)


_TV_LAYER = r"encoder\.layers\.encoder_layer_(\d+)"
TORCHVISION = Format("torchvision VisionTransformer", 1e-6, (
    (r"conv_proj\.(weight|bias)", r"patch_embed.proj.\1"), (r"class_token", "cls_token"),
    (r"encoder\.pos_embedding", "pos_embed"),
    (rf"{_TV_LAYER}\.self_attention\.in_proj_(weight|bias)", r"blocks.\1.attn.qkv.\2"),
    *_block_rules(_TV_LAYER, (("ln_1", "norm1"), (r"self_attention\.out_proj", "attn.proj"), ("ln_2", "norm2"),
                              (r"mlp\.(?:0|linear_1)", "mlp.fc1"), (r"mlp\.(?:3|linear_2)", "mlp.fc2"))),
    (r"encoder\.ln\.(weight|bias)", r"norm.\1"), (r"heads\.head\.(weight|bias)", r"head.\1"),
))

TIMM = Format("timm VisionTransformer", 1e-6, (
    (r"cls_token|pos_embed|patch_embed\.proj\.(?:weight|bias)|(?:norm|head)\.(?:weight|bias)", r"\g<0>"),
    (r"blocks\.\d+\.(?:norm1|attn\.qkv|attn\.proj|norm2|mlp\.fc1|mlp\.fc2)\.(?:weight|bias)", r"\g<0>"),
))

# The `vit.` prefix is optional: a bare ViTModel's keys reach the "no classification head" refusal.
_HF4, _HF5 = r"(?:vit\.)?encoder\.layer\.(\d+)", r"(?:vit\.)?layers\.(\d+)"
TRANSFORMERS = Format("transformers ViTForImageClassification", 1e-12, (
    (r"(?:vit\.)?embeddings\.cls_token", "cls_token"), (r"(?:vit\.)?embeddings\.position_embeddings", "pos_embed"),
    (r"(?:vit\.)?embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    *_block_rules(_HF4, (("layernorm_before", "norm1"), (r"attention\.attention\.query", "attn.q"),
                         (r"attention\.attention\.key", "attn.k"), (r"attention\.attention\.value", "attn.v"),
                         (r"attention\.output\.dense", "attn.proj"), ("layernorm_after", "norm2"),
                         (r"intermediate\.dense", "mlp.fc1"), (r"output\.dense", "mlp.fc2"))),
    *_block_rules(_HF5, (("layernorm_before", "norm1"), (r"attention\.q_proj", "attn.q"),
                         (r"attention\.k_proj", "attn.k"), (r"attention\.v_proj", "attn.v"),
                         (r"attention\.o_proj", "attn.proj"), ("layernorm_after", "norm2"),
                         (r"mlp\.fc1", "mlp.fc1"), (r"mlp\.fc2", "mlp.fc2"))),
    (r"(?:vit\.)?layernorm\.(weight|bias)", r"norm.\1"), (r"classifier\.(weight|bias)", r"head.\1"),
), unused=(r"(?:vit\.)?pooler\..*", r"(?:vit\.)?embeddings\.mask_token"))  # the classifier reads token 0, not these

# Keys of the formats' richer variants: what each would add to the function.
EXTRAS = (
    (r"(?:.*\.)?fc_norm\..*", "fc_norm (a norm of an average-pooled head)"),
    (r"norm_pre\..*", "norm_pre (a LayerNorm before the blocks)"), (r"reg_token", "register tokens"),
    (r"(?:heads\.|head\.)?pre_logits\..*", "a pre-logits layer"), (r".*\.ls[12]\..*", "layer scale"),
    (r".*\.[qk]_norm\..*", "query/key norms"), (r"attn_pool\..*", "attention pooling"),
    (r"patch_embed\.norm\..*", "a patch-embedding norm"), (r"conv_proj\.conv_.*", "a convolutional stem"),
    (r"dist_token|head_dist\..*", "a distillation token and head"),
)


def detect(state: dict) -> Format | None:
    """The format whose keys the state dict has (None: no ViT format stackbench reads)."""
    keys = set(state)
    if "class_token" in keys or "conv_proj.weight" in keys or any(k.startswith("encoder.layers.encoder_layer_")
                                                                   for k in keys):
        return TORCHVISION
    if keys & {"vit.embeddings.cls_token", "embeddings.cls_token"}:
        return TRANSFORMERS
    if "cls_token" in keys and "patch_embed.proj.weight" in keys:
        return TIMM
    return None


def rename(state: dict, fmt: Format, ref: str) -> dict:
    """The state dict in WalledViT's keys; one line naming the first key that has no place there."""
    out = {}
    for key, value in state.items():
        if value.numel() == 0 or any(re.fullmatch(p, key) for p in fmt.unused):
            continue  # an empty extra, or weights no logit reads
        new = next((re.sub(rf"^(?:{p})$", r, key) for p, r in fmt.rules if re.fullmatch(p, key)), None)
        if new is None:
            what = next((w for p, w in EXTRAS if re.fullmatch(p, key)), None)
            why = (f"holds {what}, which a plain ViT does not have: dropping it would change the logits" if what
                   else "has no place in a plain ViT, and a weight stackbench cannot account for is never dropped")
            raise StackbenchError(f"{ref}: {fmt.name} key {key!r} {why}; stackbench walls class-token ViTs without "
                                  "extras")
        out[new] = value
    return _stack_qkv(out)


def _stack_qkv(state: dict) -> dict:
    """transformers' separate q, k, v -> one qkv, stacked [q; k; v] along the output (timm's, torchvision's)."""
    for key in [k for k in state if re.fullmatch(r"blocks\.\d+\.attn\.q\.(weight|bias)", k)]:
        parts = [key.replace(".attn.q.", f".attn.{c}.") for c in "qkv"]
        if all(p in state for p in parts):  # else the strict load names what is missing
            state[key.replace(".attn.q.", ".attn.qkv.")] = torch.cat([state.pop(p) for p in parts])
    return state


def _standard(model) -> bool:
    """A ViT another library's checkpoint can fill: a linear patch embedding, a class token, learned positions."""
    return isinstance(model, WalledViT) and model.stem == "linear" and model.cls_token is not None \
        and isinstance(model.pos_embed, torch.nn.Parameter)


def vit_names() -> list[str]:
    """The zoo's standard ViT names, which ARCH:PATH accepts (built on the meta device: shapes only)."""
    names = []
    for name in list_models():
        with torch.device("meta"):
            if _standard(create_model(name, seed=None)):
                names.append(name)
    return names


def zoo_vit(arch: str, ref: str) -> WalledViT:
    """The named ViT architecture, on the meta device (its geometry and config); one line for any other name."""
    if arch not in list_models():
        names = vit_names()
        raise StackbenchError(f"{ref}: unknown architecture {arch!r}{close_matches(arch, names)}; ARCH:PATH walls "
                              f"a ViT checkpoint as one of {', '.join(names)}")
    with torch.device("meta"):
        zoo = create_model(arch, seed=None)
    if not isinstance(zoo, WalledViT):
        raise StackbenchError(f"{ref}: {arch} is not a ViT; ARCH:PATH walls a ViT checkpoint as one of "
                              f"{', '.join(vit_names())} (load VGG weights as paper:PATH or a save_pretrained folder)")
    if not _standard(zoo):
        raise StackbenchError(f"{ref}: {arch} has its own stem and head (stackbench's mini ViT), which no other "
                              f"library's checkpoint fills; ARCH:PATH walls a standard ViT as one of "
                              f"{', '.join(vit_names())} (a {arch} stackbench trained loads as its folder: "
                              "--model PATH)")
    return zoo


LABELS = {"image_size": "image size", "patch_size": "patch", "dim": "width", "depth": "blocks", "heads": "heads",
          "mlp": "MLP width", "channels": "input channels"}


def geometry(state: dict, ref: str, fmt: Format) -> dict:
    """What the weights fix about the network (heads are not in the weights: config.json says them)."""
    proj, pos = state.get("patch_embed.proj.weight"), state.get("pos_embed")
    if proj is None or pos is None or proj.ndim != 4 or pos.ndim != 3:
        raise StackbenchError(f"{ref}: the {fmt.name} checkpoint has no patch embedding or position embeddings "
                              "of a ViT; is it a whole ViT classifier?")
    grid = math.isqrt(max(pos.shape[1] - 1, 0))
    if grid * grid != pos.shape[1] - 1:
        raise StackbenchError(f"{ref}: its position embeddings hold {pos.shape[1]} tokens, not a class token and a "
                              "square grid of patches; stackbench walls class-token ViTs")
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    return {"image_size": grid * proj.shape[-1], "patch_size": proj.shape[-1], "dim": proj.shape[0],
            "depth": max(blocks) + 1 if blocks else 0, "mlp": fc1.shape[0] if fc1 is not None else None,
            "channels": proj.shape[1]}


def zoo_geometry(zoo: WalledViT) -> dict:
    return {"image_size": zoo.input_size[0], "patch_size": zoo.patch_size, "dim": zoo.dim,
            "depth": len(zoo.blocks), "heads": zoo.blocks[0].attn.heads, "mlp": zoo.blocks[0].mlp.fc1.out_features,
            "channels": 3}


def check_geometry(found: dict, zoo: WalledViT, arch: str, ref: str) -> None:
    want = zoo_geometry(zoo)
    differ = [k for k, v in found.items() if v is not None and v != want[k]]
    if differ:
        theirs = ", ".join(f"{LABELS[k]} {found[k]}" for k in differ)
        ours = ", ".join(f"{LABELS[k]} {want[k]}" for k in differ)
        raise StackbenchError(f"{ref}: the checkpoint has {theirs} where {arch} has {ours}; name the ViT of its "
                              f"geometry ({', '.join(vit_names())})")


def _from_config(config: dict | None, fmt: Format, ref: str) -> tuple[float, int | None, dict | None]:
    """(LayerNorm eps, heads, id2label) from a folder's config.json (transformers', timm's or stackbench's), and
    the refusal of settings that change the function but not the weights' shapes."""
    config = config if isinstance(config, dict) else {}
    args = config.get("model_args") if isinstance(config.get("model_args"), dict) else {}  # timm
    changes = [("hidden_act", config.get("hidden_act"), ("gelu",)), ("act_layer", args.get("act_layer"), ("gelu",)),
               ("global_pool", config.get("global_pool", args.get("global_pool")), ("token",)),
               ("class_token", args.get("class_token"), (True,))]
    for key, value, fine in changes:
        if value is not None and value not in fine:
            raise StackbenchError(f"{ref}: config.json sets {key} {value!r}; WalledViT is {key} {fine[0]!r} (exact "
                                  "GELU, class-token head), so these weights would compute another function")
    eps = config.get("layer_norm_eps", config.get("eps", fmt.eps))
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise StackbenchError(f"{ref}: config.json's LayerNorm eps {eps!r} is not a number in (0, 1); fix config.json")
    heads = config.get("num_attention_heads", args.get("num_heads", config.get("heads")))
    labels = config.get("id2label") if isinstance(config.get("id2label"), dict) else None
    if labels and all(re.fullmatch(r"LABEL_\d+", str(v)) for v in labels.values()):
        labels = None  # transformers' placeholder names say nothing about the classes
    return float(eps), heads if isinstance(heads, int) else None, labels


def to_walled(zoo: WalledViT, state: dict, config: dict | None, ref: str) -> tuple[WalledViT, dict]:
    """(a fresh WalledViT of the architecture `zoo` (zoo_vit's) with the checkpoint's eps and class count, the state
    dict in its keys); the caller loads the weights strictly (models.loading._load_state)."""
    arch = zoo.name
    fmt = detect(state)
    if fmt is None:
        seen = ", ".join(list(state)[:3]) or "none"
        raise StackbenchError(f"{ref}: not a ViT state dict stackbench reads (torchvision, timm or transformers "
                              f"ViTForImageClassification keys); its keys start {seen}")
    state = rename(state, fmt, ref)
    head = state.get("head.weight")
    if head is None or head.ndim != 2:
        raise StackbenchError(f"{ref}: the {fmt.name} checkpoint has no classification head (a backbone); "
                              "stackbench walls classifiers")
    eps, heads, labels = _from_config(config, fmt, ref)
    check_geometry({**geometry(state, ref, fmt), "heads": heads}, zoo, arch, ref)
    n = head.shape[0]
    if labels is not None and len(labels) != n:
        labels = None
    settings = {**zoo._hub_mixin_config, "num_classes": n, "eps": eps, "id2label": labels, "label2id": None}
    with torch.random.fork_rng(devices=[]):  # the initialisation is overwritten: leave the caller's RNG as it was
        torch.manual_seed(0)
        return WalledViT(**settings), state
