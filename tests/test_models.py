import json
import warnings

import pytest
import torch
import torchvision
from safetensors.torch import load_file, save_file
from torch import nn

from stackbench import StackbenchError
from stackbench.models import (
    WallLeakWarning,
    create_model,
    list_models,
    load_model,
    register_model,
    weights_fingerprint,
)
from stackbench.wall import check


def authors_vgg16(masked: bool) -> nn.Sequential:
    """The authors' network, written the way their notebook writes it (independently of stackbench)."""
    vgg = torchvision.models.vgg16(weights=None)
    features = list(vgg.features)
    del features[30]
    features[28] = nn.Conv2d(512, 256, 3, padding=1)
    classifier = vgg.classifier
    classifier[0] = nn.Linear(256 * 14 * 14, 4096)
    model = nn.Sequential(*features, nn.Flatten(1), classifier)
    if masked:
        mask = torch.ones(14, 14)
        mask[-9:] = 0
        with torch.no_grad():
            model[-1][0].weight *= mask.repeat(256, 1, 1).flatten()[None, :]
    return model.eval()


def test_registry():
    assert set(list_models()) >= {"vgg16", "vgg16-masked", "minivgg", "minivgg-masked"}
    assert list_models("minivgg*") == ["minivgg", "minivgg-masked"]
    with pytest.raises(ValueError, match="already registered"):
        register_model("minivgg")(lambda: None)


