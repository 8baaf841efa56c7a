"""Walling the ViT weights people have (ARCH:PATH, ARCH:hf:REPO; stackbench.models.vit_weights): torchvision, timm
and transformers checkpoints, written here by the libraries themselves, load with their own logits; the wall holds
on them and the unwalled load is the control; bad inputs are one line; `stackbench train` fine-tunes from one."""
import json
import shutil

import huggingface_hub
import pytest
import timm
import torch
import torchvision
from click.testing import CliRunner
from safetensors.torch import save_file
from timm.models._hub import save_for_hf
from torchvision.models.vision_transformer import VisionTransformer
from transformers import ViTConfig, ViTForImageClassification

from stackbench.cli import main
from stackbench.errors import StackbenchError
from stackbench.models import create_model, load_model
from stackbench.refs import model_ref
from stackbench.train import preset, train
from stackbench.wall import logits_unchanged

BAND = list(range(160, 224))
X = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(7))  # a normalised batch


def _nonzero(*tensors):
    # torchvision zero-initialises the class token and the head: every logit would be constant and every
    # invariance test would pass trivially.
    with torch.no_grad():
        for t in tensors:
            t.normal_(std=0.02)


def _torchvision(num_classes=10, **geometry):
    torch.manual_seed(0)
    geometry = geometry or dict(image_size=224, patch_size=16, num_layers=12, num_heads=3, hidden_dim=192, mlp_dim=768)
    net = VisionTransformer(**geometry, num_classes=num_classes).eval()
    _nonzero(net.class_token, net.heads.head.weight, net.heads.head.bias)
    return net


def _transformers(num_labels=10, **extra):
    torch.manual_seed(1)
    config = ViTConfig(image_size=224, patch_size=16, hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                       intermediate_size=768, num_labels=num_labels, **extra)
    return ViTForImageClassification(config).eval()


def _timm():
    torch.manual_seed(2)
    # a registered name (save_for_hf writes its pretrained_cfg) at vit-ti16's geometry; no download
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10).eval()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """name -> (path, the source library's own logits on X)."""
    root = tmp_path_factory.mktemp("vit-weights")
    out = {}
    with torch.no_grad():
        tv = _torchvision()
        torch.save(tv.state_dict(), root / "tv.pth")
        old = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v
               for k, v in tv.state_dict().items()}  # torchvision before 0.13
        torch.save(old, root / "tv-old.pt")
        out.update({"torchvision .pth": (root / "tv.pth", tv(X)), "torchvision 0.12 .pt": (root / "tv-old.pt", tv(X))})
        hf = _transformers()
        hf.save_pretrained(root / "hf")  # safetensors + config.json, in 4.x names
        torch.save(hf.state_dict(), root / "hf.bin")  # 5.x module names, no config: the format's eps
        logits = hf(pixel_values=X).logits
        out.update({"transformers folder": (root / "hf", logits), "transformers .bin": (root / "hf.bin", logits)})
        tm = _timm()
        save_for_hf(tm, root / "timm")  # timm's save_pretrained: model.safetensors + config.json
        save_file(tm.state_dict(), str(root / "timm.safetensors"))
        out.update({"timm folder": (root / "timm", tm(X)), "timm .safetensors": (root / "timm.safetensors", tm(X))})
    return out


@pytest.mark.parametrize("name", ["torchvision .pth", "torchvision 0.12 .pt", "transformers folder",
                                  "transformers .bin", "timm folder", "timm .safetensors"])
def test_a_checkpoint_keeps_its_logits_and_takes_the_wall(sources, name):
    path, logits = sources[name]
    plain = load_model(f"vit-ti16:{path}")
    assert plain.ref == f"vit-ti16:{path}" and plain.num_classes == 10
    with torch.no_grad():
        torch.testing.assert_close(plain(X), logits, atol=1e-5, rtol=0)
    for walled in ("vit-ti16-masked", "vit-ti16-pixel"):
        assert logits_unchanged(load_model(f"{walled}:{path}"), BAND).identical
    control = logits_unchanged(plain, BAND)
    assert not control.identical and control.max_abs_diff > 1e-4


