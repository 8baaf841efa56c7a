"""Fetching a snapshot from the Hugging Face Hub: one place for models, datasets and diffusion checkpoints."""
from __future__ import annotations

from pathlib import Path

from ..errors import StackbenchError, first_line


def snapshot(ref: str, repo: str, revision: str | None = None, repo_type: str = "model",
             allow_patterns=None, ignore_patterns=None) -> tuple[Path, str]:
    """Download (or find in the cache) a repo snapshot; returns (folder, commit). The snapshot folder is named by
    the commit it holds, so that is what records pin. Any failure is one line naming `ref`."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id=repo, repo_type=repo_type, revision=revision or None,
                                        allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
    except Exception as e:  # noqa: BLE001 - network, auth and not-found all need the same advice
        raise StackbenchError(f"{ref}: could not fetch it from the Hugging Face Hub ({first_line(e)}); "
                              "check the repo id, the revision, the network and your login") from None
    return folder, folder.name