def test_every_model_exposes_wall_and_target_layer(mini_masked):
    assert isinstance(mini_masked.target_layer, nn.ReLU)
    conv_out = [m for m in mini_masked.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
    acts = {}
    h = mini_masked.target_layer.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    mini_masked(torch.randn(1, 3, 224, 224))
    h.remove()
    assert acts["a"].shape == (1, conv_out, 14, 14)
    assert create_model("minivgg", seed=0).wall.dead_height == 0


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = (create_model("minivgg-masked", seed=s) for s in (7, 7, 8))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert weights_fingerprint(a) == weights_fingerprint(b) != weights_fingerprint(c)
    assert load_model("minivgg-masked@random", seed=7).ref == "minivgg-masked@random#seed=7"


def test_save_pretrained_round_trip_is_bitwise(tmp_path, mini_masked, images):
    mini_masked.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["name"] == "minivgg-masked"
    loaded = load_model(str(tmp_path / "m"))
    assert torch.equal(loaded(images), mini_masked(images))
    assert weights_fingerprint(loaded) == weights_fingerprint(mini_masked)


def test_paper_checkpoints_load_as_they_are(tmp_path, images):
    torch.manual_seed(0)
    authors = authors_vgg16(masked=False)
    torch.save(authors.state_dict(), tmp_path / "params_vgg16_baseline.pt")
    base = load_model(f"paper:{tmp_path / 'params_vgg16_baseline.pt'}")
    assert base.name == "vgg16"
    with torch.no_grad():
        assert torch.equal(base(images), authors(images))
    del base
    authors = authors_vgg16(masked=True)
    torch.save(authors.state_dict(), tmp_path / "params_vgg16_masked.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error", WallLeakWarning)  # the authors' masked weights are clean
        ours = load_model(f"paper:{tmp_path / 'params_vgg16_masked.pt'}")
    assert ours.name == "vgg16-masked"
    with torch.no_grad():
        assert torch.allclose(ours(images), authors(images), rtol=0, atol=1e-6)


def test_leaky_checkpoint_warns_and_stays_walled(tmp_path):
    model = create_model("minivgg-masked", seed=3)
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    key = next(k for k in state if k.endswith("0.weight") and state[k].ndim == 2)
    w = state[key]
    state[key] = w + 0.5  # non-zero everywhere, behind the wall too
    save_file(state, tmp_path / "model.safetensors")
    with pytest.warns(WallLeakWarning, match="behind the wall are non-zero"):
        loaded = load_model(str(tmp_path))
    assert loaded.head[-1][0].dead_weight_norm() == 0
    assert check(loaded, traces=4).identical


def _msg(ref, **kw):
    with pytest.raises(StackbenchError) as e:
        load_model(ref, **kw)
    return str(e.value)


def test_bad_references_give_one_clear_line(tmp_path):
    m = _msg("vgg16-maskd")
    assert "unknown model 'vgg16-maskd'" in m and "did you mean vgg16-masked" in m
    assert "vgg16-masked@random" in _msg("vgg16-masked")  # no published weights: says what to do
    assert "does not exist" in _msg(str(tmp_path / "missing" / "folder"))
    assert "no such file" in _msg(f"paper:{tmp_path / 'nothing.pt'}")
    assert _msg("paper:").endswith("and give paper:PATH to it")
    assert "--model '' is empty; give a zoo name" in _msg("")  # was "model folder . has no config.json"
    for ref, says in (("hf:me/vit@", "an empty revision after @"), ("hf:", "no repository"),
                      ("hf:@v1", "no repository"), ("minivit-masked:hf:me/vit@", "an empty revision after @")):
        hf = "minivit-masked:hf:" if ref.startswith("minivit") else "hf:"  # the advice keeps the wall's prefix
        advice = f"write {hf}OWNER/REPO or {hf}OWNER/REPO@REVISION (a branch, tag or commit)"
        assert _msg(ref) == f"{ref!r}: {says}; {advice}"

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "has no config.json" in _msg(str(empty))
    create_model("minivgg-masked").save_pretrained(tmp_path / "bin")
    (tmp_path / "bin" / "model.safetensors").rename(tmp_path / "bin" / "pytorch_model.bin")
    assert "has no model.safetensors (found pytorch_model.bin" in _msg(str(tmp_path / "bin"))

    corrupt = tmp_path / "corrupt"
    create_model("minivgg-masked").save_pretrained(corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00garbage")
    assert "not a readable safetensors file" in _msg(str(corrupt))

    wrong = tmp_path / "wrong"
    create_model("minivgg-masked").save_pretrained(wrong)
    cfg = json.loads((wrong / "config.json").read_text())
    cfg["num_classes"] = 12
    (wrong / "config.json").write_text(json.dumps(cfg))
    assert "id2label names 10 outputs, the head has 12" in _msg(str(wrong))  # the zoo's names are the shapes ten
    del cfg["id2label"]
    (wrong / "config.json").write_text(json.dumps(cfg))
    m = _msg(str(wrong))
    assert "has shape (10, 256), expected (12, 256)" in m

    cfg["bogus"] = 1
    (wrong / "config.json").write_text(json.dumps(cfg))
    assert "not a stackbench model config" in _msg(str(wrong))

    torch.save(create_model("minivgg"), tmp_path / "whole_model.pt")  # a pickled module, not a state_dict
    assert "not a plain state_dict of tensors" in _msg(f"paper:{tmp_path / 'whole_model.pt'}")
    torch.save({"epoch": 3, "weights": torch.zeros(2)}, tmp_path / "mixed.pt")
    assert "key 'epoch' holds a int" in _msg(f"paper:{tmp_path / 'mixed.pt'}")
    torch.save(create_model("minivgg-masked").state_dict(), tmp_path / "mini.pt")
    m = _msg(f"paper:{tmp_path / 'mini.pt'}")
    assert "does not fit vgg16-masked" in m and "missing" in m


def test_ddp_prefixed_state_dict_loads(tmp_path, images):
    model = create_model("minivgg-masked", seed=4).eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "ckpt.pt")
    loaded = load_model(f"paper:{tmp_path / 'ckpt.pt'}", arch="minivgg-masked")
    assert torch.equal(loaded(images), model(images))


def test_head_init_is_part_of_the_architecture(mini_masked):
    # vgg16*: torchvision's N(0, 0.01) head and dropout 0.5, as in the paper; the mini models: PyTorch's Linear init
    # (non-zero biases) and no dropout. Either way nothing behind the wall after init.
    paper = create_model("vgg16-masked", seed=0)
    assert paper.head_init == "normal" and all(not m.bias.any() for m in paper[-1] if isinstance(m, nn.Linear))
    assert [m.p for m in paper[-1] if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    assert mini_masked.head_init == "kaiming" and bool(mini_masked[-1][-1].bias.any())
    assert [m.p for m in mini_masked[-1] if isinstance(m, nn.Dropout)] == [0.0, 0.0]
    first = mini_masked[-1][0]
    assert first.dead.any() and torch.count_nonzero(first.weight[:, first.dead]) == 0
    assert torch.count_nonzero(first.weight[:, ~first.dead]) == first.weight[:, ~first.dead].numel()
    from stackbench.models import WalledVGG

    with pytest.raises(ValueError, match="unknown head_init"):
        WalledVGG(name="odd", width_divisor=8, hidden=16, head_init="xavier")


def test_shipped_mini_model_loads_offline_walled_and_classifies_shapes(monkeypatch, tmp_path):
    # The official mini model ships with the package: no network, the recorded sha256, the wall intact, and it
    # recognises fresh shapes it never saw (val split, another seed) far above chance (10%).
    import shutil

    from stackbench.models import get_entry, loading

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights = get_entry("minivgg-masked").weights
    path = loading.WEIGHTS_DIR / weights.file
    assert loading.file_sha256(path) == weights.sha256 and path.stat().st_size < 5_000_000  # fp16
    assert weights.metrics["top1"] >= 0.9
    model = load_model("minivgg-masked")
    assert model.ref == "minivgg-masked" and not model.training
    first = model[-1][0]
    assert torch.count_nonzero(first.weight[:, first.dead]) == 0
    assert check(model, traces=4).identical
    acc = _fresh_shapes_accuracy(model, "mini")
    assert acc >= 0.8, acc
    # A shipped file that does not match its recorded sha256 is refused.
    tampered = tmp_path / "weights"
    tampered.mkdir()
    shutil.copy(path, tampered / weights.file)
    with open(tampered / weights.file, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    monkeypatch.setattr(loading, "WEIGHTS_DIR", tampered)
    with pytest.raises(StackbenchError, match="do not match their recorded sha256"):
        load_model("minivgg-masked")


@pytest.mark.parametrize("name", ["minivit-masked", "minivit-pixel"])
def test_shipped_mini_vits_load_offline_walled_with_their_card_and_classify_shapes(monkeypatch, name):
    # The trained mini ViTs ship too: the recorded sha256, fp16, a card beside the file naming the val top-1 in its
    # model-index and the mask loss they were trained with, the wall bitwise, and fresh shapes far above chance.
    from huggingface_hub import ModelCard

    from stackbench.models import get_entry, loading

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights = get_entry(name).weights
    path = loading.WEIGHTS_DIR / weights.file
    assert loading.file_sha256(path) == weights.sha256 and path.stat().st_size < 1_000_000
    assert weights.metrics["top1"] >= 0.85
    card = ModelCard.load(path.with_suffix(".md"))
    results = card.data.eval_results
    assert results[0].metric_value == weights.metrics["top1"] and "object-mask loss" in card.text
    assert "dead tokens" in card.text
    model = load_model(name)
    assert model.ref == name and model.global_pool == "conv" and check(model, traces=4).identical
    acc = _fresh_shapes_accuracy(model, "mini-vit")
    assert acc >= 0.75, acc


def test_loading_skips_the_initialisation_in_its_own_thread_only():
    import threading

    from stackbench.models.init import weights_to_come

    before = dict(vars(nn.init))
    other = {}

    def build_elsewhere():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            other["w"] = nn.init.constant_(torch.empty(4), 3.0)

    with weights_to_come():
        mine = nn.init.constant_(torch.full((4,), 7.0), 3.0)
        with weights_to_come():  # nested: still skipped, and the outer context still restores
            assert torch.equal(nn.init.ones_(torch.zeros(2)), torch.zeros(2))
        t = threading.Thread(target=build_elsewhere)
        t.start()
        t.join()
    assert torch.equal(mine, torch.full((4,), 7.0))        # left as it was in the loading thread
    assert torch.equal(other["w"], torch.full((4,), 3.0))  # initialised in the other thread
    assert dict(vars(nn.init)) == before                   # torch.nn.init is torch's own again
    assert torch.equal(nn.init.ones_(torch.zeros(2)), torch.ones(2))


def _fresh_shapes_accuracy(model, preset_name: str) -> float:
    """Top-1 on 50 shapes the model never saw (val split, seed 11), through its preset's val transform."""
    from stackbench.sources import open_source
    from stackbench.train import preset, val_transform

    src = open_source("shapes:50@11", split="val")
    tf = val_transform(preset(preset_name))
    x = torch.stack([tf(src.load(i).image) for i in range(len(src))])
    with torch.no_grad():
        return float((model(x).argmax(1) == torch.as_tensor(src.labels())).float().mean())