def test_the_layernorm_eps_is_the_checkpoints(tmp_path):
    # transformers' 1e-12 by default; a config.json's layer_norm_eps wins. A large one makes a wrong eps visible.
    hf = _transformers(layer_norm_eps=1e-2)
    hf.save_pretrained(tmp_path / "hf")
    net = load_model(f"vit-ti16-masked:{tmp_path / 'hf'}")
    assert {m.eps for m in net.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-2}
    with torch.no_grad():
        torch.testing.assert_close(load_model(f"vit-ti16:{tmp_path / 'hf'}")(X), hf(pixel_values=X).logits,
                                   atol=1e-5, rtol=0)
    torch.save(hf.state_dict(), tmp_path / "hf.bin")  # no config: the format's default
    assert load_model(f"vit-ti16:{tmp_path / 'hf.bin'}").norm.eps == 1e-12
    net.save_pretrained(tmp_path / "walled")  # and a walled save keeps it
    assert load_model(str(tmp_path / "walled")).norm.eps == 1e-2


def test_vit_b16_from_torchvision(tmp_path):
    # torchvision's own full-size ViT-B/16 (86M parameters), as both the walled and the unwalled architecture.
    tv = torchvision.models.vit_b_16().eval()
    _nonzero(tv.class_token, tv.heads.head.weight, tv.heads.head.bias)
    torch.save(tv.state_dict(), tmp_path / "vit_b_16.pth")
    x = X[:1]
    plain = load_model(f"vit-b16:{tmp_path / 'vit_b_16.pth'}")
    with torch.no_grad():
        torch.testing.assert_close(plain(x), tv(x), atol=1e-5, rtol=0)
    del tv
    walled = load_model(f"vit-b16-masked:{tmp_path / 'vit_b_16.pth'}")
    assert walled.num_classes == 1000 and logits_unchanged(walled, BAND, trials=1).identical
    control = logits_unchanged(plain, BAND, trials=1)
    assert not control.identical and control.max_abs_diff > 1e-4


def test_arch_hf_repo_resolves_through_huggingface_hub(tmp_path, monkeypatch, sources):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    folder, logits = sources["transformers folder"]
    for repo, files, commit in (("me/vit", {"config.json": folder / "config.json",
                                            "model.safetensors": folder / "model.safetensors"}, "b" * 40),
                                ("me/vit-bin", {"pytorch_model.bin": sources["transformers .bin"][0]}, "c" * 40)):
        base = tmp_path / "cache" / f"models--{repo.replace('/', '--')}"
        (base / "refs").mkdir(parents=True)
        (base / "refs" / "v1").write_text(commit)
        (base / "snapshots" / commit).mkdir(parents=True)
        for name, src in files.items():
            shutil.copy(src, base / "snapshots" / commit / name)
    for ref, commit in (("vit-ti16:hf:me/vit@v1", "b" * 40), ("vit-ti16:hf:me/vit-bin@v1", "c" * 40)):
        net = load_model(ref)
        assert net.ref == ref and net.revision == commit
        with torch.no_grad():
            torch.testing.assert_close(net(X), logits, atol=1e-5, rtol=0)
    assert logits_unchanged(load_model("vit-ti16-pixel:hf:me/vit@v1"), BAND).identical
    with pytest.raises(StackbenchError, match="could not fetch"):
        load_model("vit-ti16-masked:hf:me/absent")


@pytest.mark.parametrize("text,scheme,body,revision,options", [
    ("hf:me/x@v1", "hf", "me/x", "v1", {}), ("paper:params.pt", "paper", "params.pt", None, {}),
    ("vit-ti16@random", "random", "vit-ti16", None, {}), ("vit-ti16-masked", "zoo", "vit-ti16-masked", None, {}),
    ("runs/a:b", "path", "runs/a:b", None, {}), ("C:/models/vit", "path", "C:/models/vit", None, {}),
    ("./w.pt", "path", "./w.pt", None, {}),
    ("vit-b16-masked:/w/vit_b_16.pth", "arch", "/w/vit_b_16.pth", None, {"arch": "vit-b16-masked", "hub": False}),
    ("vit-ti16:ckpt.safetensors", "arch", "ckpt.safetensors", None, {"arch": "vit-ti16", "hub": False}),
    ("vit-b16-pixel:hf:google/vit-base-patch16-224@main", "arch", "google/vit-base-patch16-224", "main",
     {"arch": "vit-b16-pixel", "hub": True}),
])
def test_model_references_parse(text, scheme, body, revision, options):
    ref = model_ref(text)
    assert (ref.scheme, ref.body, ref.revision, ref.options) == (scheme, body, revision, options)


