"""Backbones: a registry of families, each turning a spec into a network cut at its taps.

A backbone is named by a *spec*:

- ``alex``, ``vgg``, ``squeeze``: the classic three (`BACKBONES`), exactly as the `lpips` package
  cuts them. Each tap is a slice of torchvision's ``features`` sequence; the slice keeps the
  original indices as module names, so the state dict reads ``slices.{k}.{j}.weight`` and maps one
  to one onto the `lpips` package's ``net.slice{k+1}.{j}.weight``.
- ``torchvision:<model>``: any torchvision classification model; ``taps`` are node or module names
  (`torchvision.models.feature_extraction`), by default each family's stage outputs (ResNet
  ``layer1``..``layer4``, ConvNeXt ``features.1/3/5/7``, VGG/AlexNet the ReLUs LPIPS taps).
- ``timm:<model>`` (``pip install 'lpips-lightning[timm]'``): ``taps`` are indices of the model's
  feature stages (CNNs) or blocks (ViTs: the patch tokens reshaped to (N, C, h, w), class and
  register tokens dropped), read with timm's ``forward_intermediates``; by default every stage of
  a CNN, four evenly spaced blocks of a ViT.
- ``{"class_path": "package.module.Class", "init_args": {...}}`` (jsonargparse's form in YAML), or
  in Python an `nn.Module` instance: any module whose ``forward(x)`` returns a list of (N, C, h, w)
  feature maps, e.g. a VAE encoder in front of a small convolutional stack (latent LPIPS).

``backbone_args`` are keyword arguments of the torchvision/timm constructor; a custom module takes
its ``init_args``. Channels per tap are found with one dry run, the minimum input size by trying
sizes. Each family brings its input normalisation: the LPIPS scaling for the classic three (which
is ImageNet's mean and std), ImageNet's for torchvision, the model's own (``pretrained_cfg``) for
timm, and for a custom module its ``input_mean``/``input_std`` attributes (for [0, 1] images) if it
has them, else none (it sees the [-1, 1] images).

A new family plugs in with `register_family`: a function from (spec, pretrained, weights file)
to a `Built`; `lpips.py` and `module.py` need no change.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import json
import logging
import math
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from .errors import ConfigError, LPIPSLightningError, WeightsError, check_choice

# the weight-file helpers lived here before `weights` existed: importable from here still
from .weights import (  # noqa: F401
    check_fits,
    check_readable,
    load_state_dict_file,
    load_torch_file,
    load_used,
    sniff,
    strict_load,
    torchvision_cache_file,
    torchvision_state_dict,
    unavailable,
)

# The LPIPS input scaling of version 0.1, in [-1, 1] image terms: (x - SHIFT) / SCALE. It is
# ImageNet's normalisation: SHIFT = 2 * mean - 1, SCALE = 2 * std.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_PROBE_SIZE = 1024


# --- the classic three --------------------------------------------------------------------------
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


# --- specs ----------------------------------------------------------------------------------------
BackboneArg = str | dict | nn.Module


def normalize_spec(
    backbone: BackboneArg, taps: Sequence[str | int] | None = None, args: dict | None = None
) -> dict[str, Any]:
    """The canonical, plain-value form of a backbone spec (see the module docstring).

    ``{"name": "alex"}``, ``{"name": "torchvision:resnet50", "taps": [...] or None, "args": {...}}``,
    ``{"class_path": "...", "init_args": {...}}``. A dict already in the first form (as exports
    store it) passes through, `taps` and `args` filling in what it lacks.
    """
    if isinstance(backbone, nn.Module):
        if taps or args:
            raise ConfigError("a backbone given as a module returns its own feature maps: drop taps / backbone_args")
        cls = type(backbone)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": {}}
    if isinstance(backbone, dict):
        if "class_path" in backbone:
            unknown = sorted(set(backbone) - {"class_path", "init_args"})
            if unknown:
                raise ConfigError(f"backbone {{class_path: ...}} takes class_path and init_args only, not {unknown}")
            if taps:
                raise ConfigError(
                    f"taps apply to torchvision: and timm: backbones; {backbone['class_path']} returns its own "
                    "list of feature maps: drop taps"
                )
            if args:
                raise ConfigError(
                    f"backbone {backbone['class_path']}: put its arguments in init_args, not backbone_args"
                )
            init_args = backbone.get("init_args") or {}
            if not isinstance(backbone["class_path"], str) or not isinstance(init_args, dict):
                raise ConfigError("backbone class_path must be a dotted name and init_args a mapping of arguments")
            return {"class_path": backbone["class_path"], "init_args": dict(init_args)}
        if "name" in backbone and isinstance(backbone["name"], str):
            return normalize_spec(backbone["name"], backbone.get("taps") or taps, backbone.get("args") or args)
        raise ConfigError(
            f"backbone {backbone!r}: a mapping must have class_path (and init_args), e.g. "
            "{class_path: package.module.Class, init_args: {...}}"
        )
    if not isinstance(backbone, str):
        raise ConfigError(f"backbone must be a name, a {{class_path, init_args}} mapping or a module, not {backbone!r}")
    if backbone in BACKBONES:
        if taps:
            raise ConfigError(
                f"backbone {backbone}'s taps are fixed (the lpips package's); to choose others use "
                f"torchvision:{BACKBONES[backbone].constructor.__name__} with taps"
            )
        if args:
            raise ConfigError(
                f"backbone {backbone} takes no backbone_args (it is built as the lpips package builds it)"
            )
        return {"name": backbone}
    family, sep, model = backbone.partition(":")
    if not sep or family not in FAMILIES or not model:
        raise ConfigError(
            f"unknown backbone {backbone!r}; choose one of: {', '.join(BACKBONES)}, "
            + ", ".join(f"{f}:<model>" for f in FAMILIES)
            + ", or {class_path: package.module.Class, init_args: {...}}"
        )
    if args is not None and not isinstance(args, dict):
        raise ConfigError(f"backbone_args must be a mapping of keyword arguments, not {args!r}")
    return {"name": backbone, "taps": list(taps) if taps else None, "args": dict(args or {})}


def display_name(spec: dict) -> str:
    """How messages and metadata name a backbone: ``alex``, ``timm:vit_small_patch14_dinov2``, a class path."""
    return spec.get("name") or spec.get("class_path") or "?"


def short_name(backbone: BackboneArg) -> str:
    """A short name fit for a folder: ``alex``, ``resnet50``, ``vit_small_patch14_dinov2``, ``LatentEncoder``."""
    if isinstance(backbone, nn.Module):
        return type(backbone).__name__
    if isinstance(backbone, dict) and backbone.get("class_path"):
        name = str(backbone["class_path"]).rsplit(".", 1)[-1]
    elif isinstance(backbone, dict):
        name = str(backbone.get("name") or "custom")
    else:
        name = str(backbone)
    return re.sub(r"[^\w.-]+", "_", name.rsplit(":", 1)[-1]) or "backbone"


def is_classic(spec: dict) -> bool:
    return spec.get("name") in BACKBONES


# --- the registry -----------------------------------------------------------------------------------
@dataclass
class Built:
    """What a family builds from a spec.

    `body`: an `nn.Module` whose ``forward(x)`` returns a list, tuple or dict of (N, C, h, w) feature
    maps, one per tap, from normalised images. `spec`: the resolved spec (plain values, default taps
    filled in) that rebuilds it. `mean`/`std`: the input normalisation in [0, 1] image terms (None:
    the body sees the [-1, 1] images), or `shift`/`scale` directly in [-1, 1] terms. `channels` and
    `min_size`: when None, found by a dry run. `attr`: the attribute the body is stored under
    (``slices`` keeps the classic state dict names).
    """

    body: nn.Module
    spec: dict
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    shift: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None
    channels: tuple[int, ...] | None = None
    min_size: int | None = None
    attr: str = "body"
    extra: dict = field(default_factory=dict)

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """(shift, scale) in [-1, 1] image terms, or None."""
        if self.shift is not None and self.scale is not None:
            return tuple(self.shift), tuple(self.scale)
        if self.mean is not None and self.std is not None:
            return tuple(2 * m - 1 for m in self.mean), tuple(2 * s for s in self.std)
        return None


Builder = Callable[[dict, bool, "str | os.PathLike | None"], Built]
FAMILIES: dict[str, Builder] = {}


def register_family(prefix: str) -> Callable[[Builder], Builder]:
    """Register a family of backbones named ``<prefix>:<model>``; use as a decorator on its builder.

    The builder gets the canonical spec (``name``, ``taps`` or None, ``args``), whether to load
    pretrained weights, and a weights file to load instead (or None); it returns a `Built`.
    """

    def add(build: Builder) -> Builder:
        FAMILIES[prefix] = build
        return build

    return add


# --- the families -----------------------------------------------------------------------------------
class TapSequence(nn.ModuleList):
    """Slices of a sequential network run one after another; returns each slice's output."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for block in self:
            x = block(x)
            taps.append(x)
        return taps


