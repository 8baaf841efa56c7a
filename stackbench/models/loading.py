"""Model references -> walled models.

    NAME            zoo entry with its published weights
    NAME@random     seeded random initialisation (Theorem 1 is about initialisation)
    PATH            save_pretrained folder (config.json + model.safetensors)
    hf:REPO[@REV]   the same folder on the Hugging Face Hub, pinned to REV
    paper:PATH      the authors' original state_dict (.pt), loaded with weights_only=True
    ARCH:PATH       a torchvision, timm or transformers ViT checkpoint (a .safetensors/.bin/.pt/.pth file or a
                    save_pretrained folder) walled as the ViT zoo architecture ARCH (models.vit_weights)
    ARCH:hf:REPO[@REV]  the same from the Hugging Face Hub
"""
from __future__ import annotations

import hashlib
import inspect
import json
import warnings
from pathlib import Path

import torch

from ..errors import StackbenchError, first_line
from ..refs import WEIGHT_SUFFIXES, model_ref, pick_device
from ..wall import Wall
from .init import weights_to_come
from .registry import create_model, get_entry, list_models
from .vgg import WallLinear

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
CONFIG, WEIGHTS = "config.json", "model.safetensors"
BIN_WEIGHTS = "pytorch_model.bin"  # what older transformers and timm folders hold instead


def _defaults(cls) -> dict:
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


class WallLeakWarning(UserWarning):
    """A checkpoint carried non-zero weights behind the wall (they were zeroed; the wall held anyway)."""


def load_model(ref, seed: int = 0, device: str | torch.device = "cpu", arch: str | None = None) -> torch.nn.Module:
    """Resolve a model reference (see module doc) to a model in eval mode, with `.ref` set. A walled model object
    is taken as it is (moved to `device`, put in eval mode; `.ref` kept, or `object:ClassName`)."""
    if isinstance(device, str):
        device = pick_device(device)
    if isinstance(ref, torch.nn.Module):
        return _walled_object(ref).to(device).eval()
    if not isinstance(ref, (str, Path)):
        raise StackbenchError(f"model {type(ref).__name__} object: expected a reference (a zoo name, NAME@random, a "
                              "folder, hf:REPO, paper:PATH, ARCH:PATH) or a walled nn.Module")
    ref = str(ref)
    if not ref.strip():  # Path("") is the current folder: say what is wrong instead of "folder . has no config.json"
        raise StackbenchError(f"--model {ref!r} is empty; give a zoo name ({', '.join(list_models())}), NAME@random, "
                              "a save_pretrained folder, hf:REPO, paper:PATH or ARCH:PATH")
    parsed = model_ref(ref)
    if parsed.scheme == "hf":
        model = load_hub(ref[3:])
    elif parsed.scheme == "paper":
        model = load_paper(parsed.body, arch=arch)
    elif parsed.scheme == "random":
        model = create_model(parsed.body, seed=seed)
        ref = f"{ref}#seed={seed}"
    elif parsed.scheme == "zoo":
        model = load_published(ref)
    elif parsed.scheme == "arch":
        model = load_converted(parsed)
    else:
        model = load_folder(_folder(ref))
    model.ref = ref
    return model.to(device).eval()


def _folder(ref: str) -> str:
    """A path reference that must be a save_pretrained folder."""
    if Path(ref).is_dir():
        return ref
    if Path(ref).is_file() or Path(ref).suffix in WEIGHT_SUFFIXES:
        raise StackbenchError(f"model {ref} is a weights file, not a reference: give paper:{ref} for the paper's "
                              f"checkpoints, ARCH:{ref} for a ViT's (e.g. vit-b16-masked:{ref}), or the "
                              "save_pretrained folder that holds it")
    raise StackbenchError(f"model folder {ref} does not exist; give a save_pretrained folder, a zoo name "
                          f"({', '.join(list_models())}), NAME@random, hf:REPO, paper:PATH or ARCH:PATH")


def _walled_object(model: torch.nn.Module) -> torch.nn.Module:
    """A user's model object: it must carry its wall (stackbench's walled models do); its `ref` names it."""
    if not isinstance(getattr(model, "wall", None), Wall):
        raise StackbenchError(f"model {type(model).__name__} object has no stackbench wall (`.wall`): build it with "
                              "stackbench.load_model(REF) or stackbench.models.create_model(NAME)")
    if not getattr(model, "ref", None):
        model.ref = f"object:{type(model).__name__}"
    return model


