"""The backbone table: which torchvision network, which ImageNet weights, where LPIPS taps it.

Adding a backbone is one entry in `BACKBONES`. Each tap is a slice of the network's
``features`` sequence; the slice keeps the original indices as module names, so the
state dict reads ``slices.{k}.{j}.weight`` and maps one to one onto the `lpips`
package's ``net.slice{k+1}.{j}.weight``.
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

from .errors import WeightsError, check_choice


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and where LPIPS reads its features."""

    constructor: Callable[..., nn.Module]
    weights: WeightsEnum
    taps: tuple[tuple[int, int], ...]
    channels: tuple[int, ...]


BACKBONES: dict[str, BackboneSpec] = {
    "alex": BackboneSpec(
        torchvision.models.alexnet,
        torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
        ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12)),
        (64, 192, 384, 256, 256),
    ),
    "vgg": BackboneSpec(
        torchvision.models.vgg16,
        torchvision.models.VGG16_Weights.IMAGENET1K_V1,
        ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30)),
        (64, 128, 256, 512, 512),
    ),
    "squeeze": BackboneSpec(
        torchvision.models.squeezenet1_1,
        torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1,
        ((0, 2), (2, 5), (5, 8), (8, 10), (10, 11), (11, 12), (12, 13)),
        (64, 128, 256, 384, 384, 512, 512),
    ),
}


def spec(name: str) -> BackboneSpec:
    """The table entry for `name`, or a `ConfigError` listing the known backbones."""
    check_choice("backbone", name, list(BACKBONES))
    return BACKBONES[name]


def cache_file(name: str) -> Path:
    """Where torchvision's weights API keeps the ImageNet weights of backbone `name`."""
    url = spec(name).weights.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    """Load the ImageNet weights through torchvision's weights API (cache, else download)."""
    weights = spec(name).weights
    target = cache_file(name)
    try:
        return weights.get_state_dict(progress=False, weights_only=True, map_location="cpu")
    except Exception as err:  # urllib, ssl, socket or a damaged file: all mean "not available"
        state = "is damaged" if target.exists() else "is missing"
        raise WeightsError(
            f"ImageNet weights for backbone {name!r} are not available: {target.name} {state} in "
            f"{target.parent} and could not be downloaded ({type(err).__name__}); put the file there, "
            f"or pass backbone_weights=PATH, or pretrained=False"
        ) from None


def load_torch_file(path: str | os.PathLike, what: str, error: type[Exception] = WeightsError) -> object:
    """`torch.load` on the CPU, ``weights_only=True``; raise `error` naming the file if missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {what} file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise error(f"{path}: not a {what} file ({type(err).__name__})") from None


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict from a file: on the CPU, tensors only (``weights_only=True``)."""
    state = load_torch_file(path, "weights")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


def strict_load(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `module`, refusing missing, unexpected or misshapen keys by name."""
    check_fits(module.state_dict(), state, source)
    module.load_state_dict(state, strict=True)


def check_fits(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str) -> None:
    """Raise `WeightsError` naming the keys unless `state` has exactly `own`'s keys and shapes."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if shapes:
        problems.append(
            "wrong shapes " + _few([f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in shapes])
        )
    if problems:
        raise WeightsError(f"{source}: does not fit this model: {'; '.join(problems)}")


def _few(items: list[str], n: int = 6) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


class Backbone(nn.Module):
    """A torchvision network cut into the LPIPS taps; `forward` returns one tensor per tap."""

    def __init__(
        self,
        name: str = "alex",
        pretrained: bool = True,
        weights: str | os.PathLike | None = None,
        requires_grad: bool = False,
    ) -> None:
        super().__init__()
        entry = spec(name)
        self.name = name
        self.channels = entry.channels
        features = entry.constructor(weights=None).features
        if weights is not None:
            state = load_state_dict_file(weights)
            _load_features(features, state, str(weights))
        elif pretrained:
            _load_features(features, imagenet_state_dict(name), str(cache_file(name)))
        self.slices = nn.ModuleList(
            nn.Sequential(OrderedDict((str(j), features[j]) for j in range(a, b))) for a, b in entry.taps
        )
        self.requires_grad_(requires_grad)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for block in self.slices:
            x = block(x)
            taps.append(x)
        return taps


def _load_features(features: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load the ``features.*`` part of a torchvision state dict (the classifier is not used)."""
    sub = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    if not sub:
        raise WeightsError(f"{source}: no 'features.*' keys; expected a torchvision state dict of this backbone")
    strict_load(features, sub, source)