def _build_classic(spec: dict, pretrained: bool, weights: str | os.PathLike | None) -> Built:
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


def _construct(label: str, make: Callable[[], nn.Module], args: dict) -> nn.Module:
    """Call a constructor, turning a bad keyword argument into one line naming the backbone."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return make()
    except LPIPSLightningError:
        raise
    except Exception as err:
        raise ConfigError(f"backbone {label} could not be built with backbone_args {args}: {_line(err)}") from None


def _line(err: BaseException, limit: int = 200) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:limit]}" if text else type(err).__name__


def _unknown_model(family: str, model: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(model, known, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown {family} model {model!r} (backbone {family}:{model}){hint}")


@register_family("torchvision")
def _build_torchvision(spec: dict, pretrained: bool, weights: str | os.PathLike | None) -> Built:
    from torchvision.models.feature_extraction import create_feature_extractor

    label = spec["name"]
    model_name = label.split(":", 1)[1]
    known = torchvision.models.list_models(module=torchvision.models)
    if model_name not in known:
        raise _unknown_model("torchvision", model_name, known)
    args = dict(spec["args"])
    chosen = args.pop("weights", None)  # which of torchvision's weights: e.g. IMAGENET1K_V1 (default: DEFAULT)
    network = _construct(label, lambda: torchvision.models.get_model(model_name, weights=None, **args), args)
    network.eval()
    if weights is not None:
        state, source = load_state_dict_file(weights), str(weights)
    elif pretrained:
        enum = _torchvision_weights(model_name, chosen, label)
        state = torchvision_state_dict(enum, f"ImageNet weights for backbone {label}")
        source = str(torchvision_cache_file(enum))
    else:
        state = None
    taps = [str(t) for t in spec["taps"]] if spec["taps"] else _torchvision_default_taps(model_name, network, label)
    _check_torchvision_taps(network, taps, label)
    network_keys = list(network.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        body = create_feature_extractor(network, return_nodes={t: t for t in taps})
    if state is not None:
        load_used(body, network_keys, state, source)
    if chosen is not None:
        args = {"weights": chosen, **args}
    return Built(body, {"name": label, "taps": taps, "args": args}, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def _torchvision_weights(model_name: str, chosen: str | None, label: str) -> WeightsEnum:
    """The weights enum member that backbone_args' ``weights`` names (default: torchvision's DEFAULT)."""
    enum = torchvision.models.get_model_weights(model_name)
    if chosen is None:
        return enum.DEFAULT
    names = [member.name for member in enum]
    name = str(chosen).rsplit(".", 1)[-1]
    if name not in names and name != "DEFAULT":
        raise ConfigError(f"backbone {label}: unknown weights {chosen!r}; choose one of: {', '.join(names)}")
    return enum.DEFAULT if name == "DEFAULT" else enum[name]


def _torchvision_default_taps(model_name: str, network: nn.Module, label: str) -> list[str]:
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


def _check_torchvision_taps(network: nn.Module, taps: list[str], label: str) -> None:
    modules = {name for name, _ in network.named_modules() if name}
    unknown = [t for t in taps if t not in modules]
    if unknown:
        from torchvision.models.feature_extraction import get_graph_node_names

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


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """Raise these loggers to ERROR for the duration."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _require_timm():
    try:
        import timm
    except ImportError:
        raise ConfigError("timm backbones need timm: pip install 'lpips-lightning[timm]'") from None
    return timm


