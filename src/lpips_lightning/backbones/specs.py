"""What a backbone spec is: the forms a user writes, their canonical form, and how they are named.

- ``alex``, ``vgg``, ``squeeze``: the classic three (`classic.BACKBONES`); canonical ``{"name": "alex"}``.
- ``<prefix>:<model>`` for a registered family (``torchvision:resnet50``, ``timm:vit_small_patch14_dinov2``);
  canonical ``{"name": ..., "taps": [...] or None, "args": {...}}``.
- ``{"class_path": "package.module.Class", "init_args": {...}}`` (jsonargparse's form in YAML).
- in Python, an `nn.Module` instance; canonical ``{"class_path": <its class>, "init_args": {}}``.

The canonical form holds plain values only: checkpoints, exports and hyperparameters store it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..errors import ConfigError
from .classic import BACKBONES
from .registry import FAMILIES

BackboneArg = str | dict | nn.Module
# the spec forms without a ``<prefix>:`` and the registry keys of their builders
CLASSIC, CLASS_PATH, MODULE = "classic", "class_path", "module"
UNPREFIXED = (CLASSIC, CLASS_PATH, MODULE)


def canonical(
    backbone: BackboneArg, taps: Sequence[str | int] | None = None, args: dict | None = None
) -> dict[str, Any] | nn.Module:
    """`normalize_spec`, except that a module instance stays itself (it is what gets built)."""
    if isinstance(backbone, nn.Module):
        if taps or args:
            raise ConfigError("a backbone given as a module returns its own feature maps: drop taps / backbone_args")
        return backbone
    if isinstance(backbone, dict):
        return _mapping(backbone, taps, args)
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
    if not sep or family in UNPREFIXED or family not in FAMILIES or not model:
        raise ConfigError(
            f"unknown backbone {backbone!r}; choose one of: {', '.join(BACKBONES)}, "
            + ", ".join(f"{f}:<model>" for f in FAMILIES if f not in UNPREFIXED)
            + ", or {class_path: package.module.Class, init_args: {...}}"
        )
    if args is not None and not isinstance(args, dict):
        raise ConfigError(f"backbone_args must be a mapping of keyword arguments, not {args!r}")
    return {"name": backbone, "taps": list(taps) if taps else None, "args": dict(args or {})}


def _mapping(backbone: dict, taps: Sequence[str | int] | None, args: dict | None) -> dict[str, Any]:
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
            raise ConfigError(f"backbone {backbone['class_path']}: put its arguments in init_args, not backbone_args")
        init_args = backbone.get("init_args") or {}
        if not isinstance(backbone["class_path"], str) or not isinstance(init_args, dict):
            raise ConfigError("backbone class_path must be a dotted name and init_args a mapping of arguments")
        return {"class_path": backbone["class_path"], "init_args": dict(init_args)}
    if "name" in backbone and isinstance(backbone["name"], str):
        return canonical(backbone["name"], backbone.get("taps") or taps, backbone.get("args") or args)
    raise ConfigError(
        f"backbone {backbone!r}: a mapping must have class_path (and init_args), e.g. "
        "{class_path: package.module.Class, init_args: {...}}"
    )


def normalize_spec(
    backbone: BackboneArg, taps: Sequence[str | int] | None = None, args: dict | None = None
) -> dict[str, Any]:
    """The canonical, plain-value form of a backbone spec (see the module docstring).

    ``{"name": "alex"}``, ``{"name": "torchvision:resnet50", "taps": [...] or None, "args": {...}}``,
    ``{"class_path": "...", "init_args": {...}}``. A dict already in the first form (as exports
    store it) passes through, `taps` and `args` filling in what it lacks.
    """
    spec = canonical(backbone, taps, args)
    return module_spec(spec) if isinstance(spec, nn.Module) else spec


def module_spec(module: nn.Module) -> dict[str, Any]:
    """The spec of a module instance: its class path, with no arguments."""
    cls = type(module)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": {}}


def family_of(spec: dict | nn.Module) -> str:
    """The registry key of the family that builds a canonical spec (an instance: `MODULE`)."""
    if isinstance(spec, nn.Module):
        return MODULE
    if "class_path" in spec:
        return CLASS_PATH
    family, sep, _ = spec["name"].partition(":")
    return family if sep else CLASSIC


def is_classic(spec: dict) -> bool:
    """Whether a canonical spec is one of the classic three."""
    return spec.get("name") in BACKBONES


def display_name(spec: dict) -> str:
    """How messages and metadata name a backbone: ``alex``, ``timm:vit_small_patch14_dinov2``, a class path."""
    return spec.get("name") or spec.get("class_path") or "?"


def short_name(backbone: BackboneArg) -> str:
    """A short name fit for a folder: ``alex``, ``resnet50``, ``vit_small_patch14_dinov2``, ``LatentEncoder``.

    An ensemble (a list of specs) joins its members' names.
    """
    if isinstance(backbone, (list, tuple)):
        return "_".join(short_name(b) for b in backbone) or "backbone"
    if isinstance(backbone, nn.Module):
        return type(backbone).__name__
    if isinstance(backbone, dict) and backbone.get("class_path"):
        name = str(backbone["class_path"]).rsplit(".", 1)[-1]
    elif isinstance(backbone, dict):
        name = str(backbone.get("name") or "custom")
    else:
        name = str(backbone)
    return re.sub(r"[^\w.-]+", "_", name.rsplit(":", 1)[-1]) or "backbone"