def load_published(name: str) -> torch.nn.Module:
    entry = get_entry(name)
    w = entry.weights
    if w is None:
        raise StackbenchError(f"model {name!r} has no published weights here; {entry.how_to_get}, "
                              f"or use {name}@random for a seeded random initialisation")
    if w.hub:
        return load_hub(w.hub)
    path = WEIGHTS_DIR / w.file
    if not path.is_file():
        raise StackbenchError(f"the shipped weights of {name!r} are missing ({path}); reinstall stackbench")
    if w.sha256 and file_sha256(path) != w.sha256:
        raise StackbenchError(f"the shipped weights of {name!r} ({path}) do not match their recorded sha256; "
                              "reinstall stackbench")
    with weights_to_come():
        model = create_model(name)
    _load_state(model, _read_safetensors(path, name), name)
    return model


def load_folder(path: str | Path, ref: str | None = None) -> torch.nn.Module:
    path = Path(path)
    ref = ref or str(path)
    cfg_file, weights = path / CONFIG, path / WEIGHTS
    if not cfg_file.is_file():
        raise StackbenchError(f"model folder {ref} has no {CONFIG}; it must be written by save_pretrained "
                              "(or `stackbench train`)")
    if not weights.is_file():
        other = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt*"))
        hint = (f" (found {', '.join(other)}: convert it with safetensors.torch.save_file, or load a state_dict "
                "with paper:PATH)") if other else ""
        raise StackbenchError(f"model folder {ref} has no {WEIGHTS}{hint}")
    try:
        config = json.loads(cfg_file.read_text())
        cls = architecture(config, ref)
        with weights_to_come():
            model = cls(**config)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as e:
        raise StackbenchError(f"model folder {ref}: {CONFIG} is not a stackbench model config ({first_line(e, 120)}); "
                              "write it with save_pretrained") from None
    _load_state(model, _read_safetensors(weights, ref), ref)
    return model


def architecture(config, ref: str) -> type:
    """The class a folder's config.json builds. It must name a zoo architecture and agree with it on what the name
    fixes (`ARCHITECTURE` of the class: num_classes, dropout and the head's init may differ per run): a config that
    says one network and builds another (a wrong name, another wall) would put a false name into every record."""
    if not isinstance(config, dict):
        raise TypeError("not a JSON object")
    name = config.get("name", "vgg16-masked")
    if name not in list_models():
        raise StackbenchError(f"model folder {ref}: {CONFIG} names architecture {name!r}, which is not a stackbench "
                              f"walled architecture ({', '.join(list_models())}); fix its name or re-save the model "
                              "with save_pretrained")
    with torch.device("meta"):  # the zoo's config without allocating its weights
        zoo_model = create_model(name, seed=None)
    zoo = zoo_model._hub_mixin_config
    cls, defaults = type(zoo_model), _defaults(type(zoo_model))
    # A key the config leaves out builds the class's default: compared as that (a minivit folder saved before the
    # stem and head were named builds a class-token ViT, not the zoo's)
    differ = [f"{k} {config.get(k, defaults.get(k))!r} (the zoo's {name} has {zoo.get(k, defaults.get(k))!r})"
              for k in cls.ARCHITECTURE if config.get(k, defaults.get(k)) != zoo.get(k, defaults.get(k))]
    if differ:
        raise StackbenchError(f"model folder {ref}: {CONFIG} says {name} but sets {'; '.join(differ)}: that is another "
                              f"network than its name; fix {CONFIG} or re-save the model with save_pretrained")
    return cls


def load_hub(spec: str) -> torch.nn.Module:
    """hf:REPO[@REV]: download config + safetensors with huggingface_hub, then the local-folder path."""
    from ..hub.fetch import snapshot

    parsed = model_ref(f"hf:{spec}")
    repo, rev = parsed.body, parsed.revision
    folder, commit = snapshot(f"hf:{spec}", repo, rev, allow_patterns=[CONFIG, WEIGHTS])
    model = load_folder(folder, ref=f"hf:{spec}")
    model.revision = commit
    return model


def load_paper(path: str, arch: str | None = None) -> torch.nn.Module:
    """The authors' `params_vgg16_masked.pt` / `params_vgg16_baseline.pt` (a plain state_dict)."""
    p = Path(path)
    ref = f"paper:{path}"
    if not p.is_file():
        raise StackbenchError(f"{ref}: no such file; download params_vgg16_masked.pt from the paper's repository "
                              "and give paper:PATH to it")
    arch = arch or ("vgg16" if "baseline" in p.name else "vgg16-masked")
    with weights_to_come():
        model = create_model(arch)
    _load_state(model, _torch_load(p, ref), ref)
    return model


def _torch_load(p: Path, ref: str):
    """A torch.save file, unpickled with weights_only=True (a checkpoint cannot run code)."""
    try:
        try:
            return torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):  # legacy (non-zip) files cannot be memory-mapped
                raise
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the same user error
        raise StackbenchError(f"{ref} is not a plain state_dict of tensors (torch.load with weights_only=True refused "
                              f"it: {first_line(e)}); re-save it with torch.save(model.state_dict(), PATH)") from None