class Intermediates(nn.Module):
    """A timm model's intermediate feature maps at `indices` (``forward_intermediates``, NCHW)."""

    def __init__(self, model: nn.Module, indices: list[int]) -> None:
        super().__init__()
        self.model = model
        self.indices = list(indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, indices=self.indices, output_fmt="NCHW", intermediates_only=True)


@register_family("timm")
def _build_timm(spec: dict, pretrained: bool, weights: str | os.PathLike | None) -> Built:
    timm = _require_timm()
    label = spec["name"]
    model_name = label.split(":", 1)[1]
    if not timm.is_model(model_name.split(".", 1)[0]):
        raise _unknown_model("timm", model_name, timm.list_models())
    args = dict(spec["args"])
    load_pretrained = pretrained and weights is None

    def create(**extra) -> nn.Module:
        with _quiet_loggers("huggingface_hub", "timm"):  # a failed download is our one line, not their warnings
            return timm.create_model(model_name, pretrained=load_pretrained, **{**extra, **args})

    # ViTs: any image size (the position embedding is resampled, the image padded to whole patches)
    tries = [{"dynamic_img_size": True, "dynamic_img_pad": True}, {"dynamic_img_size": True}, {}]
    tries = [t for t in tries if not set(t) & set(args)] or [{}]
    network = None
    for extra in tries:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                network = create(**extra)
        except TypeError as err:
            if extra:
                continue  # the model takes no such arguments (a CNN)
            raise ConfigError(f"backbone {label} could not be built with backbone_args {args}: {_line(err)}") from None
        except Exception as err:
            if load_pretrained:
                raise _timm_unavailable(timm, model_name, label, err) from None
            raise ConfigError(f"backbone {label} could not be built with backbone_args {args}: {_line(err)}") from None
        args = {**extra, **args}
        break
    network.eval()
    if not hasattr(network, "forward_intermediates") or not hasattr(network, "prune_intermediate_layers"):
        raise ConfigError(
            f"timm model {model_name} has no forward_intermediates (needed to read its feature maps); "
            "choose another model or wrap it as a custom {class_path: ...} module"
        )
    info = getattr(network, "feature_info", None) or []
    count = len(info)
    if spec["taps"]:
        taps = [_timm_index(t, count, label) for t in spec["taps"]]
        if len(set(taps)) != len(taps):
            raise ConfigError(f"backbone {label}: taps {spec['taps']} name a stage or block twice")
    else:
        reductions = {f.get("reduction") for f in info}
        if count >= 4 and len(reductions) == 1:  # isotropic (ViT-like): four evenly spaced blocks
            taps = sorted({round(count * k / 4) - 1 for k in (1, 2, 3, 4)})
        else:
            taps = list(range(count))
    network_keys = list(network.state_dict())
    network.prune_intermediate_layers(taps, prune_norm=True, prune_head=True)
    if weights is not None:
        load_used(network, network_keys, load_state_dict_file(weights), str(weights))
    cfg = getattr(network, "pretrained_cfg", None) or {}
    mean, std = tuple(cfg.get("mean") or IMAGENET_MEAN), tuple(cfg.get("std") or IMAGENET_STD)
    return Built(Intermediates(network, taps), {"name": label, "taps": taps, "args": args}, mean=mean, std=std)


