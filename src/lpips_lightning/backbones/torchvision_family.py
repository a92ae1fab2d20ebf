"""``torchvision:<model>``: any torchvision classification model, cut at named taps.

``taps`` are node or module names (`torchvision.models.feature_extraction`), by default each
family's stage outputs (ResNet ``layer1``..``layer4``, ConvNeXt ``features.1/3/5/7``, VGG/AlexNet
the ReLUs LPIPS taps). ``backbone_args`` are the model constructor's keyword arguments; its
``weights`` picks one of torchvision's weights by name. The input normalisation is ImageNet's.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from ..errors import ConfigError, LPIPSLightningError
from ..weights import load_state_dict_file, load_used, torchvision_cache_file, torchvision_state_dict
from .registry import IMAGENET_MEAN, IMAGENET_STD, Built, one_line, register_family, unknown_model


@register_family("torchvision")
def build(spec: dict, pretrained: bool, weights: str | os.PathLike | None) -> Built:
    """A torchvision model's feature extractor at the spec's taps (default: its stage outputs)."""
    label = spec["name"]
    model_name = label.split(":", 1)[1]
    known = torchvision.models.list_models(module=torchvision.models)
    if model_name not in known:
        raise unknown_model("torchvision", model_name, known)
    args = dict(spec["args"])
    chosen = args.pop("weights", None)  # which of torchvision's weights: e.g. IMAGENET1K_V1 (default: DEFAULT)
    network = _construct(label, lambda: torchvision.models.get_model(model_name, weights=None, **args), args)
    network.eval()
    if weights is not None:
        state, source = load_state_dict_file(weights), str(weights)
    elif pretrained:
        enum = _weights_enum(model_name, chosen, label)
        state = torchvision_state_dict(enum, f"ImageNet weights for backbone {label}")
        source = str(torchvision_cache_file(enum))
    else:
        state = None
    taps = [str(t) for t in spec["taps"]] if spec["taps"] else _default_taps(model_name, network, label)
    _check_taps(network, taps, label)
    network_keys = list(network.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        body = create_feature_extractor(network, return_nodes={t: t for t in taps})
    if state is not None:
        load_used(body, network_keys, state, source)
    if chosen is not None:
        args = {"weights": chosen, **args}
    return Built(body, {"name": label, "taps": taps, "args": args}, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def embedder(spec: dict, pretrained: bool, weights: str | os.PathLike | None, kind: str) -> Built:
    """The whole torchvision model of `spec`, its last linear layer removed: the penultimate pooled features (N, D).

    Mean, std and input size (``extra["size"]``) from its weights' meta (torchvision's transforms).
    """
    label = spec["name"]
    if kind != "pool":
        raise ConfigError(
            f"features {kind}: torchvision backbone {label} gives its pooled features only; use features: pool "
            "(the class token of ViTs: a timm: backbone)"
        )
    model_name = label.split(":", 1)[1]
    known = torchvision.models.list_models(module=torchvision.models)
    if model_name not in known:
        raise unknown_model("torchvision", model_name, known)
    args = dict(spec["args"])
    chosen = args.pop("weights", None)
    network = _construct(label, lambda: torchvision.models.get_model(model_name, weights=None, **args), args)
    network.eval()
    enum = _weights_enum(model_name, chosen, label)
    if weights is not None:
        load_used(network, list(network.state_dict()), load_state_dict_file(weights), str(weights))
    elif pretrained:
        state = torchvision_state_dict(enum, f"ImageNet weights for backbone {label}")
        load_used(network, list(network.state_dict()), state, str(torchvision_cache_file(enum)))
    linears = [name for name, m in network.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"backbone {label} has no final linear layer whose input would be its pooled features")
    parent, _, child = linears[-1].rpartition(".")
    owner = network.get_submodule(parent) if parent else network
    dim = getattr(owner, child).in_features
    setattr(owner, child, nn.Identity())
    preset = enum.transforms()
    size = int(preset.crop_size[0])
    if chosen is not None:
        args = {"weights": chosen, **args}
    resolved = {"name": label, "taps": None, "args": args}
    return Built(network, resolved, mean=tuple(preset.mean), std=tuple(preset.std), channels=(dim,), min_size=1,
                 extra={"size": (size, size)})  # fmt: skip


def _construct(label: str, make: Callable[[], nn.Module], args: dict) -> nn.Module:
    """Call a constructor, turning a bad keyword argument into one line naming the backbone."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return make()
    except LPIPSLightningError:
        raise
    except Exception as err:
        raise ConfigError(f"backbone {label} could not be built with backbone_args {args}: {one_line(err)}") from None


