"""A frozen backbone named by its weights file instead of stored: what a ``lin`` checkpoint keeps of it.

A ``lin`` run trains the heads only; its backbone is exactly what the weights API (torchvision's
cache under ``$TORCH_HOME``) or ``backbone_weights`` loaded. Its checkpoints keep that file's
name, path and sha256 (`weights_record`) instead of the backbone's tensors (`drop_backbone`): a
ResNet-50 ``lin`` checkpoint is kilobytes, not 94 MB. Loading one rebuilds the backbone through
the same API as training (`rebuilt_backbone`, `fill_backbone`) and refuses, in one line, a file
that is missing or whose sha256 differs. Backbones that no single file determines keep their
tensors: ``tune``/``scratch`` (and LoRA) runs, a random (``pretrained: false``) or custom backbone,
and ``timm:`` backbones loaded from the Hugging Face cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..backbones.classic import cache_file
from ..backbones.specs import family_of
from ..backbones.torchvision_family import _weights_enum
from ..errors import WeightsError
from ..provenance import sha256_file
from ..weights import torchvision_cache_file
from .lpips import LPIPS

BACKBONE_WEIGHTS_KEY = "lpips_backbone_weights"  # in checkpoints: the frozen backbone's file (name, path, sha256)
BACKBONE_PREFIX = "lpips.net."  # a module's state dict keys of the backbone
FILE_FAMILIES = ("classic", "torchvision", "timm")  # families whose backbone_weights file sets every tensor


def weights_source(spec: dict | nn.Module, pretrained: bool, backbone_weights) -> tuple[str, Path] | None:
    """(how, file) the tensors of a backbone built from `spec` come from, or None when no one file sets them all.

    how: ``backbone_weights`` (the user's file) or ``pretrained`` (the family's cache file).
    """
    if isinstance(spec, nn.Module) or not isinstance(spec, dict) or "name" not in spec:
        return None  # a custom module: its own code decides its tensors
    family = family_of(spec)
    if isinstance(backbone_weights, (str, os.PathLike)) and str(backbone_weights):
        return ("backbone_weights", Path(backbone_weights).resolve()) if family in FILE_FAMILIES else None
    if not pretrained or backbone_weights is not None:
        return None
    if family == "classic":
        return "pretrained", cache_file(spec["name"])
    if family == "torchvision":
        chosen = (spec.get("args") or {}).get("weights")
        return "pretrained", torchvision_cache_file(_weights_enum(spec["name"].split(":", 1)[1], chosen, spec["name"]))
    return None


def weights_record(variant: str, model: nn.Module, hp) -> dict | None:
    """What a checkpoint keeps of `model`'s frozen backbone instead of its tensors; None: it keeps the tensors.

    `model`: the module's `LPIPS` (another metric keeps its tensors); `hp`: the module's hyperparameters
    (``pretrained``, ``backbone_weights``).
    """
    net = getattr(model, "net", None)
    if variant != "lin" or not isinstance(model, LPIPS) or net.lora_rank or net.trainable:
        return None
    pretrained = variant != "scratch" if hp.get("pretrained") is None else hp.get("pretrained")
    source = weights_source(model.backbone_spec, pretrained, hp.get("backbone_weights"))
    if source is None or not source[1].is_file():
        return None
    how, path = source
    return {"how": how, "file": path.name, "path": str(path), "sha256": sha256_file(path)}


def drop_backbone(state: dict[str, torch.Tensor]) -> None:
    """Remove the backbone's tensors from a module's state dict (in place)."""
    for key in [k for k in state if k.replace("_orig_mod.", "").startswith(BACKBONE_PREFIX)]:
        del state[key]


def check_file(record: dict, path: Path, source: str) -> None:
    """Refuse, in one line, a backbone file that is missing or is not the one `record` names (by sha256)."""
    if not path.is_file():
        raise WeightsError(
            f"{source}: its frozen backbone is rebuilt from {record['file']} (sha256 {record['sha256'][:16]}...), "
            f"which is missing: no file {path}; put that file there"
        )
    found = sha256_file(path)
    if found != record["sha256"]:
        raise WeightsError(
            f"{source}: its frozen backbone was trained from {record['file']} with sha256 {record['sha256'][:16]}..., "
            f"but {path} has sha256 {found[:16]}... (a different file); put the original file there"
        )


def located(record: dict, spec: dict) -> Path:
    """Where the file of `record` is now: the user's path, or the family's cache under this machine's settings."""
    if record.get("how") == "pretrained":
        source = weights_source(spec, True, None)
        if source is not None:
            return source[1]
    return Path(record["path"])


def rebuilt_backbone(record: dict, spec: dict, build, source: str):
    """`build(pretrained, backbone_weights)` -> a model whose backbone is the one `record` names, its file checked.

    A cached file is checked before it is read; one the weights API downloads, after.
    """
    path = located(record, spec)
    pretrained = record.get("how") == "pretrained"
    if path.is_file() or not pretrained:
        check_file(record, path, source)
        return build(pretrained, None if pretrained else str(path))
    try:
        model = build(True, None)  # not cached: the weights API downloads it
    except WeightsError:
        raise WeightsError(
            f"{source}: its frozen backbone is rebuilt from {record['file']} (sha256 {record['sha256'][:16]}...), "
            f"which is missing: no file {path}, and it could not be downloaded; put that file there"
        ) from None
    check_file(record, path, source)
    return model


def backbone_files(module) -> list[str]:
    """The weights files a training module's backbones were loaded from (for provenance), as far as they are known."""
    model = getattr(module, "lpips", None)
    hp = getattr(module, "hparams", {})
    if isinstance(model, LPIPS):
        pretrained = hp.get("variant") != "scratch" if hp.get("pretrained") is None else hp.get("pretrained")
        source = weights_source(model.backbone_spec, pretrained, hp.get("backbone_weights"))
        return [str(source[1])] if source is not None else []
    given = hp.get("backbone_weights")
    return [str(w) for w in ([given] if isinstance(given, (str, os.PathLike)) else given or []) if w]


def fill_backbone(state: dict, own: dict, record: dict, own_record: dict | None, source: str) -> None:
    """Put this module's backbone tensors (`own`, its state dict) into a checkpoint's `state` that has none.

    Refused in one line unless this module's backbone came from the same file (`own_record`).
    """
    if own_record is None or own_record["sha256"] != record["sha256"]:
        what = (
            f"{own_record['file']} with sha256 {own_record['sha256'][:16]}..."
            if own_record is not None
            else "no weights file (a random, custom or trained backbone)"
        )
        raise WeightsError(
            f"{source}: its frozen backbone was trained from {record['file']} with sha256 "
            f"{record['sha256'][:16]}..., but this model's backbone comes from {what}; build the model with that file"
        )
    for key, value in own.items():
        if key.startswith(BACKBONE_PREFIX) and key not in state:
            state[key] = value
