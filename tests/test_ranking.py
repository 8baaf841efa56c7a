"""The board ranks explanations, not masks: ROAD's fill, SRG, the magnitude-aware randomisation check, hidden walls a
method cannot look up, the qualification before a rank, and badges only a full verify writes."""
import json

import numpy as np
import pytest
import torch
from test_leaderboard import data, store, submit  # noqa: F401 - fixtures

from stackbench import metrics as M
from stackbench.errors import Refused
from stackbench.imputation import road_fill, road_noise
from stackbench.models.variants import orient, reparametrise
from stackbench.standings import standings
from stackbench.wall import ORIENTATIONS


def test_road_fill_solves_roads_system():
    """The batched cascade against the authors' sparse solve (pytorch-grad-cam's NoisyLinearImputer, no noise) on a
    smooth image with a blob and scattered pixels removed."""
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    h, w = 48, 64
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([torch.sin(3 * xx) + yy, torch.cos(2 * yy) * xx, xx * yy]).float()
    keep = torch.rand(h, w, generator=torch.Generator().manual_seed(0)) > 0.3
    keep[10:30, 20:50] = False  # a large hole: the solve, not a neighbour average, fills it
    ref = NoisyLinearImputer(noise=0.0)(img, keep.float())
    got = road_fill(img[None], keep[None, None])[0]
    assert torch.equal(got[:, keep], img[:, keep])  # kept pixels untouched
    err = (got - ref)[:, ~keep].abs()
    span = float(img.max() - img.min())
    assert float(err.mean()) < 0.02 * span and float(err.max()) < 0.1 * span  # measured: 1% and 3-4%
    noise = road_noise(img.shape, [[0]])
    noisy = road_fill(img[None], keep[None, None], noise)[0]
    assert torch.equal(noise, road_noise(img.shape, [[0]])) and not torch.equal(noise, road_noise(img.shape, [[1]]))
    assert torch.equal(noisy[:, ~keep], got[:, ~keep] + noise[0][:, ~keep])  # on the filled pixels only
    assert torch.equal(noisy[:, keep], img[:, keep]) and 0.005 < float(noise.std()) < 0.02
    nothing = road_fill(img[None], torch.zeros(1, 1, h, w, dtype=torch.bool))
    assert torch.equal(nothing, torch.zeros_like(nothing))


def test_ssim_is_scikit_images_and_sees_a_constant():
    skimage = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 224, 224)), rng.random((2, 224, 224))
    cells = np.zeros((224, 224), bool)
    cells[:170] = True
    got = M.structural_similarity(a, b, cells)
    for j in range(2):
        ref = skimage.structural_similarity(a[j, :170] / a[j, :170].max(), b[j, :170] / b[j, :170].max(),
                                            data_range=1)
        assert got[j] == pytest.approx(ref, abs=1e-12)
    # a map dominated by a constant: the rank correlation sees only the small detail, SSIM sees the constant
    g1, g2 = rng.random((224, 224)), rng.random((224, 224))
    c1, c2 = 0.9 + 1e-3 * g1, 0.9 + 1e-3 * g2
    assert abs(M.rank_correlation(c1[None], c2[None], cells)[0]) < 0.05
    assert M.structural_similarity(c1[None], c2[None], cells)[0] > 0.99
    assert M.structural_similarity(g1[None], g2[None], cells)[0] < 0.1
    assert M.srg([0.2], [0.5])[0] == pytest.approx(0.3)


@torch.no_grad()
def test_reparametrised_views_compute_the_same_function_from_weights_no_checkpoint_has(mini_masked):
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    for g in ("rot90", "hflip"):
        ref = orient(mini_masked, g)
        rep = reparametrise(ref, [0, 4, 1])
        assert float((rep(x) - ref(x)).abs().max()) <= 1e-5
        m64 = reparametrise(ref.double(), [0, 4, 1])
        assert float((m64(x.double()) - ref.double()(x.double())).abs().max()) <= 1e-10
        # the weight-matching route: the first conv's kernels against every orientation of the published weights
        first = rep[0].weight
        published = [orient(mini_masked, h)[0].weight for h in ORIENTATIONS]
        assert not any(torch.allclose(first, p, atol=1e-6) for p in published)
        # ... and no published channel appears as it is
        flat = [p.flatten(1) for p in published]
        assert not any(torch.allclose(k, q, atol=1e-6) for k in first.flatten(1)[:3] for p in flat for q in p)
    # the target layer's channels are permuted, never scaled (CAMs that read magnitudes see the same maps)
    ref, rep = mini_masked, reparametrise(mini_masked, [1])
    a = torch.nn.Sequential(*list(ref)[:-2])(x).flatten(2).norm(dim=2)
    b = torch.nn.Sequential(*list(rep)[:-2])(x).flatten(2).norm(dim=2)
    assert torch.allclose(a.sort(dim=1).values, b.sort(dim=1).values, atol=1e-5)
    assert not torch.allclose(a, b)


def _agg(mean, half=0.01):
    return {"mean": mean, "std": 0.0, "ci95": [mean - half, mean + half], "n": 50, "n_empty": 0}