def _timm_unavailable(timm, model_name: str, label: str, err: BaseException) -> WeightsError:
    """The one-line error for timm weights that are neither cached nor downloadable."""
    cfg = timm.models.get_pretrained_cfg(model_name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if hub_id:
        from huggingface_hub import constants

        target = Path(constants.HF_HUB_CACHE) / ("models--" + hub_id.split("@")[0].replace("/", "--"))
        return WeightsError(
            f"pretrained weights for backbone {label} are not available: the Hugging Face hub cache has no "
            f"{target.name} in {target.parent} and it could not be downloaded ({type(err).__name__}); "
            f"download {hub_id} there on a machine online (or set HF_HOME), or pass backbone_weights=PATH, "
            "or pretrained=False"
        )
    url = getattr(cfg, "url", None) if cfg is not None else None
    if url:
        return unavailable(
            f"pretrained weights for backbone {label}",
            Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url),
            err,
        )
    return WeightsError(
        f"backbone {label} has no pretrained weights in timm ({_line(err)}); "
        "pass backbone_weights=PATH or pretrained=False"
    )


def _timm_index(tap: str | int, count: int, label: str) -> int:
    if isinstance(tap, str) and re.fullmatch(r"-?\d+", tap.strip()):
        tap = int(tap)
    if not isinstance(tap, int) or isinstance(tap, bool):
        raise ConfigError(
            f"unknown tap {tap!r} of backbone {label}; timm taps are indices of its {count} feature stages "
            f"or blocks, 0..{count - 1}"
        )
    index = tap + count if tap < 0 else tap
    if not 0 <= index < count:
        raise ConfigError(
            f"tap {tap} of backbone {label} is out of range: it has {count} feature stages or blocks "
            f"(taps 0..{count - 1})"
        )
    return index


