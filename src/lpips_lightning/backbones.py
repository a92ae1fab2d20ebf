"""The backbone table: which torchvision network, which ImageNet weights, where LPIPS taps it.

Adding a backbone is one entry in `BACKBONES`. Each tap is a slice of the network's
``features`` sequence; the slice keeps the original indices as module names, so the
state dict reads ``slices.{k}.{j}.weight`` and maps one to one onto the `lpips`
package's ``net.slice{k+1}.{j}.weight``.
"""

from __future__ import annotations

import os
import pickle
import re
import struct
import warnings
import zipfile
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
    """`torch.load` on the CPU, ``weights_only=True``; raise `error` naming the file and what it is not.

    Refused in one line each: a missing file, a folder, an empty, truncated or damaged file, a
    TorchScript archive, a safetensors file, a zip that torch did not write, and a file holding
    pickled Python objects (anything but tensors and plain values: it could run code when loaded).
    """
    path = Path(path)
    check_readable(path, what, error)
    kind = sniff(path)
    if kind == "torchscript":
        raise error(f"{path}: a TorchScript export, not a {what} file (load it with lpips_lightning.load)")
    if kind == "safetensors":
        raise error(f"{path}: a safetensors file, not a {what} file (load it with lpips_lightning.load)")
    if kind == "damaged zip":
        raise error(f"{path}: truncated or damaged (its zip archive has no directory), not a readable {what} file")
    if kind == "zip":
        raise error(f"{path}: a zip archive that torch did not write, not a {what} file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if "Weights only load failed" in str(err) and found:
            raise error(
                f"{path}: refused: holds pickled Python objects ({found.group(1)}), not a plain {what} file "
                "of tensors and plain values (loading such objects can run code)"
            ) from None
        raise error(f"{path}: not a {what} file (unreadable pickle data)") from None
    except (EOFError, RuntimeError):
        raise error(f"{path}: truncated or damaged, not a readable {what} file") from None
    except Exception as err:
        raise error(f"{path}: not a {what} file ({type(err).__name__})") from None


def check_readable(path: str | os.PathLike, what: str, error: type[Exception] = WeightsError) -> None:
    """Raise `error` naming `path` when it is missing, a folder, unreadable or empty."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path} is a folder, not a {what} file")
    if not path.is_file():
        raise error(f"{path}: no such {what} file")
    if not os.access(path, os.R_OK):
        raise error(f"{path}: {what} file is not readable (permission denied)")
    if path.stat().st_size == 0:
        raise error(f"{path}: empty file, not a {what} file")


def sniff(path: str | os.PathLike) -> str:
    """What a file holds, from its first bytes and zip directory.

    ``torchscript``, ``torch zip`` (`torch.save`), ``zip`` (another zip archive), ``damaged zip``
    (truncated: no directory), ``safetensors`` or ``other`` (e.g. a legacy torch pickle).
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            return "damaged zip"
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "damaged zip"
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            return "torch zip"
        return "zip"
    if len(head) >= 9:
        (length,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 0 < length <= path.stat().st_size - 8:
            return "safetensors"
    return "other"


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
        self.min_size = entry.min_size
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
