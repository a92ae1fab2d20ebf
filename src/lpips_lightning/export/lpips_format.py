"""The `lpips` package's ``.pth``: its state dict, which `lpips`, torchmetrics and `load` all read.

The heads as ``lin{i}.model.1.weight``; when the backbone is not torchvision's ImageNet one
(``tune``, ``scratch``, or ``lin`` over other weights) also the backbone as ``net.slice{k}.{j}.*``,
to load with ``pnet_rand=True``. The names describe alex, vgg and squeeze only, and the file
records no version: loaders assume 0.1's input scaling, so other metrics are refused here.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import torch
from torch import nn

from ..backbones.classic import BACKBONES
from ..errors import ConfigError, WeightsError
from ..model.lpips import LPIPS
from ..weights import load_torch_file


def check(hp: dict, info: dict, out: Path) -> None:
    """Refuse, before the model is built, a checkpoint whose metric this format cannot describe."""
    if hp.get("distance", "lpips") == "embedding":
        raise ConfigError(
            f"{out}: the lpips package's .pth format describes LPIPS metrics only, not an embedding metric "
            "(distance: embedding); export it as .safetensors, .pt (TorchScript) or .onnx"
        )
    spec = info.get("backbone") or hp["backbone"]
    name = (spec.get("name") or spec.get("class_path")) if isinstance(spec, dict) else spec
    if name not in BACKBONES:
        raise ConfigError(
            f"{out}: the lpips package's .pth format describes alex, vgg and squeeze only, not backbone "
            f"{name}; export it as .safetensors, .pt (TorchScript) or .onnx"
        )
    if str(hp.get("version", "0.1")) != "0.1":
        # the .pth holds weights only: whoever loads it (this package, lpips, torchmetrics) would
        # assume version 0.1's input scaling and compute another distance
        raise ConfigError(
            f"{out}: the lpips package's .pth cannot record version {hp.get('version')} (loaders assume 0.1 "
            "and would compute other distances); export it as .safetensors, .pt (TorchScript) or .onnx"
        )


def needs_backbone(hp: dict) -> bool:
    """Whether the file must hold the backbone: it is not torchvision's ImageNet one."""
    return hp["variant"] != "lin" or hp.get("pretrained") is False or bool(hp.get("backbone_weights"))


def write(model: LPIPS, hp: dict, meta: dict[str, str], tmp: Path, out: Path, size: int | None = None) -> str:
    """Write `model`'s lpips state dict to `tmp`; return how to load `out` with the `lpips` package."""
    with_backbone = needs_backbone(hp)
    buffer = io.BytesIO()  # into memory, then written by Python: a full disk is an OSError (torch's is a RuntimeError)
    torch.save(model.lpips_state_dict(with_backbone=with_backbone), buffer)
    tmp.write_bytes(buffer.getvalue())
    return f"lpips.LPIPS(net={model.backbone_name!r}, version={model.version!r}, model_path={str(out)!r}" + (
        ", pnet_rand=True)  # the file holds the trained backbone" if with_backbone else ")"
    )


def holds_lpips_weights(obj: object) -> bool:
    """Whether a torch file's content is an lpips state dict (it has the first head)."""
    return isinstance(obj, dict) and any(str(k).startswith("lin0.") for k in obj)


def read(state: dict[str, torch.Tensor], path: Path, backbone: str | None = None, version: str = "0.1") -> LPIPS:
    """The metric of lpips weights `state` read from `path`: over `backbone` (else told by its heads).

    With ImageNet weights unless the file holds the backbone.
    """
    name = backbone or infer_backbone(state, str(path))
    has_net = any(k.startswith("net.") for k in state)
    model = LPIPS(name, version, pretrained=not has_net, heads="random")
    model.load_lpips_state(state, str(path))
    return model.eval()


def infer_backbone(state: dict[str, torch.Tensor], source: str = "weights") -> str:
    """The backbone an lpips-format state dict belongs to, from its heads' channel counts."""
    channels = []
    while f"lin{len(channels)}.model.1.weight" in state:
        channels.append(int(state[f"lin{len(channels)}.model.1.weight"].shape[1]))
    name = next((name for name, entry in BACKBONES.items() if tuple(channels) == entry.channels), None)
    if name is None:
        raise WeightsError(
            f"{source}: heads with channels {channels or 'none'} fit no backbone "
            f"({', '.join(f'{n}: {list(e.channels)}' for n, e in BACKBONES.items())})"
        )
    return name


def load_into_torchmetrics(metric: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load an lpips-format ``.pth`` export into torchmetrics' `LearnedPerceptualImagePatchSimilarity`.

    torchmetrics builds its network like the `lpips` package (its SqueezeNet names the taps
    ``net.slices.{k-1}`` instead of ``net.slice{k}``) and loads with ``strict=False``; here every
    key of the file must land, and only its own aliases may stay unset. Returns `metric`.
    """
    state = load_torch_file(path, "lpips weights")
    own = metric.net.state_dict()
    renamed = {}
    for key, value in state.items():
        if key.startswith("net.slice") and key not in own:
            k, rest = key[len("net.slice") :].split(".", 1)
            key = f"net.slices.{int(k) - 1}.{rest}"
        renamed[key] = value
    result = metric.net.load_state_dict(renamed, strict=False)
    has_net = any(r.startswith("net.") for r in renamed)
    bad = [k for k in result.missing_keys if re.match(r"lin\d", k) or (k.startswith("net.") and has_net)]
    if result.unexpected_keys or bad:
        raise WeightsError(
            f"{path}: does not fit torchmetrics' {type(metric.net).__name__}: unexpected "
            f"{result.unexpected_keys[:6]}, missing {bad[:6]}"
        )
    return metric
