"""Trained metrics as files other tools load, and `load` to get any of them back as an `nn.Module`.

``lpips-lightning export CKPT OUT [--format lpips|safetensors|torchscript|onnx]``

- ``lpips`` (``.pth``): the `lpips` package's state dict. The heads as ``lin{i}.model.1.weight``;
  when the backbone is not torchvision's ImageNet one (``tune``, ``scratch``, or ``lin`` over
  other weights) also the backbone as ``net.slice{k}.{j}.*``, to load with ``pnet_rand=True``.
- ``safetensors``: the metric's weights plus metadata (backbone, version, variant, scores,
  config) from which `load` rebuilds it.
- ``torchscript`` (``.pt``, traced) and ``onnx``: the whole metric, ``(x0, x1) -> distance``,
  images (N, 3, H, W) in [-1, 1], one distance per pair.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .backbones import BACKBONES, load_torch_file
from .errors import ConfigError, LPIPSLightningError, WeightsError
from .lpips import LPIPS

FORMATS = {".pth": "lpips", ".safetensors": "safetensors", ".pt": "torchscript", ".onnx": "onnx"}
METRIC_FORMAT = "lpips-lightning/metric"
METRIC_FORMAT_VERSION = "1"


class ExportError(LPIPSLightningError):
    """A checkpoint or export that cannot be read, or an output that cannot be written."""


# --- reading ----------------------------------------------------------------------------------
def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """(hyperparameters, LPIPS state dict, extra info) from a Lightning checkpoint of `LPIPSModule`."""
    ckpt = load_torch_file(path, "checkpoint", ExportError)
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or not isinstance(state, dict) or "variant" not in hp or "backbone" not in hp:
        raise ExportError(f"{path}: not a checkpoint of lpips-lightning (no LPIPSModule hyperparameters)")
    weights = {k[len("lpips.") :]: v for k, v in state.items() if k.startswith("lpips.")}
    weights = {k.replace("_orig_mod.", ""): v for k, v in weights.items()}  # left by torch.compile
    scores = {}
    for cb_state in (ckpt.get("callbacks") or {}).values():
        if isinstance(cb_state, dict) and cb_state.get("best_model_score") is not None:
            scores["best_val_2afc_mean"] = float(cb_state["best_model_score"])
    return dict(hp), weights, {"scores": scores, "epoch": ckpt.get("epoch")}


def model_from_checkpoint(path: str | os.PathLike) -> tuple[LPIPS, dict, dict]:
    """The trained metric of a checkpoint, in eval mode (no ImageNet weights needed)."""
    hp, weights, info = read_checkpoint(path)
    model = LPIPS(hp["backbone"], hp.get("version", "0.1"), pretrained=False, heads="random")
    _load_exact(model, weights, str(path))
    return model.eval(), hp, info


def _load_exact(model: LPIPS, weights: dict[str, torch.Tensor], source: str) -> None:
    from .backbones import check_fits

    check_fits(model.state_dict(), weights, source)
    model.load_state_dict(weights, strict=True)


def infer_backbone(state: dict[str, torch.Tensor], source: str = "weights") -> str:
    """The backbone an lpips-format state dict belongs to, from its heads' channel counts."""
    channels = []
    i = 0
    while f"lin{i}.model.1.weight" in state:
        channels.append(int(state[f"lin{i}.model.1.weight"].shape[1]))
        i += 1
    for name, entry in BACKBONES.items():
        if tuple(channels) == entry.channels:
            return name
    raise WeightsError(
        f"{source}: heads with channels {channels or 'none'} fit no backbone "
        f"({', '.join(f'{n}: {list(e.channels)}' for n, e in BACKBONES.items())})"
    )


class OnnxMetric(nn.Module):
    """An exported ONNX metric run by onnxruntime, behind the same ``forward(x0, x1)``."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        ort = _require("onnxruntime", "onnx")
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        from .lpips import to_unit_range

        a, b = (to_unit_range(x).detach().float().cpu().numpy() for x in (x0, x1))
        (out,) = self.session.run(None, {"x0": a, "x1": b})
        return torch.from_numpy(out).to(x0.device)


def load(path: str | os.PathLike, backbone: str | None = None, version: str = "0.1") -> nn.Module:
    """Any trained metric as an `nn.Module` in eval mode with ``forward(x0, x1) -> (N,)``.

    `path`: a Lightning checkpoint (``.ckpt``), a safetensors export, an lpips-format ``.pth``
    (backbone inferred from its keys unless given; with ImageNet weights unless the file holds
    the backbone), a TorchScript ``.pt`` or an ONNX file. Tensors are loaded with
    ``weights_only=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _load_safetensors(path)
    if suffix == ".onnx":
        return OnnxMetric(path).eval()
    if suffix == ".pt" and _is_torchscript(path):
        return torch.jit.load(str(path), map_location="cpu").eval()
    obj = load_torch_file(path, "checkpoint or weights", ExportError)
    if isinstance(obj, dict) and "state_dict" in obj and "hyper_parameters" in obj:
        return model_from_checkpoint(path)[0]
    if isinstance(obj, dict) and any(str(k).startswith("lin0.") for k in obj):
        name = backbone or infer_backbone(obj, str(path))
        has_net = any(k.startswith("net.") for k in obj)
        model = LPIPS(name, version, pretrained=not has_net, heads="random")
        model.load_lpips_state(obj, str(path))
        return model.eval()
    raise ExportError(f"{path}: not a checkpoint of lpips-lightning, an export, or an lpips-format .pth")


