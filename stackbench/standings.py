"""How the board orders its rows (docs/leaderboard.md): pure functions of board entries.

- **Qualified first.** A row is ranked only if it explains this model at all: on every dataset of the track its
  symmetric relevance gain (SRG: LeRF AUC - MoRF AUC with ROAD's fill) is above the uniform map's (the
  ConstantSeen control) by more than both confidence intervals (the row's 95% interval lies above the control's;
  above 0 when the store holds no such control), and the randomisation check does not flag it. Otherwise it is
  listed as *uninformative*, with the axis that says so. The bar is the uniform map, not RandomCAM: RandomCAM
  weighs the model's own activations, so it carries information (SRG 0.10 on the mini STACK-MIX, as EigenCAM), and
  a bar there would drop EigenCAM; a ranked row not above RandomCAM says so in its notes.
- **Ranked by mu behind a hidden wall, by its confidence interval.** The qualified rows in order of mu_hidden
  (mean over the track's datasets); a row whose interval (the mean of the datasets' 95% bounds) overlaps the
  interval of the first row of the group above shares that row's rank; within a group, by SRG (higher first), then
  deletion AUC.
- Listed, not ranked: rows flagged orientation-dependent (mu_hidden differs from mu beyond the record's
  tolerance) and records of an older schema (an axis not measured).
- Controls (family `control`): their own section, never ranked; each says which axes catch it.
- Methods whose scored maps are bitwise identical on every image (per-image map digests) are grouped.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from .metrics import METRICS

AXES_SHOWN = {"mu_hidden": METRICS["mu_hidden"].title, "deletion_auc": METRICS["deletion_auc"].title,
              "srg": METRICS["srg"].title, "orientation": "hidden walls (orientation-dependent)",
              "randomisation": "randomisation check", "mu": METRICS["mu"].title}
BAR_CONTROL = "ConstantSeen"    # the uniform map on the seen part: no information, the qualification's bar
RANDOM_CONTROL = "RandomCAM"    # random weights over the model's activations: a ranked row below it is noted
CURRENT = 3  # the record schema whose rows measure every axis the standings read


def mean_over(entry: dict, metric: str, datasets) -> float | None:
    """Mean over the track's datasets of the metric's mean (None when a dataset lacks it)."""
    vals = [(entry["metrics"].get(d) or {}).get(metric, {}).get("mean") for d in datasets if d in entry["metrics"]]
    return sum(vals) / len(vals) if vals and all(v is not None for v in vals) else None


def _ci(entry: dict, dataset: str, metric: str) -> list[float] | None:
    """The metric's 95% interval on one dataset (None when the entry lacks it)."""
    return ((entry["metrics"].get(dataset) or {}).get(metric) or {}).get("ci95")


def interval_over(entry: dict, metric: str, datasets) -> tuple[float, float] | None:
    """The metric's 95% interval over the track's datasets: the mean of their bounds (None when one lacks it)."""
    cis = [_ci(entry, d, metric) for d in datasets if d in entry["metrics"]]
    if not cis or not all(cis):
        return None
    return sum(c[0] for c in cis) / len(cis), sum(c[1] for c in cis) / len(cis)


@dataclass
class Standing:
    entry: dict
    rank: int | None = None                 # None: not ranked
    section: str = "ranked"                 # ranked | uninformative | unranked | control
    notes: list[str] = field(default_factory=list)
    same_as: str | None = None              # first row with bitwise identical maps
    caught_by: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.entry["name"]


def shown_key(entry: dict, datasets) -> tuple:
    """The order within the board's sections: (mu_hidden x100 to 0.1, -SRG, deletion AUC to 0.001)."""
    h, d, g = (mean_over(entry, m, datasets) for m in ("mu_hidden", "deletion_auc", "srg"))
    inf = float("inf")
    return (round(100 * h, 1) if h is not None else inf, -round(g, 3) if g is not None else inf,
            round(d, 3) if d is not None else inf)


def flags_of(entry: dict) -> list[str]:
    """Why a row is listed but not ranked: an older schema, or the hidden walls' flag."""
    if entry.get("schema", CURRENT) < CURRENT:
        return [f"schema {entry.get('schema')} record (an axis of the board not measured): resubmit"]
    if any(f.get("orientation_dependent") for f in entry["flags"].values()):
        return ["orientation-dependent: mu behind a hidden wall differs from mu"]
    return []


