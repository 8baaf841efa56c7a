"""How the board orders its rows (README, "Leaderboard"): pure functions of board entries.

- Ranked: the main order is mu_hidden (mu behind a hidden wall), then deletion AUC in the seen part, both as
  shown (x100 to one decimal, AUC to three decimals): rows equal on both share a rank (1, 1, 3).
- Listed, not ranked: rows flagged orientation-dependent (mu_hidden differs from mu beyond the record's
  tolerance) or model-insensitive (randomisation check), and schema 1 records (no hidden wall measured).
- Controls (family `control`): their own section, never ranked; each says which axes catch it.
- Methods whose scored maps are bitwise identical on every image (per-image map digests) are grouped.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from .metrics import METRICS

AXES_SHOWN = {"mu_hidden": METRICS["mu_hidden"].title, "deletion_auc": METRICS["deletion_auc"].title,
              "orientation": "hidden walls (orientation-dependent)", "randomisation": "randomisation check",
              "mu": METRICS["mu"].title}


def mean_over(entry: dict, metric: str, datasets) -> float | None:
    """Mean over the track's datasets of the metric's mean (None when a dataset lacks it)."""
    vals = [(entry["metrics"].get(d) or {}).get(metric, {}).get("mean") for d in datasets if d in entry["metrics"]]
    return sum(vals) / len(vals) if vals and all(v is not None for v in vals) else None


@dataclass
class Standing:
    entry: dict
    rank: int | None = None                 # None: not ranked
    section: str = "ranked"                 # ranked | unranked | control
    notes: list[str] = field(default_factory=list)
    same_as: str | None = None              # first row with bitwise identical maps
    caught_by: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.entry["name"]


def shown_key(entry: dict, datasets) -> tuple:
    """The ranking key as the board shows it: (mu_hidden x100 to 0.1, deletion AUC to 0.001)."""
    h, d = mean_over(entry, "mu_hidden", datasets), mean_over(entry, "deletion_auc", datasets)
    return (round(100 * h, 1) if h is not None else float("inf"), round(d, 3) if d is not None else float("inf"))


def flags_of(entry: dict) -> list[str]:
    notes = []
    if entry.get("schema") != 2:
        notes.append("schema 1 record (no hidden wall, deletion or randomisation): resubmit")
    if any(f.get("orientation_dependent") for f in entry["flags"].values()):
        notes.append("orientation-dependent: mu behind a hidden wall differs from mu")
    if any(f.get("model_insensitive") for f in entry["flags"].values()):
        notes.append("model-insensitive: about the same map on a re-initialised model")
    return notes


def standings(entries: list[dict], datasets) -> list[Standing]:
    """Every entry placed: ranked rows first (in order), then the unranked, then the controls."""
    out = [Standing(e) for e in entries]
    for s in out:
        s.notes = flags_of(s.entry)
        s.section = "control" if s.entry.get("family") == "control" else ("unranked" if s.notes else "ranked")
    ranked = sorted((s for s in out if s.section == "ranked"), key=lambda s: (shown_key(s.entry, datasets), s.name))
    for i, s in enumerate(ranked):
        prev = ranked[i - 1] if i else None
        s.rank = prev.rank if prev and shown_key(prev.entry, datasets) == shown_key(s.entry, datasets) else i + 1
    rest = sorted((s for s in out if s.section == "unranked"), key=lambda s: (shown_key(s.entry, datasets), s.name))
    controls = sorted((s for s in out if s.section == "control"), key=lambda s: s.name)
    placed = ranked + rest + controls
    _group_same_maps(placed, datasets)
    _caught(controls, ranked, datasets)
    return placed


def _group_same_maps(placed: list[Standing], datasets) -> None:
    first: dict[tuple, str] = {}
    for s in placed:
        digests = tuple(s.entry["maps"].get(d) for d in datasets)
        if not all(digests):
            continue
        if digests in first:
            s.same_as = first[digests]
        else:
            first[digests] = s.name


def _caught(controls: list[Standing], ranked: list[Standing], datasets) -> None:
    """A control is caught by each flag it raises, and by each metric on which it is worse than the median ranked
    row (lower is better on all of them)."""
    for c in controls:
        flags = flags_of(c.entry)
        c.caught_by = [axis for axis, word in (("orientation", "orientation-dependent"),
                                               ("randomisation", "model-insensitive")) if any(word in f for f in flags)]
        for metric in ("mu_hidden", "deletion_auc"):
            mine = mean_over(c.entry, metric, datasets)
            others = [v for v in (mean_over(s.entry, metric, datasets) for s in ranked) if v is not None]
            if mine is not None and others and mine > statistics.median(others):
                c.caught_by.append(metric)
