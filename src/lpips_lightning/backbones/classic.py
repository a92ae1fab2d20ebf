"""The classic three (alex, vgg, squeeze), cut exactly as the `lpips` package cuts them.

Each tap is a slice of torchvision's ``features`` sequence; the slice keeps the original
indices as module names, so the state dict reads ``slices.{k}.{j}.weight`` and maps one to one
onto the `lpips` package's ``net.slice{k+1}.{j}.weight``. Their input scaling is LPIPS's
(`SHIFT`, `SCALE`); their ImageNet weights come through torchvision's weights API.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from ..errors import WeightsError, check_choice
from ..weights import load_state_dict_file, strict_load, torchvision_cache_file, torchvision_state_dict
from .registry import Built, register_family

# The LPIPS input scaling of version 0.1, in [-1, 1] image terms: (x - SHIFT) / SCALE. It is
# ImageNet's normalisation: SHIFT = 2 * mean - 1, SCALE = 2 * std.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one classic backbone and where LPIPS reads its features."""

    constructor: Callable[..., nn.Module]
    weights: WeightsEnum
    taps: tuple[tuple[int, int], ...]
    channels: tuple[int, ...]
    # the smallest height and width that runs through every tap (found by trying each size:
    # below it a pooling layer gets an empty input; ONNX exports then return 0 without an error)
    min_size: int


BACKBONES: dict[str, BackboneSpec] = {
    "alex": BackboneSpec(
        torchvision.models.alexnet,
        torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
        ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12)),
        (64, 192, 384, 256, 256),
        31,
    ),
    "vgg": BackboneSpec(
        torchvision.models.vgg16,
        torchvision.models.VGG16_Weights.IMAGENET1K_V1,
        ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30)),
        (64, 128, 256, 512, 512),
        16,
    ),
    "squeeze": BackboneSpec(
        torchvision.models.squeezenet1_1,
        torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1,
        ((0, 2), (2, 5), (5, 8), (8, 10), (10, 11), (11, 12), (12, 13)),
        (64, 128, 256, 384, 384, 512, 512),
        17,
    ),
}


def spec(name: str) -> BackboneSpec:
    """The table entry of classic backbone `name`, or a `ConfigError` listing the known ones."""
    check_choice("backbone", name, list(BACKBONES))
    return BACKBONES[name]


def cache_file(name: str) -> Path:
    """Where torchvision's weights API keeps the ImageNet weights of classic backbone `name`."""
    return torchvision_cache_file(spec(name).weights)


def imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    """Load the ImageNet weights of classic backbone `name` through torchvision's weights API."""
    return torchvision_state_dict(spec(name).weights, f"ImageNet weights for backbone {name!r}")


class TapSequence(nn.ModuleList):
    """Slices of a sequential network run one after another; returns each slice's output."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for block in self:
            x = block(x)
            taps.append(x)
        return taps


@register_family("classic")
def build(spec: dict, pretrained: bool, weights: str | os.PathLike | None) -> Built:
    """The slices of a classic backbone (``{"name": "alex"}``), its table's channels and minimum size."""
    name = spec["name"]
    entry = BACKBONES[name]
    features = entry.constructor(weights=None).features
    if weights is not None:
        _load_features(features, load_state_dict_file(weights), str(weights))
    elif pretrained:
        _load_features(features, imagenet_state_dict(name), str(cache_file(name)))
    slices = TapSequence(nn.Sequential(OrderedDict((str(j), features[j]) for j in range(a, b))) for a, b in entry.taps)
    return Built(
        slices,
        {"name": name},
        shift=SHIFT,
        scale=SCALE,
        channels=entry.channels,
        min_size=entry.min_size,
        attr="slices",
    )


def _load_features(features: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load the ``features.*`` part of a torchvision state dict (the classifier is not used)."""
    sub = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    if not sub:
        raise WeightsError(f"{source}: no 'features.*' keys; expected a torchvision state dict of this backbone")
    strict_load(features, sub, source)
