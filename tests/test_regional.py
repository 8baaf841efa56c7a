"""Regional prompting and CLIP verification on a tiny random Stable Diffusion pipeline (no network)."""
import numpy as np
import pytest
from PIL import Image

from stackbench import StackbenchError
from stackbench.generate.pipelines import load_pipeline, random_pipeline, save_random_clip
from stackbench.generate.regional import Layout, generate_regional
from stackbench.generate.verify import ClipVerifier

H = W = 64
BAND = round(170 * H / 224)
LAYOUT = Layout.for_wall(H, W, BAND)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd") / "tiny-sd"
    random_pipeline("tiny", seed=0).save_pretrained(folder)
    return load_pipeline(str(folder))  # the real --model PATH code path


def gen(pipe, bottom="the dog", seeds=(1,), scene="grass"):
    n = len(seeds)
    bottoms = [bottom] * n if isinstance(bottom, str) else bottom
    return generate_regional(pipe, LAYOUT, [scene] * n, ["the dog"] * n, bottoms, ["blurry"] * n, list(seeds), steps=3,
                             output_type="np")


def test_layout_masks_partition_the_canvas():
    assert LAYOUT.bottom_box[1] == BAND and LAYOUT.bottom_box[3] == H
    assert LAYOUT.top_box[3] <= BAND
    for h, w in ((8, 8), (4, 4), (16, 16)):
        m = LAYOUT.masks(h, w)
        assert m.shape == (3, h, w)
        assert np.allclose(m.sum(0).numpy(), 1)
    m = LAYOUT.masks(8, 8)
    assert m[2, -1].max() == 1 and m[2, :5].max() == 0  # bottom prompt only in the band


def test_same_seed_same_image_and_unet_left_unpatched(pipe):
    before = dict(pipe.unet.attn_processors)
    a, b = gen(pipe), gen(pipe)
    assert np.array_equal(a, b)
    after = pipe.unet.attn_processors
    assert all(after[k] is v for k, v in before.items())


def test_bottom_prompt_acts_mainly_in_the_band(pipe):
    a, b = gen(pipe, bottom="the dog"), gen(pipe, bottom="the cat")
    diff = np.abs(a - b)[0].mean(axis=(1, 2))  # per row
    assert diff[BAND:].mean() > 2 * diff[: BAND - 8].mean()


def test_regional_differs_from_the_scene_prompt_alone(pipe):
    import torch

    regional = gen(pipe)
    plain = pipe(prompt="grass", negative_prompt="blurry", height=H, width=W, num_inference_steps=3,
                 generator=torch.Generator().manual_seed(1), output_type="np").images
    assert np.abs(regional - plain).mean() > 1e-3


def test_items_do_not_depend_on_the_batch(pipe):
    single = [gen(pipe, seeds=(s,))[0] for s in (3, 4)]
    batch = gen(pipe, seeds=(3, 4, 3, 4))
    # float round-off of batched kernels only: far below one 8-bit level
    assert np.abs(batch[0] - single[0]).max() < 1e-4 and np.abs(batch[3] - single[1]).max() < 1e-4


def test_bad_model_references(tmp_path):
    with pytest.raises(StackbenchError, match="no such folder"):
        load_pipeline(str(tmp_path / "missing"))
    (tmp_path / "notsd").mkdir()
    (tmp_path / "notsd" / "config.json").write_text("{}")
    with pytest.raises(StackbenchError, match="not a diffusers pipeline folder"):
        load_pipeline(str(tmp_path / "notsd"))


def test_clip_verifier_scores(tmp_path):
    folder = save_random_clip(tmp_path / "clip")
    v = ClipVerifier(str(folder), ["dog", "cat", "grass"])
    crops = [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (40, 30), (10, 200, 10))]
    s = v.scores(crops, [0, 2])
    assert len(s) == 2 and all(0 < x < 1 for x in s)
    assert s == v.scores(crops, [0, 2])  # deterministic
    with pytest.raises(StackbenchError, match="not a loadable CLIP model"):
        ClipVerifier(str(tmp_path), ["dog"])