def _weights_enum(model_name: str, chosen: str | None, label: str) -> WeightsEnum:
    """The weights enum member that backbone_args' ``weights`` names (default: torchvision's DEFAULT)."""
    enum = torchvision.models.get_model_weights(model_name)
    if chosen is None:
        return enum.DEFAULT
    names = [member.name for member in enum]
    name = str(chosen).rsplit(".", 1)[-1]
    if name not in names and name != "DEFAULT":
        raise ConfigError(f"backbone {label}: unknown weights {chosen!r}; choose one of: {', '.join(names)}")
    return enum.DEFAULT if name == "DEFAULT" else enum[name]


def _default_taps(model_name: str, network: nn.Module, label: str) -> list[str]:
    """Each torchvision family's stage outputs (the ReLUs LPIPS taps for AlexNet, VGG, SqueezeNet 1.1)."""
    if all(hasattr(network, f"layer{i}") for i in range(1, 5)):  # ResNet, ResNeXt, Wide ResNet
        return [f"layer{i}" for i in range(1, 5)]
    if model_name == "alexnet":
        return [f"features.{i}" for i in (1, 4, 7, 9, 11)]
    if model_name == "squeezenet1_1":
        return [f"features.{i}" for i in (1, 4, 7, 9, 10, 11, 12)]
    features = getattr(network, "features", None)
    if model_name.startswith("vgg") and isinstance(features, nn.Sequential):
        layers = list(features)
        relus = [i for i, m in enumerate(layers) if isinstance(m, nn.ReLU)]
        pools = [i for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
        return [f"features.{max(r for r in relus if r < p)}" for p in pools if any(r < p for r in relus)]
    trunk = getattr(network, "trunk_output", None)  # RegNet
    if isinstance(trunk, nn.Sequential):
        return [f"trunk_output.{name}" for name, _ in trunk.named_children()]
    if isinstance(features, nn.Sequential):  # ConvNeXt, EfficientNet, MobileNet, DenseNet, ...
        taps = _stage_outputs(features)
        if taps:
            return [f"features.{name}" for name in taps]
    raise ConfigError(
        f"backbone {label} has no default taps; pass taps: [...] (module or node names such as {_some_names(network)})"
    )


@torch.no_grad()
def _stage_outputs(features: nn.Sequential, size: int = 128) -> list[str]:
    """The last child of `features` at each spatial resolution (a trailing pooling layer left out)."""
    x = torch.zeros(1, 3, size, size)
    last: dict[tuple[int, int], str] = {}
    kinds: dict[str, nn.Module] = {}
    try:
        for name, child in features.named_children():
            x = child(x)
            if x.dim() != 4:
                return []
            last[tuple(x.shape[-2:])] = name
            kinds[name] = child
    except Exception:
        return []
    names = list(dict.fromkeys(last.values()))
    pools = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    if names and isinstance(kinds[names[-1]], pools):
        names = names[:-1]
    return names


def _some_names(network: nn.Module, n: int = 14) -> str:
    names = [name for name, _ in network.named_modules() if name and name.count(".") == 0]
    names += [name for name, _ in network.named_modules() if name.count(".") == 1]
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def _check_taps(network: nn.Module, taps: list[str], label: str) -> None:
    modules = {name for name, _ in network.named_modules() if name}
    unknown = [t for t in taps if t not in modules]
    if unknown:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nodes = set(get_graph_node_names(network)[1])
        unknown = [t for t in unknown if t not in nodes]
    if unknown:
        raise ConfigError(
            f"unknown tap {unknown[0]!r} of backbone {label}; taps are module or node names such as "
            f"{_some_names(network)} (torchvision.models.feature_extraction.get_graph_node_names lists them all)"
        )
    if len(set(taps)) != len(taps):
        raise ConfigError(f"backbone {label}: taps {taps} name a tap twice")
