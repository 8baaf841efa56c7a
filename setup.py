"""The package's layout; everything else is in pyproject.toml.

The top-level `generation/`, `cards/` and the board's `leaderboard/{tracks.json,reported/}` are mapped into
`stackbench/_data/` so the wheel carries them (which files: [tool.setuptools.package-data]); a clone reads them
in place (stackbench/resources.py).
"""
from setuptools import find_packages, setup

DATA = {"stackbench._data.generation": "generation", "stackbench._data.cards": "cards",
        "stackbench._data.board": "leaderboard"}

setup(packages=find_packages(include=["stackbench", "stackbench.*"]) + list(DATA), package_dir=DATA)
