"""The summary printed after an evaluation: a Table-1-style row per method and the notes under the table."""
from __future__ import annotations

from .. import metrics as M
from ..records import axes_measured, axes_sample
from .state import MethodRun

# The metric columns, headed and formatted as metrics.METRICS says.
SHOWN = ("mu", "dead_mass", "leak_rate", "mu_hidden", "deletion_auc", "rand_corr")
SUMMARY_HEADERS = ["method", "n", "n_empty", M.METRICS["mu"].label, "95% CI",
                   *(M.METRICS[k].label for k in SHOWN[1:]), "flags", "model top-1", "img/s", "status"]

# A model's top-1 on the scored images within this factor of chance (1/classes) is warned about: its maps explain
# guesses. 2x: a 10-class model below 20% (the 13.5% model), a 1000-class model below 0.2%.
NEAR_CHANCE = 2.0


def _mean(m: dict, k: str) -> str:
    """The metric's mean as the table shows it ("-" when the record has none)."""
    return M.METRICS[k].show((m.get(k) or {}).get("mean"))


def summary_rows(runs: list[MethodRun]) -> list[list]:
    """Table-1-style rows: method, n, n_empty, mu x100 mean +- std, 95% CI, dead mass, leak rate, then the board's
    axes (mu behind a hidden wall, deletion AUC, rand. corr, flags), img/s, status."""
    return [_summary_row(r) for r in runs]


def _summary_row(r: MethodRun) -> list:
    if r.record is None:
        return [r.name, *["-"] * (len(SUMMARY_HEADERS) - 2), f"FAILED: {r.error}"]
    m = r.record["metrics"]
    mu, show = m["mu"], M.METRICS["mu"].show
    ci = "-" if mu["ci95"] is None else f"[{show(mu['ci95'][0])}, {show(mu['ci95'][1])}]"
    ips = r.record["timing"].get("images_per_s")
    flags = [k.replace("_", "-") for k, v in (r.record.get("flags") or {}).items() if v]
    acc = (r.record.get("accuracy") or {}).get("top1")
    return [r.name, mu["n"], mu["n_empty"], f"{show(mu['mean'])} ± {show(mu['std'])}", ci,
            *(_mean(m, k) for k in SHOWN[1:]), ", ".join(flags) or "-",
            "-" if acc is None else f"{acc:.1%}", "-" if ips is None else f"{ips:.2f}",
            "resumed" if r.status == "skipped" else "done"]


def near_chance(acc: dict | None) -> bool:
    return bool(acc) and acc.get("top1") is not None and acc["top1"] < NEAR_CHANCE * acc["chance"]


def accuracy_note(runs: list[MethodRun]) -> str | None:
    """One line when the model's top-1 on the scored images is near chance, or could not be measured because the
    dataset's labels name other classes than the model's."""
    rec = next((r.record for r in runs if r.record and r.record.get("accuracy")), None)
    if rec is None:
        return None
    acc, model = rec["accuracy"], rec["model"]["ref"]
    if acc["top1"] is None:
        return (f"model top-1 not measured: the dataset's labels name other classes than model {model}'s (mu is "
                "still measured, on the classes the model predicts)")
    if near_chance(acc):
        return (f"warning: model {model} has top-1 {acc['top1']:.1%} on these {acc['n']} images, near chance "
                f"({acc['chance']:.1%}; warned below {NEAR_CHANCE:g}x chance): its maps explain guesses, not a "
                "trained classifier's decisions; check the model and that the dataset fits it")
    return None


def sample_note(runs: list[MethodRun]) -> str | None:
    """One line when the axes ran on a sample (the summary's axis columns are over those images only) or on none."""
    records = [r.record for r in runs if r.record]
    if any(not axes_measured(rec) for rec in records):
        return ("the board's axes not measured (--axes none: the paper's protocol, mu and its companions alone); "
                "such a record is not a board row")
    k = axes_sample(records)
    return None if k is None else (
        f"the board's axes (mu hidden, deletion AUC, rand. corr, flags) on a seeded sample of {M.images_phrase(k)} "
        "(the rows with an orientation), mu on every image; such a record is not a board row")


def summary_notes(runs: list[MethodRun]) -> list[str]:
    """The lines printed under the summary table: the axes' sample, the model's accuracy when it is suspect."""
    return [n for n in (sample_note(runs), accuracy_note(runs)) if n]