def load_converted(parsed) -> torch.nn.Module:
    """ARCH:PATH / ARCH:hf:REPO[@REV]: another library's ViT weights with the wall of ARCH (models.vit_weights)."""
    from .vit_weights import to_walled, zoo_vit

    ref, arch = parsed.text, parsed.options["arch"]
    zoo = zoo_vit(arch, ref)  # a wrong name is refused before anything is read or downloaded
    if not parsed.body:
        raise StackbenchError(f"{ref} names no weights; write {arch}:PATH or {arch}:hf:REPO[@REV]")
    commit = None
    where = parsed.body
    if parsed.options.get("hub"):
        where, commit = _fetch_weights(ref, parsed.body, parsed.revision)
    state, config = _read_checkpoint(Path(where), ref)
    with weights_to_come():
        model, state = to_walled(zoo, state, config, ref)
    _load_state(model, state, ref)
    if commit:
        model.revision = commit
    return model


def _fetch_weights(ref: str, repo: str, revision: str | None) -> tuple[Path, str]:
    """config.json and model.safetensors, or pytorch_model.bin where a repo has no safetensors (never both: a
    ViT-B is 350 MB a copy)."""
    from ..hub.fetch import snapshot

    folder, commit = snapshot(ref, repo, revision, allow_patterns=[CONFIG, WEIGHTS])
    if not (folder / WEIGHTS).is_file():
        folder, commit = snapshot(ref, repo, revision, allow_patterns=[CONFIG, BIN_WEIGHTS])
    return folder, commit


def _read_checkpoint(path: Path, ref: str) -> tuple[dict, dict | None]:
    """(state dict, config.json or None) of a weights file or a save_pretrained folder."""
    config = None
    if path.is_dir():
        weights = next((path / n for n in (WEIGHTS, BIN_WEIGHTS) if (path / n).is_file()), None)
        if weights is None:
            raise StackbenchError(f"{ref}: folder {path} has neither {WEIGHTS} nor {BIN_WEIGHTS} (a sharded "
                                  "checkpoint is not read); give the weights file itself")
        if (path / CONFIG).is_file():
            try:
                config = json.loads((path / CONFIG).read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise StackbenchError(f"{ref}: {path / CONFIG} is not JSON ({first_line(e, 120)})") from None
    elif path.is_file():
        weights = path
    else:
        raise StackbenchError(f"{ref}: {path} does not exist; give a .safetensors, .bin, .pt or .pth file or a "
                              "save_pretrained folder")
    state = _read_safetensors(weights, ref) if weights.suffix == ".safetensors" else _torch_load(weights, ref)
    return _unwrap(state, ref), config


def _read_safetensors(path: Path, ref: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise StackbenchError(f"{ref}: {path.name} is not a readable safetensors file ({e}); "
                              "re-save it with save_pretrained") from None


def _unwrap(state, ref: str) -> dict[str, torch.Tensor]:
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise StackbenchError(f"{ref} holds a {type(state).__name__}, not a state_dict; "
                              "re-save it with torch.save(model.state_dict(), PATH)")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise StackbenchError(f"{ref} is not a state_dict of tensors (key {bad[0]!r} holds a "
                              f"{type(state[bad[0]]).__name__}); re-save it with torch.save(model.state_dict(), PATH)")
    # DataParallel / DDP checkpoints prefix every key.
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _load_state(model: torch.nn.Module, state, ref: str) -> None:
    state = _unwrap(state, ref)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        raise StackbenchError(f"{ref} does not fit {model.name}: {'; '.join(parts)}; is it a checkpoint of this "
                              "architecture?")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise StackbenchError(f"{ref} does not fit {model.name}: {k} has shape {tuple(state[k].shape)}, "
                                  f"expected {tuple(v.shape)}; is it a checkpoint of this architecture "
                                  "(num_classes, width)?")
    bad = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise StackbenchError(f"{ref} has non-finite weights (NaN or inf in {bad}); it cannot be evaluated: re-export "
                              "the model from a healthy checkpoint")
    model.load_state_dict(state, strict=True)
    first = next((m for m in model.modules() if isinstance(m, WallLinear)), None)
    if first is not None:
        leak = first.dead_weight_norm()
        if leak > 0:
            warnings.warn(f"{ref}: weights behind the wall are non-zero (max |w| = {leak:.3g}); the wall is "
                          "structural, so they are ignored, and they were set to zero", WallLeakWarning, stacklevel=3)
            first.zero_dead_()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_fingerprint(model: torch.nn.Module) -> str:
    """The weights' content fingerprint: sha256 over the name, dtype, shape and bytes of every state_dict entry,
    sorted. Not a hash of any file: the same weights saved as safetensors or .pt, or loaded from the Hub, give
    the same fingerprint (`file_sha256` hashes a file's bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