def import_object(path: str, what: str = "backbone class_path") -> Any:
    """The object a dotted path names (``package.module.Class``), or one line saying why not."""
    if not isinstance(path, str) or "." not in path.strip("."):
        raise ConfigError(f"{what} {path!r} is not a dotted name like package.module.Class")
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
                continue  # this prefix is not a module: try a shorter one
            raise ConfigError(f"{what} {path!r}: module {module_name} does not import ({_line(err)})") from None
        except Exception as err:
            raise ConfigError(f"{what} {path!r}: module {module_name} does not import ({_line(err)})") from None
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                raise ConfigError(f"{what} {path!r}: {obj.__name__} has no attribute {attr!r}")
            obj = getattr(obj, attr)
        return obj
    raise ConfigError(f"{what} {path!r}: no module {parts[0]!r} (check the name, and that its package is installed)")


def _custom_built(module: nn.Module, spec: dict) -> Built:
    mean, std = getattr(module, "input_mean", None), getattr(module, "input_std", None)
    if (mean is None) != (std is None):
        raise ConfigError(f"backbone {display_name(spec)} declares only one of input_mean and input_std")
    if mean is not None:
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        if len(mean) != 3 or len(std) != 3:
            raise ConfigError(f"backbone {display_name(spec)}: input_mean and input_std need 3 values (R, G, B)")
    return Built(module, spec, mean=mean, std=std)


OWN_PACKAGE = "lpips_lightning"


def require_trusted(spec: Any, trust_code: bool, source: str) -> None:
    """Refuse a backbone spec read from a file when it names code from outside this package.

    A file is data: building its backbone must not import and run code the user never chose.
    A ``class_path`` outside ``lpips_lightning`` is refused unless the user trusts the file
    (``trust_code=True``, ``--trust-code``); inside the package, only its own module classes pass.
    """
    if trust_code or not isinstance(spec, dict) or "class_path" not in spec:
        return
    path = spec["class_path"]
    if isinstance(path, str) and path.startswith(OWN_PACKAGE + "."):
        cls = import_object(path)
        if isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__.startswith(OWN_PACKAGE + "."):
            return
    raise ConfigError(
        f"{source}: its backbone is custom code ({path!r}); building it would import and run that code. "
        "If you trust this file, load it with trust_code=True (on the command line: --trust-code)"
    )


def module_class(path: str) -> type[nn.Module]:
    """The `nn.Module` subclass a class_path names, found without calling anything."""
    cls = import_object(path)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(
            f"backbone class_path {path!r} names a {type(cls).__name__}, not a torch.nn.Module subclass "
            "(nothing was called)"
        )
    return cls


def _build_class_path(spec: dict, pretrained: bool, weights: str | os.PathLike | None) -> Built:
    path, init_args = spec["class_path"], spec["init_args"]
    factory = module_class(path)
    try:
        module = factory(**init_args)
    except Exception as err:
        raise ConfigError(f"backbone {path}(**{init_args}) failed: {_line(err)}") from None
    if not isinstance(module, nn.Module):
        raise ConfigError(f"backbone class_path {path!r} made a {type(module).__name__}, not a torch.nn.Module")
    if weights is not None:
        strict_load(module, load_state_dict_file(weights), str(weights))
    return _custom_built(module, spec)


def _build_instance(module: nn.Module, spec: dict, weights: str | os.PathLike | None) -> Built:
    if weights is not None:
        strict_load(module, load_state_dict_file(weights), str(weights))
    return _custom_built(module, spec)


# --- finding channels and the minimum size --------------------------------------------------------------
def _as_list(out: Any) -> list:
    if isinstance(out, dict):
        return list(out.values())
    if isinstance(out, (list, tuple)):
        return list(out)
    return [out]


PROBE_BATCH = 2  # a dry run's batch: a map that loses or mixes up the batch dimension shows