def _is_torchscript(path: Path) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def _load_safetensors(path: Path) -> LPIPS:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise ExportError(f"{path}: not a readable safetensors file ({type(err).__name__})") from None
    if meta.get("format") != METRIC_FORMAT:
        raise ExportError(f"{path}: not an lpips-lightning metric (safetensors metadata format != {METRIC_FORMAT})")
    if meta.get("format_version") != METRIC_FORMAT_VERSION:
        raise ExportError(
            f"{path}: metric format version {meta.get('format_version')}, expected {METRIC_FORMAT_VERSION}"
        )
    heads = "random" if meta.get("heads", "learned") == "learned" else None
    model = LPIPS(meta["backbone"], meta.get("version", "0.1"), pretrained=False, heads=heads)
    _load_exact(model, tensors, str(path))
    return model.eval()


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


# --- writing ----------------------------------------------------------------------------------
class _Traceable(nn.Module):
    """(x0, x1) in [-1, 1] -> (N,) distances: the whole metric as a pure tensor function."""

    def __init__(self, model: LPIPS) -> None:
        super().__init__()
        self.model = model

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return self.model.distance(self.model.features(x0), self.model.features(x1))


def _require(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{module} is not installed: pip install 'lpips-lightning[{extra}]'") from None


def _needs_backbone(hp: dict) -> bool:
    return hp["variant"] != "lin" or hp.get("pretrained") is False or bool(hp.get("backbone_weights"))


def export(ckpt: str | os.PathLike, out: str | os.PathLike, fmt: str | None = None, overwrite: bool = False) -> str:
    """Write checkpoint `ckpt` as `out` in format `fmt` (else from the extension); return how to load it."""
    out = Path(out)
    fmt = fmt or FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"{out}: cannot tell the format from the extension; pass --format "
            f"({', '.join(sorted(set(FORMATS.values())))}) or use {', '.join(FORMATS)}"
        )
    if fmt not in FORMATS.values():
        raise ConfigError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS.values())}")
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; pass --overwrite to replace it")
    if not out.parent.exists():
        raise ExportError(f"{out}: folder {out.parent} does not exist")
    model, hp, info = model_from_checkpoint(ckpt)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        if fmt == "lpips":
            with_backbone = _needs_backbone(hp)
            torch.save(model.lpips_state_dict(with_backbone=with_backbone), tmp)
            how = f"lpips.LPIPS(net={model.backbone_name!r}, version={model.version!r}, model_path={str(out)!r}" + (
                ", pnet_rand=True)  # the file holds the trained backbone" if with_backbone else ")"
            )
        elif fmt == "safetensors":
            from safetensors.torch import save_file

            meta = {
                "format": METRIC_FORMAT,
                "format_version": METRIC_FORMAT_VERSION,
                "backbone": model.backbone_name,
                "version": model.version,
                "variant": hp["variant"],
                "heads": "learned",
                "scores": json.dumps(info["scores"]),
                "config": json.dumps(hp, default=str),
                "epoch": str(info["epoch"]),
                "source": Path(ckpt).name,
            }
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=meta)
            how = f"lpips_lightning.load({str(out)!r})"
        elif fmt == "torchscript":
            example = (torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1)
            traced = torch.jit.trace(_Traceable(model).eval(), example, check_trace=False)
            traced.save(str(tmp))
            how = f"torch.jit.load({str(out)!r})(x0, x1)  # images (N, 3, H, W) in [-1, 1]"
        else:
            _require("onnx", "onnx")
            _require("onnxscript", "onnx")
            _export_onnx(model, tmp)
            how = (
                f"onnxruntime.InferenceSession({str(out)!r}).run(None, {{'x0': x0, 'x1': x1}})"
                "  # float32 (N, 3, H, W) in [-1, 1]"
            )
        os.replace(tmp, out)
    except LPIPSLightningError:
        raise
    except Exception as err:
        raise ExportError(f"{out}: {fmt} export failed ({type(err).__name__}: {err})") from None
    finally:
        for leftover in out.parent.glob(f".{out.name}.tmp-{os.getpid()}*"):
            leftover.unlink()
    return how


def _export_onnx(model: LPIPS, path: Path) -> None:
    import logging
    import warnings

    import onnx

    example = (torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1)
    batch = torch.export.Dim("batch", min=1)
    height, width = torch.export.Dim("height", min=32, max=4096), torch.export.Dim("width", min=32, max=4096)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            _Traceable(model).eval(),
            example,
            dynamo=True,
            input_names=["x0", "x1"],
            output_names=["distance"],
            dynamic_shapes=({0: batch, 2: height, 3: width}, {0: batch, 2: height, 3: width}),
            external_data=False,
            verbose=False,
        )
    program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path))


def main(argv: Sequence[str]) -> int:
    """``lpips-lightning export``."""
    p = argparse.ArgumentParser(prog="lpips-lightning export", description="Export a trained metric.")
    p.add_argument("ckpt", help="a checkpoint of `lpips-lightning fit`")
    p.add_argument("out", help="output file: .pth (lpips), .safetensors, .pt (TorchScript) or .onnx")
    p.add_argument("--format", choices=sorted(set(FORMATS.values())), default=None)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    how = export(args.ckpt, args.out, args.format, args.overwrite)
    print(f"wrote {args.out}")
    print(f"load it with: {how}")
    if (args.format or FORMATS.get(Path(args.out).suffix.lower())) == "lpips":
        print(
            "torchmetrics: lpips_lightning.export.load_into_torchmetrics("
            f"LearnedPerceptualImagePatchSimilarity(net_type=...), {args.out!r})"
        )
    return 0
