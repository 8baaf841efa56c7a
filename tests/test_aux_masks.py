"""Training with dense supervision (`--aux-masks`): the object masks follow the image's augmentation, the targets
are each live token's sub-cell coverage, and the mask head is training-only: not in the saved model, not in its
forward, and the saved classifier computes the same logits as the one trained."""
import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from stackbench.cli import main
from stackbench.errors import StackbenchError
from stackbench.models import load_model
from stackbench.sources import open_source
from stackbench.train import SourceDataset, collate, preset, train, train_augment
from stackbench.train.aux import WithMaskHead, mask_targets
from stackbench.wall import logits_unchanged

TINY_VIT = preset("mini-vit", source="shapes:24", val_source="shapes:20", epochs=1, batch_size=8, max_steps=None)


def test_the_mask_follows_the_crop_and_flip_and_the_image_is_unchanged():
    src = open_source("shapes:20", split="train")
    plain = SourceDataset(src, train_augment(TINY_VIT), seed=5)
    with_masks = SourceDataset(src, train_augment(TINY_VIT), seed=5, masks=True)
    for key in ((0, 3), (1, 3), (2, 7)):
        x, y = plain[key]
        x2, y2, m = with_masks[key]
        assert torch.equal(x, x2) and y == y2  # the image's draws are the same with the mask alongside
        assert m.shape == (1, 224, 224) and m.dtype == torch.uint8 and int(m.max()) > 0
    # the mask is the object's: where it is set the augmented image differs from the backdrop a plain crop gives
    item = src.load(3)
    raw = torch.from_numpy(__import__("numpy").array(item.object_mask)).float()
    flipped = SourceDataset(src, lambda img, mask=None: (img.flip(-1), mask.flip(-1)) if mask is not None
                            else img.flip(-1), seed=5, masks=True)
    _, _, m = flipped[(0, 3)]
    assert torch.equal(m[0].float(), raw.flip(-1))
    x, y, masks = collate([with_masks[(0, i)] for i in range(3)])
    assert masks.shape == (3, 1, 224, 224) and x.shape == (3, 3, 224, 224)


def test_mask_targets_are_each_live_tokens_sub_cell_coverage_by_hand():
    net = load_model("minivit-masked@random")
    masks = torch.zeros(1, 1, 224, 224, dtype=torch.uint8)
    masks[0, 0, 16:20, 32:36] = 255  # token (1, 2), its first sub-cell, whole
    masks[0, 0, 20:22, 36:40] = 255  # the same token's sub-cell (1, 1): half covered
    masks[0, 0, 200:, :] = 255  # behind the wall: no live token's target
    t = mask_targets(masks, net)
    assert t.shape == (1, 140, 16)
    token = 1 * 14 + 2
    assert t[0, token, 0] == 1.0 and t[0, token, 5] == 0.5 and float(t[0, token].sum()) == 1.5
    assert float(t.sum()) == 1.5


def test_the_mask_head_is_training_only(tmp_path):
    cfg = TINY_VIT.replace(aux_masks=0.5)
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["config"]["aux_masks"] == 0.5 and summary["wall"]["verdict"] == "PASS"
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert not any("mask_head" in k for k in saved)
    net = load_model(str(tmp_path / "run"))
    assert set(saved) == set(net.state_dict()) and not hasattr(net, "mask_head")
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    wrapped = WithMaskHead(net).eval()
    with torch.no_grad():
        assert torch.equal(wrapped(x), net(x))  # in evaluation the wrapper is the classifier
        wrapped.train()
        logits, pred = wrapped(x)
        alone = net.train()(x)  # the classifier's own training forward (batch statistics in the norms)
    net.eval()
    assert pred.shape == (2, 140, 16) and torch.allclose(logits, alone, atol=1e-5)
    assert logits_unchanged(net, list(range(160, 224))).identical
    card = (tmp_path / "run" / "README.md").read_text()
    assert "aux_masks" in card or "mask" in card
    record = json.loads((tmp_path / "run" / "train.json").read_text())
    assert record["config"]["aux_masks"] == 0.5


def test_without_masks_or_on_a_vgg_it_is_refused_in_one_line(tmp_path):
    with pytest.raises(StackbenchError, match="minivgg-masked is not a ViT"):
        train(preset("mini", source="shapes:20", val_source="shapes:20", epochs=1, batch_size=4, aux_masks=1.0),
              tmp_path / "vgg", progress=False)
    assert not (tmp_path / "vgg").exists()

    class NoMasks:
        """A source that does not know where its objects are (photos)."""

        def __init__(self, src):
            self.src, self.ref, self.kind = src, "photos", "photos"
            self.class_names, self.num_classes = src.class_names, src.num_classes

        def __len__(self):
            return len(self.src)

        def load(self, i):
            item = self.src.load(i)
            item.object_mask = None
            return item

        def describe(self):
            return {**self.src.describe(), "ref": "photos"}

    src = NoMasks(open_source("shapes:20", split="train"))
    with pytest.raises(StackbenchError, match=r"source photos does not know where its objects are .* give "
                       r"--aux-masks 0 \(the preset mini-vit sets it\)") as e:
        train(TINY_VIT.replace(epochs=1), tmp_path / "photos", train_source=src,
              val_source=open_source("shapes:20", split="val"), progress=False)
    assert "\n" not in str(e.value)
    r = CliRunner().invoke(main, ["train", "--preset", "mini-vit", "--aux-masks", "-1", "--out", str(tmp_path / "n")])
    assert r.exit_code == 2 and "--aux-masks" in r.output and "Traceback" not in r.output


def test_a_diverging_run_stops_before_the_step_and_leaves_no_folder(tmp_path):
    with pytest.raises(StackbenchError, match=r"training diverged at step 1 \(loss inf\); nothing of this step was "
                       r"kept: lower --lr \(0.001\) or --aux-masks \(1e\+39\), then run again") as e:
        train(TINY_VIT.replace(aux_masks=1e39), tmp_path / "d", progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "d").exists()