def _entry(name, hidden, srg, family="gradient", half=0.01, insensitive=False):
    return {"name": name, "method": name, "family": family, "schema": 3, "maps": {"s": name * 8},
            "flags": {"s": {"orientation_dependent": False, "model_insensitive": insensitive}},
            "metrics": {"s": {"mu": _agg(hidden), "mu_hidden": _agg(hidden, half), "deletion_auc": _agg(0.2),
                              "srg": _agg(srg), "rand_corr": _agg(0.1)}}}


def test_a_row_is_ranked_only_if_it_explains_and_overlapping_intervals_share_a_rank():
    entries = [_entry("RandomCAM", 0.4, 0.35, family="control"), _entry("ConstantSeen", 0.3, 0.0, family="control"),
               _entry("Honest", 0.0, 0.30), _entry("Close", 0.005, 0.40), _entry("Far", 0.2, 0.5),
               _entry("Junk", 0.0, 0.02), _entry("Blind", 0.0, 0.3, insensitive=True)]
    placed = {s.name: s for s in standings(entries, ["s"])}
    assert [placed[n].rank for n in ("Close", "Honest", "Far")] == [1, 1, 3]  # one group, by SRG within
    assert placed["Junk"].section == "uninformative" and "faithfulness" in placed["Junk"].notes[0]
    assert placed["Blind"].section == "uninformative" and "randomisation" in placed["Blind"].notes[0]
    assert placed["ConstantSeen"].section == "control" and "srg" in placed["ConstantSeen"].caught_by
    assert "not above RandomCAM's" in placed["Honest"].notes[-1] and not placed["Close"].notes
    order = [s.name for s in standings(entries, ["s"])]
    assert order.index("Far") < order.index("Junk") < order.index("RandomCAM")


# ------------------------------------------------------------------------------------------ the attacks, on the board

