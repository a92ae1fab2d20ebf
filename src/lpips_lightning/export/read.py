"""`load`: any trained metric file as an `nn.Module`, told by its content and handed to its format's reader.

The file is checked and sniffed once (`weights.sniff`); its extension decides only for a file too
damaged to tell (a truncated ``.safetensors`` or ``.onnx``). A torch file is read once, with
``weights_only=True``: a Lightning checkpoint of `LPIPSModule`, or the `lpips` package's weights.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from ..errors import ExportError, WeightsError
from ..model.checkpoint import checkpoint_parts, model_from_parts
from ..weights import check_readable, load_torch_file, sniff
from . import lpips_format, onnx_format, safetensors_format, torchscript_format

BY_EXTENSION = {".safetensors": "safetensors", ".onnx": "onnx"}  # for files too damaged to tell by content


def load(
    path: str | os.PathLike, backbone: str | None = None, version: str = "0.1", trust_code: bool = False
) -> nn.Module:
    """Any trained metric as an `nn.Module` in eval mode with ``forward(x0, x1, normalize=False) -> (N,)``.

    `path`: a Lightning checkpoint (``.ckpt``), a safetensors export, an lpips-format ``.pth``
    (backbone inferred from its keys unless given, `version` as given; with ImageNet weights
    unless the file holds the backbone), a TorchScript ``.pt`` or an ONNX file. Each takes what
    `LPIPS.forward` takes (uint8, [-1, 1] floats, or [0, 1] floats with ``normalize=True``) and
    gives the same distances; each has ``backbone_name``, ``min_size`` and
    ``check_size(height, width, where)``. Tensors are loaded with ``weights_only=True``; anything
    else is refused in one line (`ExportError`). A file whose backbone is custom code (a
    ``class_path`` outside this package) is refused unless `trust_code` is true: building it
    would import and run that code.
    """
    try:
        check_readable(path, "model")  # before Path(): Path("") is the current folder
        path = Path(path)
        kind = sniff(path)
    except WeightsError as err:
        raise ExportError(str(err)) from None
    if kind == "other":
        kind = BY_EXTENSION.get(path.suffix.lower(), kind)
    if kind == "safetensors":
        return safetensors_format.read(path, trust_code)
    if kind == "onnx":
        return onnx_format.read(path)
    if kind == "torchscript":
        return torchscript_format.read(path)
    try:
        obj = load_torch_file(path, "model", kind)  # checked and sniffed above: read once, sniffed once
    except WeightsError as err:
        raise ExportError(str(err)) from None
    if isinstance(obj, dict) and "state_dict" in obj and "hyper_parameters" in obj:
        return model_from_parts(*checkpoint_parts(obj, path), str(path), trust_code)
    if lpips_format.holds_lpips_weights(obj):
        return lpips_format.read(obj, path, backbone, version)
    held = f"a dict with keys {_few_keys(obj)}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
    raise ExportError(f"{path}: not a checkpoint of lpips-lightning, an export, or lpips-format weights (holds {held})")


def _few_keys(d: dict, n: int = 4) -> str:
    keys = [str(k) for k in d][:n]
    return (", ".join(keys) or "none") + (" ..." if len(d) > n else "")
