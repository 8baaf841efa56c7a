"""The board's card: README.md of the Hub dataset that `stackbench publish leaderboard` sends (template:
cards/leaderboard_card.md)."""
from __future__ import annotations

from pathlib import Path

from ..resources import resource
from .common import save_card

TEMPLATE = ("cards", "leaderboard_card.md")


def render_card():
    from huggingface_hub import DatasetCard

    return DatasetCard(resource(*TEMPLATE).read_text())


def write_card(folder: str | Path) -> Path:
    return save_card(folder, render_card())
