"""References: what a string given for a model, a dataset, a method, an image source or a diffusion checkpoint
names, parsed in one place (timm's `parse_model_name` is the model), and `--device`, checked in one place.

    model       NAME (zoo) | NAME@random | PATH (save_pretrained folder) | hf:REPO[@REV] | paper:PATH
                | ARCH:PATH | ARCH:hf:REPO[@REV] (another library's ViT weights, walled as the zoo's ARCH)
    dataset     PATH (a folder stackbench generate wrote) | hf:REPO[@REV]
    method      NAME (registered or an entry point) | module:attr | path/file.py:attr | entry-point:NAME=VALUE
    source      shapes[:N][@SEED] | imagefolder:PATH | hf:REPO[:CONFIG]
    checkpoint  PATH (a diffusers folder) | REPO (a Hub id)

A parse says what the reference is (`Ref.scheme`, `.body`, `.revision`, `.options`); opening it is the job of
the module that owns the thing (models.loading, datafolder, methods.registry, sources, generate.pipelines). This
module imports nothing heavy (`stackbench --help` stays fast) and nothing of the package but its errors.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .constants import SOURCE_HELP
from .errors import StackbenchError

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
# A link stackbench stores or shows: http(s), and no space, quote, angle bracket or parenthesis (any of them could
# end a Markdown link or an HTML attribute early).
HTTP_URL = re.compile(r"^https?://[^\s<>\"'()]+$", flags=re.I)
_SHAPES = re.compile(r"^shapes(?::(\d+))?(?:@(\d+))?$")
# ARCH:WHERE. ARCH has two or more characters and no slash: `C:\...` (a Windows drive) and `runs/a:b` stay paths.
_ARCH = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]+):(.*)$", flags=re.S)


@dataclass(frozen=True)
class Ref:
    """One parsed reference. `scheme`: hf, paper, random, path, zoo, arch (models: options["arch"] the zoo name,
    options["hub"] whether `body` is a Hub repo); hf, path (datasets); name, module,
    file, entry-point (methods); shapes, imagefolder, hf (sources); path, hub (checkpoints)."""

    text: str
    scheme: str
    body: str
    revision: str | None = None
    options: dict = field(default_factory=dict, compare=False)

    def __str__(self) -> str:
        return self.text


def _split_revision(body: str, text: str) -> tuple[str, str | None]:
    """REPO[@REV] -> (REPO, REV or None); an empty REPO or REV is refused here, before anything is fetched."""
    head, at, rev = body.partition("@")
    if not head or (at and not rev):
        hf = text[: len(text) - len(body)]  # hf: or ARCH:hf:, as typed
        raise StackbenchError(f"{text!r}: {'no repository' if not head else 'an empty revision after @'}; write "
                              f"{hf}OWNER/REPO or {hf}OWNER/REPO@REVISION (a branch, tag or commit)")
    return head, rev or None


def model_ref(text: str) -> Ref:
    """A model reference (the checks that need the model code, such as an unknown zoo name, are the loader's)."""
    if text.startswith("hf:"):
        repo, rev = _split_revision(text[3:], text)
        return Ref(text, "hf", repo, rev)
    if text.startswith("paper:"):
        return Ref(text, "paper", text[6:])
    arch = _ARCH.match(text)
    if arch and not Path(text).exists():  # a file or folder of that name is a path, as it always was
        name, where = arch.groups()
        if where.startswith("hf:"):
            repo, rev = _split_revision(where[3:], text)
            return Ref(text, "arch", repo, rev, options={"arch": name, "hub": True})
        return Ref(text, "arch", where, options={"arch": name, "hub": False})
    if text.endswith("@random"):
        return Ref(text, "random", text[: -len("@random")])
    p = Path(text)
    if p.exists() or p.suffix in WEIGHT_SUFFIXES or "/" in text or text.startswith("."):
        return Ref(text, "path", text)
    return Ref(text, "zoo", text)


def dataset_ref(text: str) -> Ref:
    if text.startswith("hf:"):
        repo, rev = _split_revision(text[3:], text)
        return Ref(text, "hf", repo, rev)
    return Ref(text, "path", text)


def source_ref(text: str) -> Ref:
    """An image source; one line naming the forms when it is none of them."""
    text = (text or "").strip()
    if text.startswith("imagefolder:"):
        return Ref(text, "imagefolder", text[len("imagefolder:"):])
    if text.startswith("hf:"):
        repo, _, config = text[3:].partition(":")
        if not repo:
            raise StackbenchError(f"source {text!r} names no dataset; write hf:REPO or hf:REPO:CONFIG")
        return Ref(text, "hf", repo, options={"config": config or None})
    m = _SHAPES.match(text)
    if m:
        n, seed = m.group(1) and int(m.group(1)), int(m.group(2) or 0)
        return Ref(text, "shapes", "shapes", options={"n": n, "seed": seed})
    raise StackbenchError(f"unknown source {text!r}; give {SOURCE_HELP}")


def method_ref(text: str, recorded: bool = False) -> Ref:
    """A method spec. `module:attr` and `path/file.py:attr` carry the attribute in options["attr"]. `recorded`: a
    record's method source, where `entry-point:NAME=VALUE` names the installed entry point NAME (on the command
    line that form is a module:attr like any other)."""
    if recorded and text.startswith("entry-point:"):
        return Ref(text, "entry-point", text.split(":", 1)[1].split("=", 1)[0])
    where, sep, attr = text.rpartition(":")
    if not sep:
        return Ref(text, "name", text)
    if not where or not attr:
        raise StackbenchError(f"method plugin {text!r} must look like module:attr or path/to/file.py:attr")
    is_file = where.endswith(".py") or "/" in where or "\\" in where
    return Ref(text, "file" if is_file else "module", where, options={"attr": attr})


def checkpoint_ref(text: str) -> Ref:
    """A diffusion checkpoint: a local folder as it is, anything else a Hub id."""
    local = Path(text)
    if local.is_dir() or text.startswith((".", "/")) or local.exists():
        return Ref(text, "path", text)
    return Ref(text, "hub", text)


def distributed_state():
    """accelerate's PartialState when launched as several processes (`accelerate launch`, torchrun; gloo on CPU),
    else None."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def agree(refusal: str | None, state=None) -> None:
    """The main process' refusal (a line, or None), raised in every process of accelerate's `state` (none waits
    forever at a barrier for a main process that stopped); alone, raised here."""
    if state is not None and state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        refusal = broadcast_object_list([refusal])[0]
    if refusal:
        raise StackbenchError(refusal)


def one_process(command: str) -> None:
    """Refuse a job that is not written for several processes (the demo, reproduce, submit) under accelerate
    launch or torchrun: each process would run the whole job into the same folders."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise StackbenchError(f"stackbench {command} runs as one process, not under accelerate launch or torchrun; "
                              "give it --num-proc N to share its evaluation (accelerate launch serves generate, "
                              "train and evaluate)")


def pick_device(device: str, state=None):
    """A torch.device for auto (this process' accelerator under `accelerate launch` (`state`), else cuda if
    present, else cpu), cpu, cuda, cuda:N, mps or xpu; one clear error otherwise. torch is imported here, not at
    the top: `stackbench --help` must stay fast."""
    import torch

    if device == "auto":
        if state is not None:
            return torch.device(state.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise StackbenchError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise StackbenchError(f"--device {device}: CUDA is not available here; use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise StackbenchError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda", "mps", "xpu") or (dev.type == "cpu" and dev.index not in (None, 0)):
        raise StackbenchError(f"--device {device}: unsupported device; use auto, cpu, cuda or cuda:N")
    backend = getattr(torch.backends, "mps", None) if dev.type == "mps" else getattr(torch, "xpu", None)
    if dev.type in ("mps", "xpu") and not (backend is not None and backend.is_available()):
        raise StackbenchError(f"--device {device}: {dev.type} is not available here; use --device cpu or auto")
    return dev
