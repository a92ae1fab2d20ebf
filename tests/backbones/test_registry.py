"""Every backbone family, looped over the registry as timm's tests loop over its models, then each family's facts.

Random weights, offline, tiny images and tiny models where the family allows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lpips_lightning import LPIPS
from lpips_lightning.backbones import FAMILIES, Backbone, Built, register_family
from lpips_lightning.backbones.classic import TapSequence
from lpips_lightning.backbones.specs import canonical, family_of, normalize_spec
from lpips_lightning.errors import ConfigError, WeightsError

pytest.importorskip("timm")
pytestmark = pytest.mark.usefixtures("one_thread")

LATENT = "lpips_lightning.examples.latent_encoder.LatentEncoder"
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)


class OneConv(nn.Module):
    """A module given as an instance."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)

    def forward(self, x):
        return [self.conv(x)]


# --- one test over the registry -----------------------------------------------------------------------
# (registry key, Backbone arguments): every registered family has at least one; a new family adds its own
EXAMPLES = [
    ("classic", dict(name="squeeze")),
    ("torchvision", dict(name="torchvision:resnet18")),
    ("timm", dict(name="timm:test_resnet")),
    ("timm", dict(name="timm:vit_tiny_patch16_224", args=TINY_VIT)),
    ("class_path", dict(name={"class_path": LATENT, "init_args": {"widths": [8, 16], "encoder_width": 8}})),
    ("module", dict(name=OneConv)),  # a class: each test makes its own instance
]


def _build(kwargs: dict, **more) -> Backbone:
    kwargs = dict(kwargs)
    if isinstance(kwargs["name"], type):
        kwargs["name"] = kwargs["name"]()
    return Backbone(pretrained=False, **kwargs, **more)


def test_every_registered_family_has_an_example():
    assert set(FAMILIES) == {family for family, _ in EXAMPLES}


@pytest.mark.parametrize(("family", "kwargs"), EXAMPLES, ids=[f"{f}-{i}" for i, (f, _) in enumerate(EXAMPLES)])
def test_every_family_builds_runs_and_trains_what_it_should(family, kwargs):
    spec = canonical(kwargs["name"]() if isinstance(kwargs["name"], type) else kwargs["name"], None, kwargs.get("args"))
    assert family_of(spec) == family
    torch.manual_seed(0)
    frozen = _build(kwargs)
    assert normalize_spec(frozen.spec) == frozen.spec, "the resolved spec is canonical and rebuilds the backbone"
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    size = max(frozen.min_size, 32)
    x = (torch.rand(2, 3, size, size + 8) * 2 - 1).requires_grad_()
    feats = frozen(x)
    assert [f.dim() for f in feats] == [4] * len(feats) and [f.shape[0] for f in feats] == [2] * len(feats)
    assert tuple(f.shape[1] for f in feats) == frozen.channels, "channels per tap"
    assert all(torch.isfinite(f).all() for f in feats)
    sum(f.sum() for f in feats).backward()
    assert torch.isfinite(x.grad).all() and all(p.grad is None for p in frozen.parameters())
    # the minimum size runs through every tap; one pixel less does not (or leaves a map empty)
    m = frozen.min_size
    with torch.no_grad():
        assert len(frozen(torch.zeros(1, 3, m, m))) == len(frozen.channels)
        if m > 1:
            try:
                below = frozen(torch.zeros(1, 3, m - 1, m - 1))
            except Exception:
                below = None
            assert below is None or any(0 in f.shape[2:] for f in below), f"{m - 1}x{m - 1} runs: not the minimum"
    # a tuned backbone trains every parameter, and in train mode
    tuned = _build(kwargs, requires_grad=True)
    assert tuned.training and tuned.channels == frozen.channels
    sum(f.sum() for f in tuned(x.detach())).backward()
    missing = [n for n, p in tuned.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing[:5]}"


def _toy_family(spec: dict, pretrained: bool, weights) -> Built:
    """A family of one model: a 1x1 convolution (``toy:<anything>``)."""
    return Built(TapSequence([nn.Conv2d(3, 5, 1)]), {"name": spec["name"], "taps": None, "args": {}})


def test_a_new_family_is_one_registration():
    register_family("toy")(_toy_family)
    try:
        metric = LPIPS("toy:one", heads="random")
        assert metric.net.channels == (5,) and metric.min_size == 1 and metric.backbone_spec["name"] == "toy:one"
        with pytest.raises(ConfigError, match=r"torchvision:<model>, timm:<model>, toy:<model>, or \{class_path"):
            LPIPS("nonesuch", heads="random")
    finally:
        FAMILIES.pop("toy")


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


class ImageNetModule(nn.Module):
    input_mean = (0.485, 0.456, 0.406)
    input_std = (0.229, 0.224, 0.225)

    def forward(self, x):
        return [x]


class Raw(nn.Module):
    """Keeps what it was given."""

    def forward(self, x):
        self.seen = x
        return [x]


def test_custom_input_normalisation_is_declared_by_the_module():
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    raw = Raw()
    LPIPS(raw, heads=None).features(x)
    torch.testing.assert_close(raw.seen, x)  # no declaration: the [-1, 1] images as they are
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


# --- LoRA and the configs ------------------------------------------------------------------------------
def test_lora_adapts_attention_projections_only_and_merges_to_the_same_network():
    torch.manual_seed(0)
    net = Backbone("timm:vit_tiny_patch16_224", pretrained=False, args=TINY_VIT, requires_grad=True)
    targets = net.add_lora(4)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_a", "lora_b")) for n in trainable)
    assert any(".qkv" in t for t in targets) and any(".proj" in t for t in targets) and net.training
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("lora_b"):
                p.uniform_(-0.1, 0.1)  # a trained update
    x = torch.rand(2, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        before = net(x)
        net.merge_lora()
        after = net(x)
    assert not any("lora" in k for k in net.state_dict()) and net.lora_rank == 0
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_configs_name_their_backbones():
    import yaml

    root = Path(__file__).resolve().parents[2] / "configs"
    for name, expected in (
        ("lin_resnet50.yaml", "torchvision:resnet50"),
        ("lin_convnext_tiny.yaml", "torchvision:convnext_tiny"),
        ("lin_dinov2_small.yaml", "timm:vit_small_patch14_dinov2"),
    ):
        assert yaml.safe_load((root / name).read_text())["model"]["backbone"] == expected
    custom = yaml.safe_load((root / "custom_encoder.yaml").read_text())["model"]["backbone"]
    assert custom["class_path"] == LATENT
    LPIPS(custom, heads="random")  # the example builds as configured