def _check_output(out: Any, label: str, batch: int = PROBE_BATCH) -> tuple[int, ...]:
    """The channels of a dry run's output, or one line saying why it is not a list of feature maps."""
    if not isinstance(out, (list, tuple, dict)):
        raise ConfigError(f"backbone {label} returned a {type(out).__name__}, not a list of (N, C, H, W) feature maps")
    items = _as_list(out)
    if not items:
        raise ConfigError(f"backbone {label} returned no feature maps (an empty list)")
    for i, item in enumerate(items):
        if not isinstance(item, torch.Tensor):
            raise ConfigError(f"backbone {label}: feature map {i} is a {type(item).__name__}, not a tensor")
        if item.dim() != 4:
            hint = "; for ViTs use timm:<model>" if item.dim() == 3 else ""
            raise ConfigError(
                f"backbone {label}: feature map {i} has shape {tuple(item.shape)}, not (N, C, H, W){hint}"
            )
        if item.shape[0] != batch:
            raise ConfigError(
                f"backbone {label}: feature map {i} has batch size {item.shape[0]} for {batch} input images; "
                "each map must keep the batch dimension"
            )
        if item.shape[1] == 0:
            raise ConfigError(f"backbone {label}: feature map {i} has no channels (shape {tuple(item.shape)})")
    return tuple(int(t.shape[1]) for t in items)


def _empty_map(out: Any) -> bool:
    """Whether a dry run's output holds a feature map of no pixels (the input was too small for it)."""
    items = _as_list(out) if isinstance(out, (list, tuple, dict)) else []
    return any(isinstance(t, torch.Tensor) and t.dim() == 4 and 0 in t.shape[2:] for t in items)


@torch.no_grad()
def probe(body: nn.Module, label: str, limit: int = MAX_PROBE_SIZE) -> tuple[tuple[int, ...], int]:
    """(channels per tap, minimum input size) of `body`, by running it on zeros of growing sizes.

    The minimum is the smallest square size that runs through every tap (sizes double until one
    runs, then a bisection). One line when no size up to `limit` runs, or the output is not a
    list of (N, C, H, W) feature maps.
    """
    was_training = body.training
    body.eval()

    param = next(body.parameters(), None)  # a module given as an instance may live on a GPU already
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32

    def attempt(size: int, batch: int = PROBE_BATCH):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = body(torch.zeros(batch, 3, size, size, device=device, dtype=dtype))
        except ConfigError:
            raise
        except Exception as err:
            return None, err
        if _empty_map(out):
            return None, ValueError(f"a feature map of 0 pixels at {size}x{size}")
        return out, None

    try:
        size, out, err = 1, None, None
        while size <= limit:
            out, err = attempt(size)
            if out is not None:
                break
            size *= 2
        if out is None:
            raise ConfigError(
                f"backbone {label} runs on no input size from 1x1 to {limit}x{limit} pixels "
                f"(at {limit}x{limit}: {_line(err)})"
            )
        channels = _check_output(out, label)
        low, high = size // 2, size  # low fails (or is 0), high runs
        while high - low > 1:
            middle = (low + high) // 2
            if attempt(middle)[0] is not None:
                high = middle
            else:
                low = middle
        single, err = attempt(high, batch=1)  # a map that squeezes the batch away shows only on one image
        if single is None:
            raise ConfigError(f"backbone {label} fails on a single image of {high}x{high} pixels ({_line(err)})")
        _check_output(single, label, batch=1)
        return channels, high
    finally:
        body.train(was_training)


_PROBED: dict[str, tuple[tuple[int, ...], int]] = {}


