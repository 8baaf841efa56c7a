"""Publishing dataset and model folders to the Hugging Face Hub, validated first, in one commit.

huggingface_hub does the work: `create_repo`, then one `create_commit` with every file, so a publish is atomic
on the Hub side. The token is never touched here: HfApi reads it from HF_TOKEN or the saved login itself, so
it cannot end up in output or in a file.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, DatasetCard, HfApi, ModelCard

from .. import datafolder as df
from ..errors import StackbenchError, first_line


@dataclass
class Plan:
    """What a publish sends: checked files, their place in the repo, the commit message."""

    repo_id: str
    repo_type: str  # "dataset" | "model"
    folder: Path
    files: list[tuple[str, int]]  # (path in repo, bytes), sorted
    message: str
    private: bool = False
    revision: str | None = None
    checks: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        total = sum(size for _, size in self.files)
        lines = [f"{self.repo_type} repo {self.repo_id}" + (f" @ {self.revision}" if self.revision else "") +
                 (" (private)" if self.private else ""), f"commit message: {self.message}",
                 f"{len(self.files)} files, {_size(total)}:"]
        lines += [f"  {path}  {_size(size)}" for path, size in self.files]
        lines += [f"checked: {c}" for c in self.checks]
        return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _files(folder: Path, patterns: tuple[str, ...]) -> list[tuple[str, int]]:
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts) \
                and any(fnmatch.fnmatch(rel, pat) for pat in patterns):
            out.append((rel, p.stat().st_size))
    return out


def _card_metadata(card_path: Path, card_cls, what: str) -> dict:
    """Parse the card with huggingface_hub (YAML header -> CardData) and return its metadata."""
    if not card_path.is_file():
        raise StackbenchError(f"{card_path.parent} has no README.md card; regenerate the {what} folder")
    try:
        card = card_cls.load(card_path)
        data = card.data.to_dict()
    except Exception as e:  # noqa: BLE001 - any YAML / card error is the same user error
        raise StackbenchError(f"{card_path}: the card's YAML header does not parse ({first_line(e)}); "
                              f"fix or regenerate the {what} card") from None
    if not data:
        raise StackbenchError(f"{card_path}: the card has no YAML metadata; regenerate the {what} card")
    return data


def plan_dataset(folder: str | Path, repo_id: str, private: bool = False, revision: str | None = None) -> Plan:
    folder = Path(folder)
    if not folder.is_dir():
        raise StackbenchError(f"dataset folder {folder} does not exist; run `stackbench generate` first")
    meta = _card_metadata(folder / "README.md", DatasetCard, "dataset")
    checks = ["card YAML parses (huggingface_hub)"]
    configs = meta.get("configs") or []
    if not configs:
        raise StackbenchError(f"{folder}/README.md has no `configs` in its YAML; the Hub would not know the data "
                              "files: regenerate the card")
    for config in configs:
        data_files = config.get("data_files") or []
        for entry in data_files if isinstance(data_files, list) else [data_files]:
            paths = entry.get("path") if isinstance(entry, dict) else entry
            for pattern in paths if isinstance(paths, list) else [paths]:
                if not list(folder.glob(pattern)):
                    raise StackbenchError(f"{folder}: the card's data file pattern {pattern!r} "
                                          f"(config {config.get('config_name')!r}) matches no file")
    checks.append("every configs data file exists")
    generation = df.read_generation(folder)
    shards = df.list_shards(folder)
    if generation.get("shards") and len(shards) != generation["shards"]:
        raise StackbenchError(f"{folder} has {len(shards)} shards but generation.json records {generation['shards']}; "
                              "resume the generation (rerun the same command) before publishing")
    _, info = df.open_dataset(str(folder))
    if generation.get("n") is not None and info["n"] != generation["n"]:
        raise StackbenchError(f"{folder} holds {info['n']} rows but generation.json records {generation['n']}")
    if generation.get("fingerprint") and info["fingerprint"] != generation["fingerprint"]:
        raise StackbenchError(f"{folder}: the shards do not match the fingerprint in generation.json (edited after "
                              "generation?); regenerate the folder")
    checks.append(f"{info['n']} rows load with datasets; fingerprint {info['fingerprint'][:12]} matches")
    files = _files(folder, ("README.md", df.GENERATION, f"{df.DATA_DIR}/*.parquet"))
    message = (f"stackbench: {generation.get('kind', 'dataset')} ({info['n']} images, fingerprint "
               f"{info['fingerprint'][:12]})")
    return Plan(repo_id, "dataset", folder, files, message, private, revision, checks)


def plan_model(folder: str | Path, repo_id: str, private: bool = False, revision: str | None = None) -> Plan:
    from ..models import load_model, weights_fingerprint
    from ..wall import check

    folder = Path(folder)
    if not folder.is_dir():
        raise StackbenchError(f"model folder {folder} does not exist; write it with `stackbench train` or "
                              "save_pretrained")
    model = load_model(str(folder))
    sha = weights_fingerprint(model)
    checks = [f"loads with from_pretrained ({model.name}, sha256 {sha[:12]})"]
    if (folder / "README.md").is_file():
        _card_metadata(folder / "README.md", ModelCard, "model")
        checks.append("card YAML parses (huggingface_hub)")
        # the card sends readers to the run record: publish it with the card, or refuse a folder that lost it
        if "train.json" in (folder / "README.md").read_text(errors="replace") and not (folder / "train.json").is_file():
            raise StackbenchError(f"model folder {folder}: its card points to train.json, which is missing; copy the "
                                  "training run's train.json next to it (or remove the card) before publishing")
    result = check(model, model.input_size)
    if model.walled and not result.holds(model.wall):
        raise StackbenchError(f"model folder {folder} fails the wall check ({result}); not publishing")
    checks.append(f"wall check: {result}")
    files = _files(folder, ("README.md", "config.json", "model.safetensors", "train.json", "*.jsonl", "*.csv"))
    return Plan(repo_id, "model", folder, files, f"stackbench: {model.name} ({sha[:12]})",
                private, revision, checks)


def plan_folder(folder: str | Path, repo_id: str, patterns: tuple[str, ...], message: str, checks: list[str],
                private: bool = False, revision: str | None = None, repo_type: str = "dataset") -> Plan:
    """A plan for the files of an already checked `folder` that match `patterns` (hidden files never go)."""
    folder = Path(folder)
    return Plan(repo_id, repo_type, folder, _files(folder, patterns), message, private, revision, checks)


def publish(plan: Plan, api: HfApi | None = None) -> str:
    """Create the repo (and branch) if needed and send every file in one commit; returns the commit URL."""
    api = api or HfApi()
    ops = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(plan.folder / path)) for path, _ in plan.files]
    try:
        api.create_repo(plan.repo_id, repo_type=plan.repo_type, private=plan.private, exist_ok=True)
        if plan.revision:
            api.create_branch(plan.repo_id, branch=plan.revision, repo_type=plan.repo_type, exist_ok=True)
        info = api.create_commit(plan.repo_id, operations=ops, commit_message=plan.message, repo_type=plan.repo_type,
                                 revision=plan.revision)
    except Exception as e:  # noqa: BLE001 - the Hub's client raises many kinds (HTTP, connection, auth, OS)
        raise StackbenchError(f"publishing to {plan.repo_id} on the Hub failed ({first_line(e, 160)}): check the "
                              "network (HF_ENDPOINT), your token (HF_TOKEN or `hf auth login`) and the repo id, then "
                              "run the same command again; the commit is all or nothing, so no file was sent") from None
    return getattr(info, "commit_url", str(info))