def test_an_existing_path_with_a_colon_stays_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vit-ti16:run").mkdir()
    assert model_ref("vit-ti16:run").scheme == "path"


@pytest.fixture(scope="module")
def bad(sources, tmp_path_factory):
    """Checkpoints that must be refused, by what each refusal names."""
    root = tmp_path_factory.mktemp("bad")
    torch.save(create_model("minivgg-masked").state_dict(), root / "vgg.pt")
    shutil.copytree(sources["transformers folder"][0], root / "heads8")
    shutil.copytree(sources["transformers folder"][0], root / "tanh")
    for name, change in (("heads8", {"num_attention_heads": 8}), ("tanh", {"hidden_act": "gelu_new"})):
        config = json.loads((root / name / "config.json").read_text())
        (root / name / "config.json").write_text(json.dumps({**config, **change}))
    state = dict(_timm().state_dict(), **{"fc_norm.weight": torch.ones(192), "fc_norm.bias": torch.zeros(192)})
    save_file(state, str(root / "fc_norm.safetensors"))
    headless = {k: v for k, v in _torchvision().state_dict().items() if not k.startswith("heads.")}
    torch.save(headless, root / "headless.pt")
    return root, sources["torchvision .pth"][0]


BAD = [
    ("vit-ti16-masked:{root}/vgg.pt", "not a ViT state dict stackbench reads"),
    ("vit-b16-masked:{tv}", "the checkpoint has width 192, MLP width 768 where vit-b16-masked has width "
                            "768, MLP width 3072"),
    ("vit-ti16:{root}/heads8", "the checkpoint has heads 8 where vit-ti16 has heads 3"),
    ("vit-ti16:{root}/tanh", "config.json sets hidden_act 'gelu_new'"),
    ("vit-ti16:{root}/fc_norm.safetensors", "key 'fc_norm.bias' holds fc_norm (a norm of an average-pooled head)"),
    ("vit-ti16:{root}/headless.pt", "has no classification head"),
    ("vit-ti16-masked:{root}/missing.pth", "missing.pth does not exist"),
    ("minivgg-masked:{tv}", "minivgg-masked is not a ViT"),
    ("vit-b32-masked:{tv}", "unknown architecture 'vit-b32-masked'"),
    ("minivit-masked:{tv}", "minivit-masked has its own stem and head"),
    ("vit-ti16-masked:", "names no weights"),
]


@pytest.mark.parametrize("template,says", BAD)
def test_bad_checkpoints_are_one_line(bad, template, says):
    root, tv = bad
    ref = template.format(root=root, tv=tv)
    with pytest.raises(StackbenchError) as e:
        load_model(ref)
    assert says in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith(ref)
    r = CliRunner().invoke(main, ["wall", "--model", ref])
    assert r.exit_code == 2 and "Traceback" not in r.output and r.output.count("\n") == 1


def test_train_fine_tunes_a_checkpoint_with_a_fresh_head(tmp_path, caplog):
    hf = _transformers(num_labels=5)  # 5 classes; the source has 10: the head is replaced
    torch.save(hf.state_dict(), tmp_path / "hf5.bin")
    ref = f"vit-ti16-masked:{tmp_path / 'hf5.bin'}"
    cfg = preset("mini-vit", model=ref, source="shapes:64", val_source="shapes:20", epochs=1, batch_size=16,
                 max_steps=2)
    with caplog.at_level("INFO", logger="stackbench"):
        summary = train(cfg, tmp_path / "out", progress=False)
    assert "its head has 5 classes and the source shapes:64 has 10; training a fresh 10-class head" in caplog.text
    assert summary["steps"] == 2 and summary["wall"]["verdict"] == "PASS" and summary["wall"]["identical"]
    trained = load_model(str(tmp_path / "out"))
    assert trained.num_classes == 10 and trained.name == "vit-ti16-masked" and trained.norm.eps == 1e-12
    assert logits_unchanged(trained, BAND).identical