# --- LoRA: low-rank adapters on attention projections ------------------------------------------------------
LORA_TARGETS = ("qkv", "proj", "q_proj", "k_proj", "v_proj", "out_proj", "q", "k", "v", "kv", "to_q", "to_k", "to_v")


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update: ``W x + b + B (A x)``, B starting at zero.

    Its state dict holds ``weight`` and ``bias`` under the linear layer's own names, plus ``lora_a``
    and ``lora_b``; `merged` folds the update into a plain `nn.Linear`.
    """

    def __init__(self, base: nn.Linear, rank: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = base.in_features, base.out_features, rank
        self.weight = nn.Parameter(base.weight.detach().clone(), requires_grad=False)
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach().clone(), requires_grad=False)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.lora_a), self.lora_b)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        linear.to(device=self.weight.device, dtype=self.weight.dtype)
        linear.weight.copy_(self.weight + self.lora_b @ self.lora_a)
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        return linear


def _lora_targets(root: nn.Module) -> list[str]:
    found = []
    for name, module in root.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            continue
        for child_name, child in module.named_children():
            if type(child) is not nn.Linear or child_name not in LORA_TARGETS:
                continue
            parent = type(module).__name__.lower()
            if "attention" in parent or "attn" in parent or "attn" in name.rsplit(".", 1)[-1]:
                found.append(f"{name}.{child_name}" if name else child_name)
    return found


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, child, new)


# --- the module --------------------------------------------------------------------------------------------
class Backbone(nn.Module):
    """A network cut at its taps; `forward` returns one (N, C, h, w) tensor per tap.

    Args:
        name: a backbone spec (see the module docstring): ``alex``, ``torchvision:resnet50``,
            ``timm:vit_small_patch14_dinov2``, ``{"class_path": ..., "init_args": ...}`` or a module.
        pretrained: load the family's pretrained weights through its library's cache.
        weights: a state dict file of the network to load instead (``backbone_weights``).
        requires_grad: let the parameters receive gradients. A frozen backbone stays in eval mode
            (batch-norm statistics and dropout as at inference) even when its parent trains.
        taps: which feature maps (torchvision: node names; timm: stage or block indices).
        args: keyword arguments of the torchvision/timm constructor.
    """

    def __init__(
        self,
        name: BackboneArg = "alex",
        pretrained: bool = True,
        weights: str | os.PathLike | None = None,
        requires_grad: bool = False,
        taps: Sequence[str | int] | None = None,
        args: dict | None = None,
    ) -> None:
        super().__init__()
        spec = normalize_spec(name, taps, args)
        if isinstance(name, nn.Module):
            built = _build_instance(name, spec, weights)
        elif "class_path" in spec:
            built = _build_class_path(spec, pretrained, weights)
        elif is_classic(spec):
            built = _build_classic(spec, pretrained, weights)
        else:
            built = FAMILIES[spec["name"].split(":", 1)[0]](spec, pretrained, weights)
        self.spec: dict = built.spec
        self.name = display_name(built.spec)
        self.classic = is_classic(built.spec)
        self.normalization = built.normalization()
        self._attr = built.attr
        self.add_module(built.attr, built.body)
        if built.channels is not None and built.min_size is not None:
            self.channels, self.min_size = tuple(built.channels), int(built.min_size)
        else:  # one dry run per spec and process
            key = None if isinstance(name, nn.Module) else json.dumps(built.spec, sort_keys=True, default=repr)
            found = _PROBED.get(key) if key is not None else None
            if found is None:
                found = probe(self._body, self.name)
                if key is not None:
                    _PROBED[key] = found
            self.channels, self.min_size = found
        self.lora_rank = 0
        self.trainable = requires_grad
        self.requires_grad_(requires_grad)
        self.train(True)  # eval mode when frozen (see `train`)

    @property
    def _body(self) -> nn.Module:
        return getattr(self, self._attr)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return _as_list(self._body(x))

    def train(self, mode: bool = True) -> Backbone:
        """Train mode only when the backbone trains: a frozen one computes as at inference."""
        return super().train(mode and (self.trainable or self.lora_rank > 0))

    # --- low-rank adapters --------------------------------------------------------------------
    def add_lora(self, rank: int) -> list[str]:
        """Wrap the attention projections in `LoRALinear` adapters of `rank`; freeze everything else.

        Returns the adapted layers' names; one line when the backbone has none.
        """
        if rank < 1:
            raise ConfigError(f"lora_rank must be a positive number, got {rank}")
        targets = _lora_targets(self._body)
        if not targets:
            raise ConfigError(
                f"lora_rank: backbone {self.name} has no attention projections to adapt (nn.Linear layers named "
                f"{', '.join(LORA_TARGETS[:6])}, ... inside attention blocks); drop lora_rank"
            )
        self.requires_grad_(False)
        for path in targets:
            _replace(self._body, path, LoRALinear(self._body.get_submodule(path), rank))
        self.lora_rank = rank
        self.train(self.training)
        return targets

    def merge_lora(self) -> None:
        """Fold every adapter into its linear layer: a plain backbone again, computing the same."""
        for path, module in list(self._body.named_modules()):
            if isinstance(module, LoRALinear):
                _replace(self._body, path, module.merged().requires_grad_(self.trainable))
        self.lora_rank = 0