def bar(entries: list[dict], datasets, control: str = BAR_CONTROL) -> dict[str, float]:
    """{dataset: the SRG a row's interval must lie above}: the upper bound of the control's SRG interval there (0
    when the store holds no such row)."""
    out = {}
    for d in datasets:
        highs = [_ci(e, d, "srg") for e in entries
                 if e.get("family") == "control" and e.get("method", e["name"]) == control]
        out[d] = max([0.0] + [c[1] for c in highs if c])
    return out


def _not_above(entry: dict, datasets, bars: dict[str, float]) -> list[str]:
    """The datasets on which the row's SRG interval does not lie above the bar."""
    return [d for d in datasets
            if d in entry["metrics"] and not ((ci := _ci(entry, d, "srg")) and ci[0] > bars[d])]


def uninformative(entry: dict, datasets, bars: dict[str, float]) -> list[str]:
    """Why a row does not qualify as an explanation of the model ([] when it does)."""
    below = _not_above(entry, datasets, bars)
    why = [f"uninformative (faithfulness): SRG on {', '.join(below)} not above the uniform map's"] if below else []
    if any(f.get("model_insensitive") for f in entry["flags"].values()):
        why.append("uninformative (randomisation): about the same map on a re-initialised model")
    return why


def standings(entries: list[dict], datasets) -> list[Standing]:
    """Every entry placed: ranked rows first (in order), then the uninformative, the unranked, then the controls."""
    out = [Standing(e) for e in entries]
    bars, random_bars = bar(entries, datasets), bar(entries, datasets, RANDOM_CONTROL)
    for s in out:
        old, why = flags_of(s.entry), []
        if not old or "schema" not in old[0]:
            why = uninformative(s.entry, datasets, bars)
        s.notes = why + old
        if s.entry.get("family") == "control":
            s.section = "control"
        else:
            s.section = "uninformative" if why else ("unranked" if old else "ranked")
        ranked = s.section == "ranked" and any(random_bars.values())
        if ranked and (below := _not_above(s.entry, datasets, random_bars)):
            s.notes.append(f"SRG on {', '.join(below)} not above RandomCAM's")
    ranked = _ranked([s for s in out if s.section == "ranked"], datasets)
    rest = [s for key in ("uninformative", "unranked")
            for s in sorted((s for s in out if s.section == key), key=lambda s: (shown_key(s.entry, datasets), s.name))]
    controls = sorted((s for s in out if s.section == "control"), key=lambda s: s.name)
    placed = ranked + rest + controls
    _group_same_maps(placed, datasets)
    _caught(controls, ranked, datasets, bars)
    return placed


def _ranked(rows: list[Standing], datasets) -> list[Standing]:
    """The qualified rows in groups by mu_hidden's interval (a row joins the group of the first row above it whose
    interval its own overlaps), each group by SRG then deletion AUC, sharing the rank of its first place."""
    def hidden(s):
        v = mean_over(s.entry, "mu_hidden", datasets)
        return float("inf") if v is None else v

    rows = sorted(rows, key=lambda s: (hidden(s), s.name))
    groups: list[list[Standing]] = []
    for s in rows:
        mine, lead = interval_over(s.entry, "mu_hidden", datasets), groups[-1][0] if groups else None
        theirs = interval_over(lead.entry, "mu_hidden", datasets) if lead else None
        if lead and mine and theirs and mine[0] <= theirs[1]:
            groups[-1].append(s)
        elif lead and not (mine and theirs) and shown_key(s.entry, datasets)[0] == shown_key(lead.entry, datasets)[0]:
            groups[-1].append(s)  # no interval (a hand-made entry): equal as shown
        else:
            groups.append([s])
    out = []
    for g in groups:
        rank = len(out) + 1
        for s in sorted(g, key=lambda s: (shown_key(s.entry, datasets)[1:], s.name)):
            s.rank = rank
            out.append(s)
    return out


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


def _caught(controls: list[Standing], ranked: list[Standing], datasets, bars: dict[str, float]) -> None:
    """A control is caught by each flag it raises, by the qualification (SRG not above the bar), and by each metric
    on which it is worse than the median ranked row."""
    for c in controls:
        flags = c.entry["flags"].values()
        c.caught_by = [axis for axis, key in (("orientation", "orientation_dependent"),
                                              ("randomisation", "model_insensitive")) if any(f.get(key) for f in flags)]
        if any("faithfulness" in w for w in uninformative(c.entry, datasets, bars)):
            c.caught_by.append("srg")
        for metric in ("mu_hidden", "deletion_auc"):
            mine = mean_over(c.entry, metric, datasets)
            others = [v for v in (mean_over(s.entry, metric, datasets) for s in ranked) if v is not None]
            if mine is not None and others and mine > statistics.median(others):
                c.caught_by.append(metric)
