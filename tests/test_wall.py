import pytest
import torch

from stackbench.models import create_model
from stackbench.wall import Wall, check, dead_zone, format_rows, live_input_rows, logits_unchanged, wall_for

PAPER_ROWS = list(range(170, 224))


def test_wall_geometry_matches_the_paper(mini_masked):
    w = mini_masked.wall
    assert (w.grid, w.masked_rows, w.dead_from) == ((14, 14), 9, 170)
    assert list(w.dead_rows) == PAPER_ROWS and w.dead_height == 54
    assert round(100 * w.share, 1) == 24.1
    mask = w.feature_mask()
    assert mask[:5].eq(1).all() and mask[5:].eq(0).all()
    assert Wall.from_dict(w.to_dict()) == w
    assert w.rows_at(512) == range(389, 512)  # the band at a generator's native size


def test_receptive_field_arithmetic():
    # one 3x3 conv (pad 1) on 8 rows: feature rows 0..3 see input rows 0..4
    assert live_input_rows([(3, 1, 1)], (0, 3), 8) == (0, 4)
    # a 2x2 pool after it doubles: feature rows 0..1 -> conv rows 0..3 -> input rows 0..4
    assert live_input_rows([(3, 1, 1), (2, 2, 0)], (0, 1), 8) == (0, 4)
    w = wall_for([(3, 1, 1), (2, 2, 0)], (8, 8), masked_rows=2)
    assert w.grid == (4, 4) and list(w.dead_rows) == [5, 6, 7]
    assert list(wall_for([(3, 1, 1)], (8, 8), 0).dead_rows) == []


def test_format_rows():
    assert format_rows(range(170, 224)) == "170..223"
    assert format_rows([1, 2, 5]) == "1..2, 5"
    assert format_rows([]) == "none"


def test_traced_dead_zone_mini(mini_masked, mini_plain):
    zone = dead_zone(mini_masked, traces=4, seed=0)
    assert zone.rows == PAPER_ROWS
    assert zone.mask[170:].all()
    assert dead_zone(mini_plain, traces=4, seed=0).rows == []


def test_traced_dead_zone_vgg16(vgg16_masked):
    assert dead_zone(vgg16_masked, traces=2, seed=0).rows == PAPER_ROWS


def test_vgg16_unmasked_has_no_dead_zone():
    model = create_model("vgg16", seed=0).eval()
    assert dead_zone(model, traces=2, seed=0).rows == []
    # and noise in the paper's dead band changes its logits
    assert not logits_unchanged(model, PAPER_ROWS, trials=1).identical


@pytest.mark.parametrize("fixture", ["mini_masked", "vgg16_masked"])
def test_noise_behind_the_wall_leaves_logits_bitwise_identical(fixture, request):
    model = request.getfixturevalue(fixture)
    result = logits_unchanged(model, PAPER_ROWS, trials=2, seed=5)
    assert result.identical and result.max_abs_diff == 0.0
    # one row above the wall is seen
    assert not logits_unchanged(model, [169], trials=2, seed=5).identical


def test_noise_in_the_band_changes_unmasked_logits(mini_plain):
    result = logits_unchanged(mini_plain, PAPER_ROWS, trials=2)
    assert not result.identical and result.max_abs_diff > 0


def test_wall_is_structural_even_with_weights_behind_it():
    model = create_model("minivgg-masked", seed=1).eval()
    first = model.head[-1][0]
    with torch.no_grad():
        first.weight[:, first.dead] = torch.randn_like(first.weight[:, first.dead])
    assert first.dead_weight_norm() > 0
    result = check(model, traces=4, seed=0)
    assert result.rows == PAPER_ROWS and result.identical


def test_wall_survives_a_training_step():
    model = create_model("minivgg-masked", seed=2)
    first = model.head[-1][0]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(4, 3, 224, 224), torch.tensor([0, 1, 2, 3])
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        assert first.weight.grad[:, first.dead].abs().max() == 0  # no gradient ever reaches them
        opt.step()
    assert first.dead_weight_norm() == 0
    assert check(model.eval(), traces=4).identical