ATTACKS = "tests/attacks.py"


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A track on the shipped mini model and 32 STACK-MIX images, with the uniform-map control and GradCAM, and the
    methods that find the wall and then show anything at all."""
    from pathlib import Path

    from stackbench import leaderboard as lb
    from stackbench.generate import generate_stack_mix

    base = tmp_path_factory.mktemp("ranking")
    generate_stack_mix(base / "mix", source="shapes", split="test", num_images=32, layout="fit", progress=False)
    store = base / "board"
    store.mkdir()
    (store / "tracks.json").write_text(json.dumps({"tracks": {"t": {
        "description": "the mini model on 32 images", "model": "minivgg-masked",
        "datasets": {"stack-mix": {"path": str(base / "mix")}}, "batch_size": 16}}}))
    root = Path(__file__).resolve().parent.parent
    for m in ("ConstantSeen", "GradCAM", *(f"{root / ATTACKS}:{a}" for a in (
            "GradTracedZeroed", "HashNoiseZeroed", "ConstantSeenDetect", "ConstantPlusGradCAM"))):
        lb.submit(m, "t", store=store, progress=False, device="cpu")
    (entries,) = lb.board(store).values()
    return store, {e["name"]: e for e in entries}


def test_a_method_that_finds_the_wall_is_ranked_only_if_it_explains(board):
    _, by = board
    # allowed: the model's own gradient support masks GradCAM; still an explanation, zero behind every wall
    traced = by["GradTracedZeroed"]
    assert traced["section"] == "ranked" and traced["rank"] == 1, traced["notes"]
    assert traced["metrics"]["stack-mix"]["mu_hidden"]["mean"] == 0.0
    assert by["GradCAM"]["section"] == "ranked" and by["GradCAM"]["rank"] > 1
    # junk that is zero behind every wall, and ConstantSeen answering the views it tells apart: not explanations
    for name in ("HashNoiseZeroed", "ConstantSeenDetect"):
        assert by[name]["section"] == "uninformative", (name, by[name]["notes"])
        assert any("faithfulness" in n for n in by[name]["notes"])
    assert by["HashNoiseZeroed"]["metrics"]["stack-mix"]["mu_hidden"]["mean"] == 0.0
    # a map that is almost all constant keeps GradCAM's rank correlation but not its SSIM
    mixed = by["ConstantPlusGradCAM"]
    m = mixed["metrics"]["stack-mix"]
    assert m["rand_corr"]["mean"] < 0.8 <= m["rand_ssim"]["mean"]
    assert mixed["flags"]["stack-mix"]["model_insensitive"] and mixed["section"] == "uninformative"
    assert any("randomisation" in n for n in mixed["notes"])
    # the honest rows' own randomisation numbers
    assert by["GradCAM"]["metrics"]["stack-mix"]["rand_ssim"]["mean"] < 0.5


def test_the_ranking_reads_in_the_rendered_board(board):
    from stackbench import leaderboard as lb

    store, _ = board
    text = lb.render_markdown(store)
    assert "### Uninformative" in text and "| SRG |" in text and "rand. SSIM" in text
    ranked = text.split("### Ranked", 1)[1].split("###", 1)[0]
    assert "GradTracedZeroed" in ranked and "HashNoiseZeroed" not in ranked and "ConstantSeenDetect" not in ranked


# ------------------------------------------------------------------------------------------ the badge

def _tamper(store, path):
    """What a forger does to a stored row: one per-image value changed, the aggregates and the rows' sha256
    recomputed, so that every static check passes."""
    import hashlib

    import pyarrow.parquet as pq

    from stackbench.evaluate import aggregate_rows, rows_table

    rows = pq.read_table(path.with_suffix(".parquet")).to_pylist()
    rows[0]["srg"] = rows[0]["srg"] + 0.5
    blob = rows_table(rows)
    rec = json.loads(path.read_text())
    rec["metrics"] = aggregate_rows(rows, rec["seeds"]["bootstrap"])
    rec["rows"]["sha256"] = hashlib.sha256(blob).hexdigest()
    path.with_suffix(".parquet").write_bytes(blob)
    path.write_text(json.dumps(rec, indent=2))


def test_only_a_full_verify_writes_the_badges_and_a_forged_one_is_refused(store, tmp_path):
    from click.testing import CliRunner

    from stackbench import leaderboard as lb
    from stackbench.cli import main
    from stackbench.leaderboard.badges import store_digest

    paths = submit(store, "GradCAM")
    assert lb.read_verified(store) == {}  # nothing verified yet
    v = lb.verify(store=store, device="cpu", progress=False)
    assert all(x.passed for x in v) and v.badges.written and not v.badges.forged
    assert len(lb.read_verified(store)) == 2
    assert all(e["reproduced"] for e in lb.board(store)["test"])
    # a partial verify, or one in another environment, leaves the file alone
    before = (store / "verified.json").read_bytes()
    v = lb.verify(store=store, device="cpu", progress=False, skip=("nothing",))
    assert not v.badges.written and "only a verify of every stored row" in v.badges.message
    data = json.loads(before)
    data["run"]["environment"]["torch"] = "0.0"
    (store / "verified.json").write_text(json.dumps(data))
    v = lb.verify(store=store, device="cpu", progress=False)
    assert not v.badges.written and "another environment (torch" in v.badges.message
    (store / "verified.json").write_bytes(before)
    # a date is all a badge shows: anything else in its place shows no badge
    data = json.loads(before)
    first = next(iter(data["rows"]))
    data["rows"][first]["date"] = "<b>2099-99-99</b>"
    (store / "verified.json").write_text(json.dumps(data))
    assert sum(bool(d) for e in lb.board(store)["test"] for d in e["reproduced"].values()) == 1
    (store / "verified.json").write_text("[1]")  # refused by verify --no-rerun as by build
    with pytest.raises(Refused, match="verified.json: not a verify"):
        lb.verify(store=store, rerun=False)
    (store / "verified.json").write_bytes(before)
    # a track's settings are part of what was verified
    tracks = (store / "tracks.json").read_text()
    (store / "tracks.json").write_text(tracks.replace('"batch_size": 8', '"batch_size": 4'))
    assert lb.read_verified(store) == {}
    (store / "tracks.json").write_text(tracks)
    # a forged row with a forged badge: the static checks pass and the board shows the badge (nothing offline can
    # tell), but the board's full verify re-runs the row, refuses the badge and drops it
    _tamper(store, paths[0])
    static = lb.verify(store=store, rerun=False)
    assert not any(x.failed for x in static), [x.message for x in static]
    assert lb.read_verified(store) == {}  # the store changed: no badge until the next full verify
    data = json.loads(before)
    row = lb.row_key(store, paths[0])
    data["rows"][row].update(record_sha256=_sha(paths[0]), rows_sha256=_sha(paths[0].with_suffix(".parquet")))
    data["run"]["store"] = store_digest(store)
    (store / "verified.json").write_text(json.dumps(data))
    assert all(e["reproduced"] for e in lb.board(store)["test"])
    result = CliRunner().invoke(main, ["leaderboard", "verify", "--store", str(store), "--no-progress"])
    assert result.exit_code == 1 and f"refused: verified.json named {row} as reproduced" in result.output
    assert row not in lb.read_verified(store) and len(lb.read_verified(store)) == 1


def _sha(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_submit_prints_the_rules_the_readme_states(store):
    import re
    from pathlib import Path

    from click.testing import CliRunner

    from stackbench import leaderboard as lb
    from stackbench.cli import main

    flat = lambda t: re.sub(r"\s+", " ", t)  # noqa: E731
    page = Path(__file__).resolve().parent.parent / "docs" / "leaderboard.md"
    readme = flat(page.read_text().split("## Submit your method")[1])
    for rule in lb.RULES:  # the manual's list says each rule as a clause of one sentence
        assert flat(rule[0].lower() + rule[1:]).rstrip(".") in readme, rule
    result = CliRunner().invoke(main, ["submit", "--method", "GradCAM", "--track", "test", "--store", str(store),
                                       "--no-progress", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert lb.rules_text() in result.output and result.output.count("- [ ] ") == len(lb.RULES)
