"""The board's layout on the Hugging Face Hub: the store as a Parquet dataset (data/results.parquet, one row per
record with the record itself in a `record` column; data/rows.parquet, every per-image row), the raw store files
and the board's card, checked first and sent by `stackbench.hub.publish` in one commit."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..cards.board import write_card
from ..datafolder import atomic_open, atomic_write_bytes
from ..errors import StackbenchError
from ..hub.upload import Plan, plan_folder
from ..records import METRICS, weights_fingerprint_of
from .checks import verify
from .store import METHODS_DIR, VERIFIED, stored_rows


def plan_leaderboard(store: str | Path, repo_id: str, private: bool = False, revision: str | None = None) -> Plan:
    """The leaderboard store as a Parquet dataset: data/results.parquet (one row per record, the record itself in
    a `record` column), data/rows.parquet (every per-image row), the raw store files and a card. Every row is
    checked first (schema, rows hash, aggregates, pins; no re-run)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = Path(store)
    bad = [v for v in verify(store=store, rerun=False) if v.failed]
    if bad:
        raise StackbenchError(f"leaderboard row {bad[0].row} does not verify ({bad[0].message}); fix it before "
                              "publishing")
    stage = store / ".hub"
    shutil.rmtree(stage, ignore_errors=True)  # derived: staged afresh, so a row removed from the store is not sent
    results, rows = _board_tables(store)
    for name, table in (("results", results), ("rows", rows)):
        with atomic_open(stage / "data" / f"{name}.parquet") as f:
            pq.write_table(pa.Table.from_pylist(table), f)
    write_card(stage)
    for p in sorted((store / "results").rglob("*")) + sorted((store / METHODS_DIR).rglob("*")) + \
            [store / "tracks.json", store / VERIFIED]:
        if p.is_file():
            atomic_write_bytes(stage / p.relative_to(store), p.read_bytes())
    return plan_folder(stage, repo_id, ("README.md", "data/*.parquet", "results/*", f"{METHODS_DIR}/*",
                                        "tracks.json", VERIFIED), f"stackbench leaderboard: {len(results)} records",
                       [f"{len(results)} records verify (schema, rows, aggregates, pins)"], private, revision)


def _board_tables(store: Path) -> tuple[list[dict], list[dict]]:
    """(one row per record, every per-image row) of a store."""
    import pyarrow.parquet as pq

    results, rows = [], []
    for path in stored_rows(store):
        rec = json.loads(path.read_text())
        key = path.relative_to(store / "results").parts
        sub = rec.get("submission", {})
        results.append({"track": key[0], "dataset": key[1], "model": rec["model"]["ref"], "row": path.stem,
                        "name": sub.get("name"), "author": sub.get("author"), "url": sub.get("url"),
                        "submitted": sub.get("submitted"), "method": rec["method"]["name"],
                        **{f"{m}_{k}": rec["metrics"][m][k] for m in METRICS
                           for k in ("mean", "std", "n", "n_empty")},
                        "dataset_fingerprint": rec["dataset"]["fingerprint"],
                        "model_fingerprint": weights_fingerprint_of(rec),
                        "record": json.dumps(rec, sort_keys=True)})
        for r in pq.read_table(path.with_suffix(".parquet")).to_pylist():
            rows.append({"track": key[0], "dataset": key[1], "row": path.stem, **r})
    return results, rows
