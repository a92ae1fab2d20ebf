"""Any backbone: torchvision and timm models and custom modules train, export and load like the classic three.

Random weights, offline, tiny images (32x32) and tiny models where the family allows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_cache_matches_full, assert_refused, cpu_trainer
from torch import nn

from lpips_lightning import LPIPS, load
from lpips_lightning.backbones import Backbone, normalize_spec, short_name
from lpips_lightning.datamodules import JudgmentsDataModule
from lpips_lightning.errors import ConfigError, WeightsError
from lpips_lightning.export import export, model_from_checkpoint, read_checkpoint
from lpips_lightning.module import LPIPSModule

pytest.importorskip("timm")

LATENT = "lpips_lightning.examples.latent_encoder.LatentEncoder"
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)
FAMILIES = {
    "resnet18": dict(backbone="torchvision:resnet18"),
    "convnext_tiny": dict(backbone="torchvision:convnext_tiny"),
    "vit": dict(backbone="timm:vit_tiny_patch16_224", backbone_args=TINY_VIT),
    "custom": dict(backbone={"class_path": LATENT, "init_args": {"widths": [8, 16], "encoder_width": 8}}),
}
EXPORTS = (".safetensors", ".pt", ".onnx")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from conftest import make_bapps

    from lpips_lightning.pack import pack

    root = tmp_path_factory.mktemp("backbones")
    make_bapps(root / "b", n=8)
    return pack(root / "b", root / "d.h5", size=32, workers=1, progress=False)


def _pair(n=3, h=40, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g) for _ in range(2))


@pytest.fixture(scope="module", params=list(FAMILIES))
def trained(request, data, tmp_path_factory):
    """(family, checkpoint, the trained metric in eval mode, {suffix: export}) after a few lin steps."""
    family = request.param
    torch.manual_seed(0)
    model = LPIPSModule(variant="lin", pretrained=False, **FAMILIES[family])
    backbone_before = {k: v.clone() for k, v in model.lpips.net.state_dict().items()}
    heads_before = [h.weight.clone() for h in model.lpips.heads]
    trainer = cpu_trainer(fast_dev_run=2)
    trainer.fit(model, JudgmentsDataModule(str(data), batch_size=4))
    # lin trained the heads, left the backbone (batch-norm statistics included) alone, and validated
    assert all(not torch.equal(a, h.weight) for a, h in zip(heads_before, model.lpips.heads))
    assert all(torch.equal(backbone_before[k], v) for k, v in model.lpips.net.state_dict().items())
    assert "val/2afc/cnn" in model.scores["val"]
    with torch.no_grad():  # clearly non-trivial heads
        for h in model.lpips.heads:
            h.weight.uniform_(0.1, 1.0)
    root = tmp_path_factory.mktemp(family)
    ckpt = root / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    return family, ckpt, model.lpips.eval(), Exports(ckpt)


class Exports(dict):
    """{suffix: export of the checkpoint}, each written on first use."""

    def __init__(self, ckpt: Path) -> None:
        super().__init__()
        self.ckpt = ckpt

    def __missing__(self, suffix: str) -> Path:
        out = self.ckpt.with_suffix(suffix)
        export(self.ckpt, out)
        self[suffix] = out
        return out


@pytest.mark.parametrize("suffix", (".ckpt", *EXPORTS))
def test_every_export_gives_the_module_distances(trained, suffix, request):
    family, ckpt, metric, files = trained
    if (family, suffix) == ("convnext_tiny", ".onnx") and "not slow" in (request.config.getoption("markexpr") or ""):
        pytest.skip("slow: ConvNeXt's ONNX export takes torch.export's slower strategies (~15 s on a busy CPU)")
    loaded = load(ckpt if suffix == ".ckpt" else files[suffix])
    assert not loaded.training and loaded.backbone_name == metric.backbone_name
    assert loaded.min_size == max(metric.min_size, 2 if suffix == ".onnx" else 0)  # torch.export: sizes >= 2
    # every export takes any size, but the TorchScript trace of a ViT that pads images to whole patches
    fixed = family == "vit" and suffix == ".pt"
    assert getattr(loaded, "fixed_size", None) == ((64, 64) if fixed else None)
    if fixed:
        with pytest.raises(
            ConfigError, match="^images of 40x48 pixels: this export of backbone .* takes 64x64 images only"
        ):
            loaded(*_pair())
    small = max(20, metric.min_size)  # the deepest maps are 1x1 here (ResNet, ConvNeXt)
    for h, w in ((64, 64),) if fixed else ((40, 48), (64, 64), (77, 61), (small, small + 4)):
        u0, u1 = _pair(h=h, w=w)
        with torch.no_grad():
            expected = metric(u0, u1)
            got = loaded(u0, u1).flatten()
            got_normalized = loaded(u0.float() / 255, u1.float() / 255, normalize=True).flatten()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got_normalized, expected, rtol=1e-5, atol=1e-6)


def test_load_rebuilds_the_backbone_from_the_metadata(trained):
    family, ckpt, metric, files = trained
    from safetensors import safe_open

    with safe_open(str(files[".safetensors"]), "pt") as f:
        meta = f.metadata()
    spec = json.loads(meta["backbone_spec"])
    assert spec == metric.backbone_spec and meta["backbone"] == metric.backbone_name
    rebuilt = load(files[".safetensors"])
    assert rebuilt.backbone_spec == metric.backbone_spec and rebuilt.net.channels == metric.net.channels
    own = metric.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in rebuilt.state_dict().items()) and set(own) == set(
        rebuilt.state_dict()
    )
    # the checkpoint keeps the resolved spec (default taps filled in) and plain hyperparameters
    hp, _, info = read_checkpoint(ckpt)
    assert info["backbone"] == metric.backbone_spec
    assert _plain(hp), hp


def _plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def test_lpips_pth_export_is_refused_in_one_line(trained, tmp_path, capfd):
    family, ckpt, metric, files = trained
    if family != "resnet18":
        pytest.skip("one family is enough")
    line = assert_refused(["export", str(ckpt), str(tmp_path / "m.pth")], capfd, tmp_path)
    assert "describes alex, vgg and squeeze only, not backbone torchvision:resnet18" in line
    assert ".safetensors" in line


def test_distance_and_evaluate_take_any_backbone(trained, tmp_path, capsys, data):
    family, ckpt, metric, files = trained
    if family not in ("vit", "custom"):
        pytest.skip("two families are enough")
    import numpy as np
    from PIL import Image

    from lpips_lightning.cli.main import main

    rng = np.random.default_rng(0)
    pngs = []
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
        pngs.append(str(tmp_path / f"{name}.png"))
    images = [torch.from_numpy(np.asarray(Image.open(p).convert("RGB"))).permute(2, 0, 1)[None] for p in pngs]
    with torch.no_grad():
        expected = metric(*images).item()
    for model_file in (files[".onnx"], files[".pt"]) if family == "custom" else (files[".onnx"],):
        assert main(["distance", *pngs, "--model", str(model_file)]) == 0
        assert float(capsys.readouterr().out) == pytest.approx(expected, abs=2e-6)
    out = tmp_path / "ev"
    assert main(["evaluate", str(files[".safetensors"]), "--data", str(data), "--out", str(out), "--quiet"]) == 0
    assert "2afc/val/cnn" in capsys.readouterr().out


def test_feature_cache_matches_the_full_path(trained, data):
    family = trained[0]
    from test_speed_paths import _setup

    torch.manual_seed(0)
    model = LPIPSModule(variant="lin", pretrained=False, dropout=False, feature_cache=True, **FAMILIES[family])
    with torch.no_grad():
        for h in model.lpips.heads:
            h.weight.uniform_(0, 1)
    trainer, dm = _setup(data, model)
    cache = model.steps.build_cache(chunk=3)
    assert cache.shape == (2, 8, sum(model.lpips.net.channels))
    dataset = dm.datasets["train"][0]
    index = torch.tensor([3, 0, 7])
    assert_cache_matches_full(model, dataset, index)


# --- the families' facts -------------------------------------------------------------------------------
def test_default_taps_channels_and_minimum_sizes():
    facts = {
        "torchvision:resnet18": (["layer1", "layer2", "layer3", "layer4"], (64, 128, 256, 512)),
        "torchvision:convnext_tiny": (["features.1", "features.3", "features.5", "features.7"], (96, 192, 384, 768)),
        "timm:convnext_tiny": ([0, 1, 2, 3], (96, 192, 384, 768)),
    }
    for name, (taps, channels) in facts.items():
        net = Backbone(name, pretrained=False)
        assert net.spec["taps"] == taps and net.channels == channels, name
        assert not net.training, "a frozen backbone computes as at inference"
    vit = Backbone("timm:vit_tiny_patch16_224", pretrained=False, args={**TINY_VIT, "depth": 12})
    assert vit.spec["taps"] == [2, 5, 8, 11] and vit.channels == (32,) * 4  # four evenly spaced blocks
    convnext = LPIPS("torchvision:convnext_tiny", pretrained=False, heads="random")
    assert convnext.min_size == 32
    with pytest.raises(ConfigError, match="^images of 31x40 pixels are smaller than the 32x32 minimum of backbone"):
        convnext(torch.zeros(1, 3, 31, 40), torch.zeros(1, 3, 31, 40))


def test_vit_taps_drop_class_and_register_tokens():
    net = Backbone("timm:vit_tiny_patch16_224", pretrained=False, args={**TINY_VIT, "reg_tokens": 4}, taps=[1, -1])
    assert net.spec["taps"] == [1, 3]
    feats = net(torch.zeros(2, 3, 40, 24))
    assert [tuple(f.shape) for f in feats] == [(2, 32, 5, 3)] * 2  # patch tokens only, as (N, C, h, w)


def test_torchvision_alexnet_is_the_classic_alex(tmp_path):
    """Default taps and ImageNet normalisation reproduce alex exactly (the LPIPS scaling is ImageNet's)."""
    torch.manual_seed(0)
    import torchvision

    torch.save(torchvision.models.alexnet().state_dict(), tmp_path / "alex.pth")
    classic = LPIPS("alex", backbone_weights=tmp_path / "alex.pth", heads="random").eval()
    general = LPIPS("torchvision:alexnet", backbone_weights=tmp_path / "alex.pth", heads="random").eval()
    general.heads.load_state_dict(classic.heads.state_dict())
    x0, x1 = torch.rand(2, 2, 3, 48, 48) * 2 - 1
    torch.testing.assert_close(general(x0, x1), classic(x0, x1), rtol=1e-5, atol=1e-7)


def test_custom_input_normalisation_is_declared_by_the_module():
    class ImageNetModule(nn.Module):
        input_mean = (0.485, 0.456, 0.406)
        input_std = (0.229, 0.224, 0.225)

        def forward(self, x):
            return [x]

    seen = {}

    class Raw(nn.Module):
        def forward(self, x):
            seen["x"] = x
            return [x]

    x = torch.rand(1, 3, 8, 8) * 2 - 1
    LPIPS(Raw(), heads=None).features(x)
    torch.testing.assert_close(seen["x"], x)  # no declaration: the [-1, 1] images as they are
    feats = LPIPS(ImageNetModule(), heads=None).features(x)[0]
    mean, std = torch.tensor(ImageNetModule.input_mean).view(1, 3, 1, 1), torch.tensor(ImageNetModule.input_std)
    torch.testing.assert_close(feats, ((x + 1) / 2 - mean) / std.view(1, 3, 1, 1), rtol=1e-5, atol=1e-6)


# --- weights ------------------------------------------------------------------------------------------------
def test_backbone_weights_load_for_every_family(tmp_path):
    import timm
    import torchvision

    from lpips_lightning.examples.latent_encoder import LatentEncoder

    torch.manual_seed(1)
    networks = {
        "torchvision:resnet18": (torchvision.models.resnet18(), "layer4.1.conv2.weight"),
        "timm:vit_tiny_patch16_224": (
            timm.create_model("vit_tiny_patch16_224", **TINY_VIT),
            "blocks.3.attn.qkv.weight",
        ),
    }
    for name, (network, key) in networks.items():
        torch.save(network.state_dict(), tmp_path / "w.pth")  # a whole network's state dict, classifier included
        args = TINY_VIT if name.startswith("timm") else None
        net = Backbone(name, weights=tmp_path / "w.pth", args=args)
        own = net.state_dict()
        body_key = next(k for k in own if k.endswith(key))
        torch.testing.assert_close(own[body_key], network.state_dict()[key])
    encoder = LatentEncoder(widths=[8])
    torch.save(encoder.state_dict(), tmp_path / "enc.pth")
    net = Backbone({"class_path": LATENT, "init_args": {"widths": [8]}}, weights=tmp_path / "enc.pth")
    torch.testing.assert_close(net.body.stages[0][0].weight, encoder.stages[0][0].weight)
    # a state dict of another network: one line naming the file and the keys
    with pytest.raises(
        WeightsError, match=r"enc.pth: does not fit this model: missing keys bn1.bias, .*unexpected keys encoder"
    ) as err:
        Backbone("torchvision:resnet18", weights=tmp_path / "enc.pth")
    assert "\n" not in str(err.value)


def test_torchvision_weights_come_from_the_torch_hub_cache(tmp_path, monkeypatch, capfd):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("torch.hub.download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(WeightsError) as err:
        Backbone("torchvision:resnet18")
    assert not capfd.readouterr().out  # torch.hub's "Downloading" line is not left behind a failure
    msg = str(err.value)
    folder = tmp_path / "home" / "hub" / "checkpoints"
    assert "resnet18-f37072fd.pth is missing in " + str(folder) in msg
    assert "backbone_weights=PATH" in msg and "\n" not in msg
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(2)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, folder / "resnet18-f37072fd.pth")
    net = Backbone("torchvision:resnet18")
    torch.testing.assert_close(net.state_dict()["body.layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    # backbone_args' weights picks one of torchvision's weights by name
    assert Backbone("torchvision:resnet18", args={"weights": "IMAGENET1K_V1"}).spec["args"] == {
        "weights": "IMAGENET1K_V1"
    }
    with pytest.raises(ConfigError, match="unknown weights 'V9'; choose one of: IMAGENET1K_V1$"):
        Backbone("torchvision:resnet18", args={"weights": "V9"})


def test_timm_pretrained_offline_is_one_line(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(WeightsError) as err:
        Backbone("timm:vit_tiny_patch16_224", pretrained=True, args=TINY_VIT)
    msg = str(err.value)
    assert "Hugging Face hub cache" in msg and str(tmp_path / "hf") in msg and "models--timm--vit_tiny" in msg
    assert "backbone_weights=PATH" in msg and "\n" not in msg


# --- bad specs: one line each --------------------------------------------------------------------------------
class ReturnsTensor(nn.Module):
    def forward(self, x):
        return x


class ReturnsTokens(nn.Module):
    def forward(self, x):
        return [x.flatten(2).transpose(1, 2)]


class NoChannels(nn.Module):
    def forward(self, x):
        return [x[:, :0]]


class LosesTheBatch(nn.Module):
    def forward(self, x):
        return [x, x[:1]]


class SqueezesTheBatch(nn.Module):
    def forward(self, x):
        return [x.squeeze(0)]


BAD_SPECS = [
    (dict(backbone="resnet"), "unknown backbone 'resnet'; choose one of: alex, vgg, squeeze, torchvision:<model>"),
    (dict(backbone="keras:resnet50"), "unknown backbone 'keras:resnet50'"),
    (dict(backbone="torchvision:resnet1000"), "unknown torchvision model 'resnet1000'"),
    (dict(backbone="timm:vit_nonesuch_patch16"), "unknown timm model 'vit_nonesuch_patch16'"),
    (dict(backbone="torchvision:resnet18", taps=["layer9"]), "unknown tap 'layer9' of backbone torchvision:resnet18"),
    (dict(backbone="timm:convnext_tiny", taps=[7]), "tap 7 of backbone timm:convnext_tiny is out of range"),
    (dict(backbone="timm:convnext_tiny", taps=["stages.0"]), "unknown tap 'stages.0' of backbone timm:convnext_tiny"),
    (dict(backbone="alex", taps=["features.1"]), "backbone alex's taps are fixed"),
    (dict(backbone="torchvision:resnet18", backbone_args={"depth": 3}), "could not be built with backbone_args"),
    (dict(backbone={"class_path": "no_such_package.Encoder"}), "no module 'no_such_package'"),
    (dict(backbone={"class_path": "lpips_lightning.examples.latent_encoder.Nope"}), "has no attribute 'Nope'"),
    (dict(backbone={"class_path": LATENT, "init_args": {"depth": 3}}), "failed: TypeError"),
    (dict(backbone={"class_path": "collections.OrderedDict"}), "names a type, not a torch.nn.Module subclass"),
    (dict(backbone={"class_path": "test_backbones.ReturnsTensor"}), "returned a Tensor, not a list of (N, C, H, W)"),
    (dict(backbone={"class_path": "test_backbones.ReturnsTokens"}), "has shape (2, 1, 3), not (N, C, H, W)"),
    (dict(backbone={"class_path": "test_backbones.NoChannels"}), "feature map 0 has no channels (shape (2, 0, 1, 1))"),
    (
        dict(backbone={"class_path": "test_backbones.LosesTheBatch"}),
        "feature map 1 has batch size 1 for 2 input images; each map must keep the batch dimension",
    ),
    (dict(backbone={"class_path": "test_backbones.SqueezesTheBatch"}), "feature map 0 has shape (3, 1, 1), not (N"),
    (dict(backbone={"class_path": LATENT}, taps=["stages.0"]), "drop taps"),
    (dict(backbone={"kind": "resnet"}), "a mapping must have class_path"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_SPECS, ids=[str(i) for i in range(len(BAD_SPECS))])
def test_bad_specs_are_one_line(kwargs, message):
    with pytest.raises(ConfigError) as err:
        LPIPS(pretrained=False, heads="random", **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_other_refusals():
    with pytest.raises(ConfigError, match="official.*alex, vgg and squeeze only"):
        LPIPS("torchvision:resnet18", pretrained=False)
    with pytest.raises(ConfigError, match="version 0.0 .* alex, vgg and squeeze only"):
        LPIPS("torchvision:resnet18", version="0.0", pretrained=False, heads="random")
    with pytest.raises(ConfigError, match="lora_rank adapts a backbone that is tuned"):
        LPIPSModule(variant="lin", backbone="timm:vit_tiny_patch16_224", lora_rank=4)
    with pytest.raises(ConfigError, match="has no attention projections"):
        LPIPSModule(variant="tune", backbone="torchvision:resnet18", pretrained=False, lora_rank=4)


def test_spec_forms_and_short_names():
    assert normalize_spec("alex") == {"name": "alex"}
    spec = normalize_spec("timm:x", [1], {"a": 1})
    assert spec == {"name": "timm:x", "taps": [1], "args": {"a": 1}} and normalize_spec(spec) == spec
    assert short_name("torchvision:resnet50") == "resnet50"
    assert short_name({"class_path": LATENT, "init_args": {}}) == "LatentEncoder"
    assert short_name({"name": "timm:vit_small_patch14_dinov2.lvd142m"}) == "vit_small_patch14_dinov2.lvd142m"


# --- LoRA, instances, fixed-size exports --------------------------------------------------------------------
def test_lora_tunes_adapters_only_and_exports_merged(data, tmp_path):
    torch.manual_seed(0)
    model = LPIPSModule(
        variant="tune", backbone="timm:vit_tiny_patch16_224", backbone_args=TINY_VIT, pretrained=False, lora_rank=4
    )
    trainable = {n for n, p in model.lpips.net.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_a", "lora_b")) for n in trainable)
    assert any(".qkv." in n for n in trainable) and any(".proj." in n for n in trainable)
    frozen = {k: v.clone() for k, v in model.lpips.net.state_dict().items() if not k.endswith(("lora_a", "lora_b"))}
    trainer = cpu_trainer(fast_dev_run=2)
    trainer.fit(model, JudgmentsDataModule(str(data), batch_size=4))
    state = model.lpips.net.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items()), "LoRA must leave the base weights alone"
    assert any(not torch.equal(state[k], torch.zeros_like(state[k])) for k in state if k.endswith("lora_b"))
    trainer.save_checkpoint(tmp_path / "lora.ckpt")
    export(tmp_path / "lora.ckpt", tmp_path / "lora.safetensors")
    exported = load(tmp_path / "lora.safetensors")
    assert not any("lora" in k for k in exported.state_dict())
    u0, u1 = _pair()
    with torch.no_grad():
        torch.testing.assert_close(exported(u0, u1), model.lpips.eval()(u0, u1), rtol=1e-5, atol=1e-6)


class TinyConv(nn.Module):
    """A module with default init args only: an instance is rebuilt from its class path."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)

    def forward(self, x):
        return [self.conv(x)]


def test_an_instance_trains_and_its_checkpoint_loads_with_weights_only(data, tmp_path):
    model = LPIPSModule(variant="scratch", backbone=TinyConv())
    assert model.hparams["backbone"] == {"class_path": "test_backbones.TinyConv", "init_args": {}}
    trainer = cpu_trainer(fast_dev_run=1)
    trainer.fit(model, JudgmentsDataModule(str(data), batch_size=4))
    trainer.save_checkpoint(tmp_path / "i.ckpt")
    torch.load(tmp_path / "i.ckpt", weights_only=True)  # plain values only
    rebuilt, hp, _ = model_from_checkpoint(tmp_path / "i.ckpt", trust_code=True)
    u0, u1 = _pair(h=8, w=8)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(u0, u1), model.lpips.eval()(u0, u1))


class SizeBound(nn.Module):
    """Computes in Python from the input size: a trace fixes the size, ONNX cannot stay dynamic."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        k = int(x.shape[-1]) // 8
        return [F.avg_pool2d(self.conv(x), k)]


def test_exports_of_a_size_bound_backbone_are_fixed_and_say_so(data, tmp_path):
    model = LPIPSModule(variant="scratch", backbone={"class_path": "test_backbones.SizeBound"})
    trainer = cpu_trainer(fast_dev_run=1)
    trainer.fit(model, JudgmentsDataModule(str(data), batch_size=4))
    trainer.save_checkpoint(tmp_path / "s.ckpt")
    metric = model.lpips.eval()
    for suffix in (".pt", ".onnx"):
        export(tmp_path / "s.ckpt", tmp_path / f"s{suffix}", trust_code=True)
        loaded = load(tmp_path / f"s{suffix}")
        assert loaded.fixed_size == (64, 64)
        u0, u1 = _pair(h=64, w=64)
        with torch.no_grad():
            torch.testing.assert_close(loaded(u0, u1).flatten(), metric(u0, u1), rtol=1e-5, atol=1e-6)
        with pytest.raises(ConfigError, match="images of 40x48 pixels: this export of backbone .* takes 64x64") as err:
            loaded(*_pair())
        assert "\n" not in str(err.value)


def test_configs_name_their_backbones():
    import yaml

    root = Path(__file__).resolve().parents[1] / "configs"
    for name, expected in (
        ("lin_resnet50.yaml", "torchvision:resnet50"),
        ("lin_convnext_tiny.yaml", "torchvision:convnext_tiny"),
        ("lin_dinov2_small.yaml", "timm:vit_small_patch14_dinov2"),
    ):
        assert yaml.safe_load((root / name).read_text())["model"]["backbone"] == expected
    custom = yaml.safe_load((root / "custom_encoder.yaml").read_text())["model"]["backbone"]
    assert custom["class_path"] == LATENT
    LPIPS(custom, heads="random")  # the example builds as configured
