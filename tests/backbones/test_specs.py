"""What a backbone spec is: its forms, names, and the one-line refusal of every bad one."""

from __future__ import annotations

import pytest
from torch import nn

from lpips_lightning import LPIPS
from lpips_lightning.backbones.specs import normalize_spec, short_name
from lpips_lightning.errors import ConfigError
from lpips_lightning.train.module import LPIPSModule

pytest.importorskip("timm")
pytestmark = pytest.mark.usefixtures("one_thread")

LATENT = "lpips_lightning.examples.latent_encoder.LatentEncoder"


class Identity(nn.Module):
    def forward(self, x):
        return [x]


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
    (dict(backbone={"class_path": "test_specs.ReturnsTensor"}), "returned a Tensor, not a list of (N, C, H, W)"),
    (dict(backbone={"class_path": "test_specs.ReturnsTokens"}), "has shape (2, 1, 3), not (N, C, H, W)"),
    (dict(backbone={"class_path": "test_specs.NoChannels"}), "feature map 0 has no channels (shape (2, 0, 1, 1))"),
    (
        dict(backbone={"class_path": "test_specs.LosesTheBatch"}),
        "feature map 1 has batch size 1 for 2 input images; each map must keep the batch dimension",
    ),
    (dict(backbone={"class_path": "test_specs.SqueezesTheBatch"}), "feature map 0 has shape (3, 1, 1), not (N"),
    (dict(backbone={"class_path": LATENT}, taps=["stages.0"]), "drop taps"),
    (dict(backbone={"kind": "resnet"}), "a mapping must have class_path"),
    (dict(backbone="classic:alex"), "unknown backbone 'classic:alex'"),  # the registry keys of unprefixed forms
    (dict(backbone="module:x"), "unknown backbone 'module:x'"),
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
    assert normalize_spec(Identity()) == {"class_path": "test_specs.Identity", "init_args": {}}
    assert short_name("torchvision:resnet50") == "resnet50"
    assert short_name({"class_path": LATENT, "init_args": {}}) == "LatentEncoder"
    assert short_name({"name": "timm:vit_small_patch14_dinov2.lvd142m"}) == "vit_small_patch14_dinov2.lvd142m"
