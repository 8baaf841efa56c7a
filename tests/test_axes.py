"""The board's axes: hidden walls are exact, the harness scores mu behind them, deletion and randomisation, and
the board ranks (ties share a rank), groups identical maps, never ranks controls, and says what catches each."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from test_leaderboard import data, store, submit  # noqa: F401 - fixtures

from stackbench import leaderboard as lb
from stackbench import metrics as M
from stackbench.axes import Views, orientation_for, reinitialised
from stackbench.errors import StackbenchError
from stackbench.evaluate import aggregate_rows, evaluate, rows_table
from stackbench.methods import Backbone
from stackbench.models import create_model
from stackbench.models.variants import orient
from stackbench.standings import standings
from stackbench.wall import MOVING, ORIENTATIONS, Wall, apply, check, compose, dead_zone, inverse


def test_orientations_are_the_dihedral_group():
    x = torch.arange(12.0).view(3, 4)
    assert torch.equal(apply(x, "rot90"), torch.rot90(x, 1, (0, 1)))
    assert torch.equal(apply(x, "rot270"), torch.rot90(x, 3, (0, 1)))
    assert torch.equal(apply(x, "transpose"), x.T)
    for g in ORIENTATIONS:
        assert torch.equal(apply(apply(x, g), inverse(g)), x)
        assert np.array_equal(apply(x.numpy(), g), apply(x, g).numpy())
        for h in ORIENTATIONS:
            assert torch.equal(apply(apply(x, g), h), apply(x, compose(g, h)))
    sides = {g: Wall(orientation=g).side for g in ORIENTATIONS}
    assert {g for g, s in sides.items() if s == "bottom"} == {"identity", "hflip"} == set(ORIENTATIONS) - set(MOVING)
    assert sorted(sides[g] for g in MOVING) == ["left", "left", "right", "right", "top", "top"]


def _max_diff(model, g, x, ref=None):
    ref = model(x) if ref is None else ref  # a VGG16 forward is worth computing once per input
    return float((orient(model, g)(apply(x, g)) - ref).abs().max())


@torch.no_grad()
def test_every_orientation_is_exact_for_the_mini_model(mini_masked):
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    m64 = create_model("minivgg-masked", seed=0).eval().double()
    for g in ORIENTATIONS:
        assert _max_diff(mini_masked, g, x) <= 1e-5, g
        assert _max_diff(m64, g, x.double()) <= 1e-10, g


@torch.no_grad()
def test_every_orientation_is_exact_for_vgg16(vgg16_masked):
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    ref = vgg16_masked(x)
    for g in ORIENTATIONS:
        assert _max_diff(vgg16_masked, g, x, ref) <= 1e-5, g
    m64 = vgg16_masked.double()
    try:
        ref = m64(x.double())
        for g in ("rot90", "antitranspose"):  # one rotation and one reflection that move the wall, in fp64
            assert _max_diff(m64, g, x.double(), ref) <= 1e-10, g
    finally:
        vgg16_masked.float()


def test_traced_zone_of_each_orientation_is_the_transformed_zone(mini_masked):
    bottom = dead_zone(mini_masked).band_mask()
    for g in ORIENTATIONS:
        m = orient(mini_masked, g)
        zone = dead_zone(m)
        assert torch.equal(zone.band_mask(), apply(bottom, g)), g
        assert torch.equal(zone.band_mask(), m.wall.dead_mask()) and zone.matches(m.wall)
        assert check(m, zone=zone).holds(m.wall), g
    # a side wall traces as columns, and the old bottom rows are seen
    side = dead_zone(orient(mini_masked, "rot90"))
    assert side.columns == list(range(170, 224)) and side.rows == []
    assert not check(mini_masked, zone=side).identical


def test_backbone_crop_follows_the_orientation(mini_masked):
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    ref = mini_masked(x)
    for g in MOVING:
        m = orient(mini_masked, g)
        bb = Backbone(m)
        assert bb.live_lines == 176
        assert torch.allclose(bb.logits(apply(x, g)), ref, atol=1e-5)


def test_views_hide_the_wall_and_pick_a_different_random_init(mini_masked):
    views = Views(mini_masked, seed=0)
    for g in MOVING:
        bb = views.backbone(g)
        assert not hasattr(bb, "wall") and not hasattr(bb.model, "wall")
    assert Views(mini_masked, seed=0).rand_seed == 0
    assert Views(reinitialised(mini_masked, 0), seed=0).rand_seed == 1  # never the model itself
    assert orientation_for(0, 5) in MOVING
    assert len({orientation_for(0, i) for i in range(60)}) == 6


def test_metrics_of_the_new_axes():
    maps = np.zeros((2, 4, 4), np.float32)
    maps[1, 0, 0] = 1.0
    filled, empty = M.fill_empty(maps)
    assert empty.tolist() == [True, False] and (filled[0] == 1).all()
    assert M.mu(filled[:1], 3)[0] == pytest.approx(np.sqrt(1 / 4))
    seen = np.ones((4, 4), bool)
    order = M.deletion_order(filled, seen, seed=0, index=[0, 1])
    assert order[1, 0] == 0  # the salient pixel first
    assert sorted(order[0]) == list(range(16)) and order[0].tolist() != list(range(16))  # ties: seeded random
    assert M.deletion_auc([[1.0, 0.0]])[0] == 0.5 and M.deletion_auc([[1.0, 1.0, 1.0]])[0] == 1.0
    a = np.random.default_rng(0).random((3, 4, 4))
    b = a.copy()
    b[1] = -a[1]
    b[2] = 0.5
    r = M.rank_correlation(a, b, seen)
    assert r[0] == 1.0 and r[1] == pytest.approx(-1.0) and r[2] == 0.0
    assert M.rank_correlation(b[2:], b[2:], seen)[0] == 1.0  # identical constant maps


def _entry(name, hidden, auc, family="gradient", flags=None, digest="a" * 64):
    agg = lambda v: {"mean": v, "std": 0.0, "ci95": None, "n": 10, "n_empty": 0}  # noqa: E731
    srg = {"mean": 0.3, "std": 0.0, "ci95": [0.2, 0.4], "n": 10, "n_empty": 0}  # every row qualifies
    return {"name": name, "family": family, "schema": 3, "maps": {"s": digest},
            "flags": {"s": flags or {"orientation_dependent": False, "model_insensitive": False}},
            "metrics": {"s": {"mu": agg(hidden), "mu_hidden": agg(hidden), "deletion_auc": agg(auc), "srg": srg,
                              "rand_corr": agg(0.1)}}}


def test_ties_share_a_rank_and_flagged_rows_are_not_ranked():
    entries = [_entry("B", 0.0, 0.2, digest="1" * 64), _entry("A", 0.0, 0.2, digest="1" * 64),
               _entry("C", 0.00001, 0.2004, digest="2" * 64), _entry("D", 0.1, 0.1, digest="3" * 64),
               _entry("E", 0.0, 0.1, flags={"orientation_dependent": True, "model_insensitive": False}),
               _entry("K", 0.5, 0.5, family="control", digest="4" * 64)]
    placed = standings(entries, ["s"])
    got = [(s.name, s.rank, s.section) for s in placed]
    assert got == [("A", 1, "ranked"), ("B", 1, "ranked"), ("C", 1, "ranked"), ("D", 4, "ranked"),
                   ("E", None, "unranked"), ("K", None, "control")]
    assert [s.same_as for s in placed][:3] == [None, "A", None]
    assert placed[-1].caught_by == ["mu_hidden", "deletion_auc"]


@pytest.fixture(scope="module")
def controls_run(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("controls")
    runs = evaluate(["GradCAM", "HiResCAM", "ConstantSeen", "SobelSeen", "GradCAMZeroed", "RandomCAM"],
                    str(data / "mix"), "minivgg-masked", out=out, progress=False, device="cpu", figure=False)
    assert all(r.status == "done" for r in runs), [r.error for r in runs]
    return {r.name: r for r in runs}


def test_honest_methods_do_not_move_behind_hidden_walls(controls_run):
    # (RandomCAM's random weights follow the channels' order, which a hidden wall's re-parametrised model permutes)
    for name in ("GradCAM", "HiResCAM"):
        rec = controls_run[name].record
        rows = pq.read_table(controls_run[name].record_path.with_suffix(".parquet")).to_pylist()
        assert all(abs(r["mu_hidden"] - r["mu"]) <= 1e-6 for r in rows), name
        assert {r["orientation"] for r in rows} <= set(MOVING)
        assert not rec["flags"]["orientation_dependent"]
    rec = controls_run["GradCAM"].record
    assert rec["schema"] == "stackbench.result/3" and rec["axes"]["deletion"]["steps"] == 4
    assert rec["axes"]["road"]["steps"] == 4 and "reparametrised" in rec["axes"]["hidden"]
    columns = set(rec["rows"]["columns"])
    assert {"map_empty", "orientation", "mu_hidden", "deletion_auc", "morf_auc", "lerf_auc", "srg", "rand_corr",
            "rand_ssim", "map_sha256"} <= columns
    assert "empty" not in rec["rows"]["columns"]


@pytest.fixture
def mix_store(store):
    tracks = json.loads((store / "tracks.json").read_text())
    tracks["tracks"]["test"]["datasets"].pop("stack-gen")
    (store / "tracks.json").write_text(json.dumps(tracks))
    return store


def test_the_controls_are_caught_where_the_board_says(mix_store):
    store = mix_store
    for name in ("GradCAM", "XGradCAM", "ConstantSeen", "SobelSeen", "GradCAMZeroed", "RandomCAM"):
        submit(store, name)
    (entries,) = lb.board(store).values()
    by = {e["name"]: e for e in entries}
    assert {n for n, e in by.items() if e["section"] == "control"} == {"ConstantSeen", "SobelSeen", "GradCAMZeroed",
                                                                        "RandomCAM"}
    assert all(e["rank"] is None for e in by.values() if e["section"] == "control")
    for name in ("ConstantSeen", "SobelSeen", "GradCAMZeroed"):
        m = by[name]["metrics"]["stack-mix"]
        # mu alone is fooled (GradCAMZeroed's empty maps on this random model score as uniform maps) ...
        assert m["mu"]["mean"] == 0.0 or m["mu"]["n_empty"] > 0
        assert m["mu_hidden"]["mean"] > m["mu"]["mean"] + 0.1
        assert "orientation" in by[name]["caught_by"]  # ... a hidden wall is not
        assert any(f["orientation_dependent"] for f in by[name]["flags"].values())
    for name in ("ConstantSeen", "SobelSeen"):
        assert "randomisation" in by[name]["caught_by"]
        assert all(f["model_insensitive"] for f in by[name]["flags"].values())
    assert by["RandomCAM"]["caught_by"], "the board names an axis for every control"
    text = lb.render_markdown(store)
    assert "Controls (never ranked)" in text and "caught by: orientation, randomisation" in text


def test_a_schema_1_record_is_listed_and_not_rerun(store):
    (path, _) = submit(store, "GradCAM")
    rows = pq.read_table(path.with_suffix(".parquet")).to_pylist()
    old = [{"id": r["id"], "index": r["index"], "label": r["label"], "target": r["target"], "predicted": r["predicted"],
            "mu": r["mu"], "dead_mass": r["dead_mass"], "leak_rate": r["leak_rate"], "empty": r["map_empty"]}
           for r in rows]
    blob = rows_table(old)
    rec = json.loads(path.read_text())
    for k in ("axes", "flags", "maps"):
        rec.pop(k)
    rec["schema"] = "stackbench.result/1"
    rec["metrics"] = aggregate_rows(old, rec["seeds"]["bootstrap"])
    rec["rows"].update(sha256=__import__("hashlib").sha256(blob).hexdigest(), columns=list(old[0]))
    rec["model"]["wall"].pop("orientation")
    path.with_suffix(".parquet").write_bytes(blob)
    path.write_text(json.dumps(rec))
    verdicts = {v.row.split("/")[1]: v for v in lb.verify(store=store, device="cpu")}
    assert verdicts["stack-mix"].status == lb.NOT_RERUN and "schema 1" in verdicts["stack-mix"].message
    assert verdicts["stack-gen"].passed
    (entries,) = lb.board(store).values()
    assert entries[0]["section"] == "unranked" and "resubmit" in entries[0]["notes"][0]


def test_stored_flags_and_axes_must_agree_with_the_rows(mix_store):
    (path,) = submit(mix_store, "GradCAM")
    good = path.read_text()
    rec = json.loads(good)
    rec["flags"]["orientation_dependent"] = True  # would unrank an honest method (or, set False, rank a cheat)
    path.write_text(json.dumps(rec))
    (v,) = lb.verify(store=mix_store, rerun=False)
    assert v.failed and "flags.orientation_dependent = True but the per-image rows give False" in v.message
    rec = json.loads(good)
    rec["axes"]["hidden"]["tolerance"] = 0.5  # a looser tolerance to go with a forged flag
    path.write_text(json.dumps(rec))
    (v,) = lb.verify(store=mix_store, rerun=False)
    assert v.failed and "field axes is not what this stackbench measures" in v.message


SCRIBBLER = '''
from stackbench.methods import SaliencyMethod


class Scribbler(SaliencyMethod):
    name = "Scribbler"
    needs = frozenset({"activations"})

    def explain(self, batch):
        out = batch.activations.clamp(min=0).sum(1)
        batch.x.mul_(0)
        batch.x01.mul_(0)
        batch.activations.mul_(0)
        return out
'''


def test_a_method_that_writes_into_its_batch_changes_no_other_score(controls_run, data, tmp_path):
    plugin = tmp_path / "scribbler.py"
    plugin.write_text(SCRIBBLER)
    runs = evaluate([f"{plugin}:Scribbler", "GradCAM"], str(data / "mix"), "minivgg-masked", out=tmp_path / "o",
                    progress=False, device="cpu", figure=False)
    alone = controls_run["GradCAM"].record["metrics"]
    assert runs[1].record["metrics"] == alone


def test_bad_controls_config_and_saving_an_oriented_model_are_refused(mini_masked, tmp_path):
    from stackbench.methods import get_method

    for bad in (-5, 170.5, "abc", None, True):
        with pytest.raises(StackbenchError, match="wall_row"):
            get_method("ConstantSeen", wall_row=bad)
    with pytest.raises(StackbenchError, match="re-oriented"):
        orient(mini_masked, "rot90").save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_wall_command_checks_its_options():
    from click.testing import CliRunner

    from stackbench.cli import main

    for args in (["--traces", "0"], ["--traces", "-3"], ["--orientation", "sideways"]):
        res = CliRunner().invoke(main, ["wall", "--model", "minivgg-masked@random", *args])
        assert res.exit_code == 2 and "Traceback" not in res.output, args


def test_axes_on_a_sample_match_a_full_run_and_never_make_a_board_row(controls_run, data, mix_store,
                                                                       tmp_path):
    from click.testing import CliRunner

    from stackbench.axes import Axes
    from stackbench.cli import main

    runs = evaluate(["GradCAM", "ConstantSeen"], str(data / "mix"), "minivgg-masked", out=tmp_path / "s",
                    progress=False, device="cpu", figure=False, axes=Axes(sample=3))
    for r in runs:
        rows = pq.read_table(r.record_path.with_suffix(".parquet")).to_pylist()
        full = {row["index"]: row for row in pq.read_table(
            controls_run[r.name].record_path.with_suffix(".parquet")).to_pylist()}
        got = [row for row in rows if row["orientation"] is not None]
        assert len(got) == 3 and len(rows) == 8
        for row in got:  # the same image gets the same orientation and values as in a run on every image
            ref = full[row["index"]]
            assert row["orientation"] == ref["orientation"] and row["mu"] == ref["mu"]
            for k in ("mu_hidden", "deletion_auc", "rand_corr"):
                assert row[k] == pytest.approx(ref[k], abs=1e-6), k
        assert all(row[k] is None for row in rows if row["orientation"] is None
                   for k in ("mu_hidden", "hidden_empty", "deletion_auc", "rand_corr"))
        m = r.record["metrics"]
        assert m["mu"]["n"] == 8 and m["mu_hidden"]["n"] == m["deletion_auc"]["n"] == m["rand_corr"]["n"] == 3
        assert r.record["axes"]["sample"]["images"] == 3
    by = {r.name: r.record["flags"] for r in runs}
    assert by["GradCAM"] == {"orientation_dependent": False, "model_insensitive": False}  # mu on the same 3 images
    assert by["ConstantSeen"] == {"orientation_dependent": True, "model_insensitive": True}
    # a "sample" of every image is the full measurement: same rows, no sample in the record
    (whole,) = evaluate(["GradCAM"], str(data / "mix"), "minivgg-masked", out=tmp_path / "w", progress=False,
                        device="cpu", figure=False, axes=Axes(sample=8))
    assert "sample" not in whole.record["axes"]
    assert whole.record["rows"]["sha256"] == controls_run["GradCAM"].record["rows"]["sha256"]
    # a sampled record is never a board row, with or without its `sample` field
    (path,) = submit(mix_store, "GradCAM")
    good = path.read_text()
    rec = json.loads(good)
    rec["axes"]["sample"] = runs[0].record["axes"]["sample"]
    path.write_text(json.dumps(rec))
    (v,) = lb.verify(store=mix_store, rerun=False)
    assert v.failed and "measured on a sample of 3 images" in v.message
    rec.pop("axes")  # a careful forger drops the field and keeps rows and aggregates consistent
    rec = json.loads(good)
    rows = pq.read_table(path.with_suffix(".parquet")).to_pylist()
    for row in rows[3:]:
        row.update(orientation=None, mu_hidden=None, hidden_empty=None, deletion_auc=None, rand_corr=None)
    blob = rows_table(rows)
    rec["metrics"] = aggregate_rows(rows, rec["seeds"]["bootstrap"])
    rec["rows"]["sha256"] = __import__("hashlib").sha256(blob).hexdigest()
    path.with_suffix(".parquet").write_bytes(blob)
    path.write_text(json.dumps(rec))
    (v,) = lb.verify(store=mix_store, rerun=False)
    assert v.failed and "were not measured on 5 of its 8 images" in v.message, v.message

    for bad in ("0", "-2", "x"):
        res = CliRunner().invoke(main, ["evaluate", "--method", "GradCAM", "--dataset", str(data / "mix"),
                                        "--axes-images", bad, "--out", str(tmp_path / "bad")])
        assert res.exit_code == 2 and "--axes-images" in res.output and not (tmp_path / "bad").exists()
    with pytest.raises(StackbenchError, match="axes-images"):
        Axes(sample=True)


def test_axes_none_is_the_papers_protocol_and_never_a_board_row(controls_run, data, mix_store, tmp_path):
    from click.testing import CliRunner

    from stackbench.cli import main
    from stackbench.errors import Refused
    from stackbench.records import validate_record

    runs = evaluate(["GradCAM", "ConstantSeen"], str(data / "mix"), "minivgg-masked", out=tmp_path / "n",
                    progress=False, device="cpu", figure=False, axes="none")
    for r in runs:
        rows = pq.read_table(r.record_path.with_suffix(".parquet")).to_pylist()
        full = {row["index"]: row for row in pq.read_table(
            controls_run[r.name].record_path.with_suffix(".parquet")).to_pylist()}
        assert [row["mu"] for row in rows] == [full[row["index"]]["mu"] for row in rows]  # the same mu, bitwise
        assert all(row[k] is None for row in rows for k in ("orientation", "mu_hidden", "deletion_auc", "srg",
                                                            "rand_corr", "rand_ssim"))
        rec = r.record
        assert rec["axes"] == {"measured": "none", "empty_rule": M.EMPTY_RULE}
        assert rec["flags"] == {"orientation_dependent": None, "model_insensitive": None}  # not measured, not False
        assert rec["metrics"]["mu"] == controls_run[r.name].record["metrics"]["mu"]
        assert all(rec["metrics"][k]["n"] == 0 for k in ("mu_hidden", "deletion_auc", "srg", "rand_corr"))
    # a record may not claim "none" and carry axis numbers
    forged = json.loads(json.dumps(controls_run["GradCAM"].record))
    forged["axes"] = runs[0].record["axes"]
    forged["flags"] = runs[0].record["flags"]
    with pytest.raises(StackbenchError, match="field axes.measured|metrics.mu_hidden is given"):
        validate_record(forged)
    # verify and build refuse such a row with the line that says how to make one
    (path,) = submit(mix_store, "GradCAM")
    rec = {**runs[0].record, "track": "test", "submission": json.loads(path.read_text())["submission"]}
    blob = runs[0].record_path.with_suffix(".parquet").read_bytes()
    path.with_suffix(".parquet").write_bytes(blob)
    path.write_text(json.dumps({**rec, "rows": {**rec["rows"], "file": path.with_suffix(".parquet").name}}))
    (v,) = lb.verify(store=mix_store, rerun=False)
    assert v.failed and "the board's axes were not measured (evaluate --axes none" in v.message, v.message
    assert "stackbench submit" in v.message
    with pytest.raises(Refused, match="axes none"):
        lb.build(mix_store)
    # the CLI: --axes none, and the one line for a contradiction or a wrong value
    for args, said in ((["--axes", "none", "--axes-images", "3"], "--axes none measures no axes"),
                       (["--axes", "some"], "--axes")):
        res = CliRunner().invoke(main, ["evaluate", "--method", "GradCAM", "--dataset", str(data / "mix"), *args,
                                        "--out", str(tmp_path / "bad")])
        assert res.exit_code == 2 and said in res.output and not (tmp_path / "bad").exists(), res.output
    res = CliRunner().invoke(main, ["evaluate", "--method", "HiResCAM", "--dataset", str(data / "mix"), "--axes",
                                    "none", "--model", "minivgg-masked", "--out", str(tmp_path / "cli"),
                                    "--no-progress", "--device", "cpu"])
    assert res.exit_code == 0 and "not measured (--axes none" in res.output, res.output
    with pytest.raises(StackbenchError, match="give 'all', 'none'"):
        evaluate(["GradCAM"], str(data / "mix"), "minivgg-masked", out=tmp_path / "x", axes="some")
