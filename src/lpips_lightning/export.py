"""Trained metrics as files other tools load, and `load` to get any of them back as an `nn.Module`.

``lpips-lightning export CKPT OUT [--format lpips|safetensors|torchscript|onnx]``

- ``lpips`` (``.pth``): the `lpips` package's state dict. The heads as ``lin{i}.model.1.weight``;
  when the backbone is not torchvision's ImageNet one (``tune``, ``scratch``, or ``lin`` over
  other weights) also the backbone as ``net.slice{k}.{j}.*``, to load with ``pnet_rand=True``.
- ``safetensors``: the metric's weights plus metadata (backbone, version, variant, scores,
  config) from which `load` rebuilds it.
- ``torchscript`` (``.pt``): the whole metric, ``m(x0, x1, normalize=False) -> distance``, taking
  what `LPIPS.forward` takes: images (N, 3, H, W) as uint8 in [0, 255], floats in [-1, 1], or
  floats in [0, 1] with ``normalize=True``. A traced tensor core behind a small scripted front
  that converts the input, so that ``torch.jit.load`` alone gets the same numbers. Its metadata
  (backbone, version, minimum image size) travels as the extra file ``lpips-lightning.json``.
- ``onnx``: the tensor core, ``(x0, x1) -> distance``, float32 images in [-1, 1]; the metadata
  in the model's ``metadata_props``. `load` wraps it (`OnnxMetric`) to take the same inputs as
  the others.

Every model `load` returns takes the same inputs and gives the same distances (to ~1e-5), and
refuses images smaller than its backbone's minimum in one line.

This module imports torch only inside its functions: ``lpips-lightning export --help``
answers before torch is loaded.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, ExportError, LPIPSLightningError, WeightsError
from .outputs import atomic_output, check_output

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .lpips import LPIPS

FORMATS = {".pth": "lpips", ".safetensors": "safetensors", ".pt": "torchscript", ".onnx": "onnx"}
METRIC_FORMAT = "lpips-lightning/metric"
METRIC_FORMAT_VERSION = "1"
TORCHSCRIPT_METADATA = "lpips-lightning.json"  # extra file inside a TorchScript export
INPUTS = "images (N, 3, H, W): uint8 in [0, 255], floats in [-1, 1], or floats in [0, 1] with normalize=True"


# --- reading ----------------------------------------------------------------------------------
def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """(hyperparameters, LPIPS state dict, extra info) from a Lightning checkpoint of `LPIPSModule`.

    Raises `ExportError` in one line naming the file for anything else: a missing, empty,
    truncated or damaged file, a folder, a safetensors or TorchScript file, a file holding
    pickled Python objects (refused, never unpickled), or a checkpoint of another model.
    Cheap enough to check a ``--ckpt_path`` before Lightning loads it.
    """
    from .weights import read_checkpoint as read

    return read(path, ExportError)


def model_from_checkpoint(path: str | os.PathLike, trust_code: bool = False) -> tuple[LPIPS, dict, dict]:
    """The trained metric of a checkpoint, in eval mode (no ImageNet weights needed).

    A custom backbone (``class_path`` outside this package) is built only with `trust_code`.
    """
    from .backbones import require_trusted
    from .lpips import LPIPS

    hp, weights, info = read_checkpoint(path)
    resolved = info.get("backbone")  # the spec the run resolved (default taps filled in), when saved
    require_trusted(resolved or hp["backbone"], trust_code, str(path))
    model = LPIPS(
        resolved or hp["backbone"],
        hp.get("version", "0.1"),
        pretrained=False,
        heads="random",
        taps=None if resolved else hp.get("taps"),
        backbone_args=None if resolved else hp.get("backbone_args"),
        lora_rank=int(hp.get("lora_rank") or 0),
    )
    _load_exact(model, weights, str(path))
    if model.net.lora_rank:  # adapters folded into their layers: a plain backbone, the same distances
        model.net.merge_lora()
    return model.eval(), hp, info


def _load_exact(model: LPIPS, weights: dict[str, torch.Tensor], source: str) -> None:
    from .weights import check_fits

    check_fits(model.state_dict(), weights, source)
    model.load_state_dict(weights, strict=True)


def infer_backbone(state: dict[str, torch.Tensor], source: str = "weights") -> str:
    """The backbone an lpips-format state dict belongs to, from its heads' channel counts."""
    from .backbones import BACKBONES

    channels = []
    i = 0
    while f"lin{i}.model.1.weight" in state:
        channels.append(int(state[f"lin{i}.model.1.weight"].shape[1]))
        i += 1
    name = _backbone_of_channels(channels)
    if name is None:
        raise WeightsError(
            f"{source}: heads with channels {channels or 'none'} fit no backbone "
            f"({', '.join(f'{n}: {list(e.channels)}' for n, e in BACKBONES.items())})"
        )
    return name


def _backbone_of_channels(channels: Sequence[int]) -> str | None:
    from .backbones import BACKBONES

    return next((name for name, entry in BACKBONES.items() if tuple(channels) == entry.channels), None)


def _metric_facts(meta: dict[str, str], source: str) -> dict[str, Any]:
    """Backbone, its spec, version, minimum image size and any fixed size from an export's metadata, checked."""
    from .backbones import BACKBONES

    if meta.get("format") != METRIC_FORMAT:
        raise ExportError(f"{source}: not an lpips-lightning metric (metadata format != {METRIC_FORMAT})")
    if meta.get("format_version") != METRIC_FORMAT_VERSION:
        raise ExportError(
            f"{source}: metric format version {meta.get('format_version')}, expected {METRIC_FORMAT_VERSION}"
        )
    backbone = meta.get("backbone")
    facts: dict[str, Any] = {"backbone": backbone, "version": meta.get("version", "0.1"), "fixed_size": None}
    if backbone in BACKBONES and not meta.get("backbone_spec"):
        return {**facts, "spec": {"name": backbone}, "min_size": BACKBONES[backbone].min_size}
    if not meta.get("backbone_spec"):
        raise ExportError(f"{source}: metadata names backbone {backbone!r}, not one of {', '.join(BACKBONES)}")
    try:
        spec = json.loads(meta["backbone_spec"])
        min_size = int(meta["min_size"])
        fixed = meta.get("input_size") or ""
        fixed_size = tuple(int(v) for v in fixed.split("x")) if fixed else None
    except (ValueError, KeyError, TypeError):
        raise ExportError(f"{source}: damaged metadata (backbone_spec, min_size or input_size)") from None
    if not isinstance(spec, dict) or (fixed_size is not None and len(fixed_size) != 2):
        raise ExportError(f"{source}: damaged metadata (backbone_spec, min_size or input_size)")
    return {**facts, "spec": spec, "min_size": min_size, "fixed_size": fixed_size}


def load(
    path: str | os.PathLike, backbone: str | None = None, version: str = "0.1", trust_code: bool = False
) -> nn.Module:
    """Any trained metric as an `nn.Module` in eval mode with ``forward(x0, x1, normalize=False) -> (N,)``.

    `path`: a Lightning checkpoint (``.ckpt``), a safetensors export, an lpips-format ``.pth``
    (backbone inferred from its keys unless given; with ImageNet weights unless the file holds
    the backbone), a TorchScript ``.pt`` or an ONNX file. Each takes what `LPIPS.forward` takes
    (uint8, [-1, 1] floats, or [0, 1] floats with ``normalize=True``) and gives the same
    distances; each has ``backbone_name``, ``min_size`` and ``check_size(height, width, where)``.
    Tensors are loaded with ``weights_only=True``; anything else is refused in one line.
    A file whose backbone is custom code (a ``class_path`` outside this package) is refused
    unless `trust_code` is true: building it would import and run that code.
    """
    from .weights import check_readable, load_torch_file, sniff

    check_readable(path, "model", ExportError)  # before Path(): Path("") is the current folder
    path = Path(path)
    kind = sniff(path)
    if kind == "safetensors" or (kind != "onnx" and path.suffix.lower() == ".safetensors"):
        return _load_safetensors(path, trust_code)
    if kind == "onnx" or path.suffix.lower() == ".onnx":
        return _parts().OnnxMetric(path).eval()
    if kind == "torchscript":
        return _load_torchscript(path)
    obj = load_torch_file(path, "model", ExportError)
    if isinstance(obj, dict) and "state_dict" in obj and "hyper_parameters" in obj:
        return model_from_checkpoint(path, trust_code)[0]
    if isinstance(obj, dict) and any(str(k).startswith("lin0.") for k in obj):
        from .lpips import LPIPS

        name = backbone or infer_backbone(obj, str(path))
        has_net = any(k.startswith("net.") for k in obj)
        model = LPIPS(name, version, pretrained=not has_net, heads="random")
        model.load_lpips_state(obj, str(path))
        return model.eval()
    held = f"a dict with keys {_few_keys(obj)}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
    raise ExportError(f"{path}: not a checkpoint of lpips-lightning, an export, or lpips-format weights (holds {held})")


def _few_keys(d: dict, n: int = 4) -> str:
    keys = [str(k) for k in d][:n]
    return (", ".join(keys) or "none") + (" ..." if len(d) > n else "")


def _load_safetensors(path: Path, trust_code: bool = False) -> LPIPS:
    from .backbones import require_trusted
    from .lpips import LPIPS
    from .weights import read_safetensors

    tensors, meta = read_safetensors(path, ExportError, "model")
    facts = _metric_facts(meta, str(path))
    require_trusted(facts["spec"], trust_code, str(path))
    heads = "random" if meta.get("heads", "learned") == "learned" else None
    model = LPIPS(facts["spec"], facts["version"], pretrained=False, heads=heads)
    _load_exact(model, tensors, str(path))
    return model.eval()


def _load_torchscript(path: Path) -> nn.Module:
    import warnings

    import torch

    extra = {TORCHSCRIPT_METADATA: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notices
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as err:
        raise ExportError(
            f"{path}: truncated or damaged, not a loadable TorchScript export ({type(err).__name__})"
        ) from None
    if extra[TORCHSCRIPT_METADATA]:
        try:
            meta = json.loads(extra[TORCHSCRIPT_METADATA])
        except (ValueError, UnicodeDecodeError):
            raise ExportError(f"{path}: damaged {TORCHSCRIPT_METADATA} inside the TorchScript export") from None
        facts = _metric_facts(meta if isinstance(meta, dict) else {}, str(path))
        converts = True
    else:  # an export of lpips-lightning 0.1.0: the traced core alone, [-1, 1] floats only
        state = module.state_dict()
        channels = []
        while f"model.heads.{len(channels)}.weight" in state:
            channels.append(int(state[f"model.heads.{len(channels)}.weight"].shape[1]))
        name = _backbone_of_channels(channels)
        if name is None:
            raise ExportError(f"{path}: a TorchScript module, but not an lpips-lightning metric export")
        from .backbones import BACKBONES

        facts = {"backbone": name, "version": "?", "min_size": BACKBONES[name].min_size, "fixed_size": None}
        converts = False
    return _parts().TorchScriptMetric(module, facts, converts).eval()


def load_into_torchmetrics(metric: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load an lpips-format ``.pth`` export into torchmetrics' `LearnedPerceptualImagePatchSimilarity`.

    torchmetrics builds its network like the `lpips` package (its SqueezeNet names the taps
    ``net.slices.{k-1}`` instead of ``net.slice{k}``) and loads with ``strict=False``; here every
    key of the file must land, and only its own aliases may stay unset. Returns `metric`.
    """
    from .weights import load_torch_file

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


# --- the modules (defined on first use: importing this module must not import torch) ----------
@functools.cache
def _parts():
    """The `nn.Module` classes of this module, built once torch is needed."""
    import types

    import numpy as np
    import torch
    from torch import Tensor, nn

    from .lpips import check_image_pair, check_image_size, to_unit_range

    class Core(nn.Module):
        """(x0, x1) in [-1, 1] -> (N,) distances: the whole metric as a pure tensor function, to trace."""

        def __init__(self, model: LPIPS) -> None:
            super().__init__()
            self.model = model

        def forward(self, x0: Tensor, x1: Tensor) -> Tensor:
            return self.model.distance(self.model.unchecked_features(x0), self.model.unchecked_features(x1))

    class ScriptedMetric(nn.Module):
        """The scripted front of a TorchScript export: checks and converts the input like `LPIPS.forward`.

        `fixed_height`/`fixed_width` (0: any): the traced core computes right at that size only.
        """

        def __init__(
            self, core: nn.Module, min_size: int, backbone: str, fixed_height: int = 0, fixed_width: int = 0
        ) -> None:
            super().__init__()
            self.core = core
            self.min_size = min_size
            self.backbone = backbone
            self.fixed_height = fixed_height
            self.fixed_width = fixed_width

        def forward(self, x0: Tensor, x1: Tensor, normalize: bool = False) -> Tensor:
            if x0.shape != x1.shape:
                raise ValueError(f"images to compare must have the same shape, got {x0.shape} and {x1.shape}")
            if x0.dim() != 4 or x0.shape[1] != 3:
                raise ValueError(f"images must be (N, 3, H, W) batches of RGB images, got shape {x0.shape}")
            h, w = x0.shape[2], x0.shape[3]
            if h < self.min_size or w < self.min_size:
                raise ValueError(
                    f"images of {h}x{w} pixels are smaller than the {self.min_size}x{self.min_size} "
                    f"minimum of backbone {self.backbone}"
                )
            if self.fixed_height > 0 and (h != self.fixed_height or w != self.fixed_width):
                raise ValueError(
                    f"images of {h}x{w} pixels: this export of backbone {self.backbone} takes "
                    f"{self.fixed_height}x{self.fixed_width} images only; resize them"
                )
            return self.core(self.unit_range(x0, normalize), self.unit_range(x1, normalize))

        def unit_range(self, x: Tensor, normalize: bool) -> Tensor:
            if x.dtype == torch.uint8:  # the same arithmetic as lpips.to_unit_range
                return x.float() / 127.5 - 1.0
            if normalize:
                return 2.0 * x - 1.0
            return x

    class LoadedMetric(nn.Module):
        """A metric loaded from an export: the checks of `LPIPS.forward` before running it."""

        def __init__(self, facts: dict[str, Any]) -> None:
            super().__init__()
            self.backbone_name = facts["backbone"]
            self.version = facts["version"]
            self.min_size = int(facts["min_size"])
            self.fixed_size = facts.get("fixed_size")  # (height, width) for a fixed-size export, else None

        def check_size(self, height: int, width: int, where: str = "") -> None:
            """Raise `ConfigError` when ``height x width`` images are too small, or not a fixed-size export's size."""
            check_image_size(height, width, self.min_size, self.backbone_name, where)
            if self.fixed_size is not None and (height, width) != tuple(self.fixed_size):
                fh, fw = self.fixed_size
                raise ConfigError(
                    f"{where + ': ' if where else ''}images of {height}x{width} pixels: this export of backbone "
                    f"{self.backbone_name} takes {fh}x{fw} images only (its backbone did not export for other sizes); "
                    "resize them, or use the .safetensors export"
                )

        def forward(self, x0: Tensor, x1: Tensor, normalize: bool = False) -> Tensor:
            check_image_pair(x0.shape, x1.shape, self.min_size, self.backbone_name)
            if self.fixed_size is not None:
                self.check_size(x0.shape[-2], x0.shape[-1])
            return self.run(x0, x1, normalize)

    class TorchScriptMetric(LoadedMetric):
        """A TorchScript export; `converts`: it takes uint8 / ``normalize`` itself (else it is done here)."""

        def __init__(self, module: nn.Module, facts: dict[str, Any], converts: bool) -> None:
            super().__init__(facts)
            self.module = module
            self.converts = converts

        def run(self, x0: Tensor, x1: Tensor, normalize: bool) -> Tensor:
            if self.converts:
                return self.module(x0, x1, normalize)
            return self.module(to_unit_range(x0, normalize), to_unit_range(x1, normalize))

    class OnnxMetric(LoadedMetric):
        """An exported ONNX metric run by onnxruntime, behind the same ``forward(x0, x1, normalize=False)``."""

        def __init__(self, path: str | os.PathLike) -> None:
            ort = _require("onnxruntime", "onnx")
            options = ort.SessionOptions()
            options.log_severity_level = 3  # errors only: no warnings on stderr
            try:
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as err:
                reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
                raise ExportError(f"{path}: not a loadable ONNX model ({reason})") from None
            names = [i.name for i in session.get_inputs()]
            if names != ["x0", "x1"]:
                raise ExportError(f"{path}: an ONNX model with inputs {names}, not an lpips-lightning metric (x0, x1)")
            meta = dict(session.get_modelmeta().custom_metadata_map)
            facts = _metric_facts(meta, str(path)) if meta.get("format") else _legacy_onnx_facts(path)
            super().__init__(facts)
            self.session = session

        def run(self, x0: Tensor, x1: Tensor, normalize: bool) -> Tensor:
            a, b = (np.ascontiguousarray(to_unit_range(x, normalize).detach().float().cpu().numpy()) for x in (x0, x1))
            (out,) = self.session.run(None, {"x0": a, "x1": b})
            return torch.from_numpy(out).to(x0.device)

    return types.SimpleNamespace(
        Core=Core,
        ScriptedMetric=ScriptedMetric,
        LoadedMetric=LoadedMetric,
        TorchScriptMetric=TorchScriptMetric,
        OnnxMetric=OnnxMetric,
    )


def _legacy_onnx_facts(path: Path) -> dict[str, Any]:
    """An ONNX export of lpips-lightning 0.1.0 (no metadata): the backbone from its heads' shapes."""
    from .backbones import BACKBONES

    onnx = _require("onnx", "onnx")
    model = onnx.load(str(path), load_external_data=False)
    heads = {}
    for init in model.graph.initializer:
        m = re.search(r"heads\.(\d+)\.weight$", init.name)
        if m and len(init.dims) == 4:
            heads[int(m.group(1))] = int(init.dims[1])
    name = _backbone_of_channels([heads[i] for i in sorted(heads)])
    if name is None:
        raise ExportError(f"{path}: an ONNX model without lpips-lightning metadata, not an lpips-lightning metric")
    return {"backbone": name, "version": "?", "min_size": BACKBONES[name].min_size, "fixed_size": None}


def __getattr__(name: str):
    if name in ("OnnxMetric", "TorchScriptMetric"):
        return getattr(_parts(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- writing ----------------------------------------------------------------------------------
def _require(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{module} is not installed: pip install 'lpips-lightning[{extra}]'") from None


def _needs_backbone(hp: dict) -> bool:
    return hp["variant"] != "lin" or hp.get("pretrained") is False or bool(hp.get("backbone_weights"))


def _metadata(model: LPIPS, hp: dict, info: dict, ckpt: str | os.PathLike) -> dict[str, str]:
    return {
        "format": METRIC_FORMAT,
        "format_version": METRIC_FORMAT_VERSION,
        "backbone": model.backbone_name,
        "backbone_spec": json.dumps(model.backbone_spec),  # rebuilds the backbone (see backbones.normalize_spec)
        "version": model.version,
        "variant": hp["variant"],
        "heads": "learned",
        "min_size": str(model.min_size),
        "input_size": "",  # "HxW" when the export computes right at that size only
        "inputs": INPUTS,
        "scores": json.dumps(info["scores"]),
        "config": json.dumps(hp, default=str),
        "epoch": str(info["epoch"]),
        "source": Path(ckpt).name,
    }


def export(
    ckpt: str | os.PathLike,
    out: str | os.PathLike,
    fmt: str | None = None,
    overwrite: bool = False,
    size: int | None = None,
    trust_code: bool = False,
) -> str:
    """Write checkpoint `ckpt` as `out` in format `fmt` (else from the extension); return how to load it.

    `size`: the image size the TorchScript trace and the ONNX export run on (default 64, or the
    backbone's minimum when larger). Both export for any size where the backbone allows; where it
    does not (a trace that fixes shapes, e.g. a ViT padding images to whole patches), the export
    takes `size` x `size` images only, says so in its metadata and refuses other sizes in one line.

    Refused in one line before anything is read: `out` is a folder, one of the inputs, exists
    without `overwrite`, lies in a missing or unwritable folder, or has no known format.
    The file is written under a temporary name and renamed when complete.
    """
    out = Path(out)
    check_output(out, overwrite, inputs=[ckpt], what="export")
    told = FORMATS.get(out.suffix.lower())
    if fmt and told and fmt != told:
        wanted = [ext for ext, f in FORMATS.items() if f == fmt]
        raise ConfigError(
            f"{out}: --format {fmt} contradicts the extension {out.suffix} ({told} format)"
            + (f"; name the file {out.stem}{wanted[0]}" if wanted else "")
        )
    fmt = fmt or told
    if fmt is None:
        raise ConfigError(
            f"{out}: cannot tell the format from the extension; pass --format "
            f"({', '.join(sorted(set(FORMATS.values())))}) or use {', '.join(FORMATS)}"
        )
    if fmt not in FORMATS.values():
        raise ConfigError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS.values())}")
    if fmt == "onnx":
        _require("onnx", "onnx")
        _require("onnxscript", "onnx")
    if fmt == "lpips":  # refused before the model is built: the lpips names describe the classic three only
        from .backbones import BACKBONES

        hp, _, info = read_checkpoint(ckpt)
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
    if size is not None and size < 1:
        raise ConfigError(f"--size must be a positive number of pixels, got {size}")
    model, hp, info = model_from_checkpoint(ckpt, trust_code)
    if size is not None:
        model.check_size(size, size, "--size")
        model.export_size = size
    meta = _metadata(model, hp, info, ckpt)
    with atomic_output(out, overwrite, inputs=[ckpt], what=f"{fmt} export") as tmp:
        try:
            return _WRITERS[fmt](model, hp, meta, tmp, out)
        except (LPIPSLightningError, OSError):
            raise
        except Exception as err:
            raise ExportError(f"{out}: {fmt} export failed ({type(err).__name__}: {err})") from None


def _write_lpips(model: LPIPS, hp: dict, meta: dict[str, str], tmp: Path, out: Path) -> str:
    import torch

    with_backbone = _needs_backbone(hp)
    torch.save(model.lpips_state_dict(with_backbone=with_backbone), tmp)
    return f"lpips.LPIPS(net={model.backbone_name!r}, version={model.version!r}, model_path={str(out)!r}" + (
        ", pnet_rand=True)  # the file holds the trained backbone" if with_backbone else ")"
    )


def _write_safetensors(model: LPIPS, hp: dict, meta: dict[str, str], tmp: Path, out: Path) -> str:
    from .weights import write_safetensors

    write_safetensors(model.state_dict(), tmp, meta)
    return f"lpips_lightning.load({str(out)!r})"


def _example(size: int = 64, height: int | None = None, width: int | None = None, seed: int = 0):
    """Two batches of random [-1, 1] images: the example a trace or export runs on."""
    import torch

    g = torch.Generator().manual_seed(seed)
    shape = (2, 3, height or size, width or size)
    return torch.rand(*shape, generator=g) * 2 - 1, torch.rand(*shape, generator=g) * 2 - 1


def _example_size(model: LPIPS) -> int:
    return getattr(model, "export_size", None) or max(64, model.min_size)


def _other_size(model: LPIPS) -> tuple[int, int]:
    """A second (height, width), unlike the example's, to check that an export computes right at any size."""
    size = _example_size(model)
    return size + 13, size + 30


def _same(a, b) -> bool:
    import torch

    a, b = torch.as_tensor(a).flatten().float(), torch.as_tensor(b).flatten().float()
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-4, atol=1e-6))


def _write_torchscript(model: LPIPS, hp: dict, meta: dict[str, str], tmp: Path, out: Path) -> str:
    import warnings

    import torch

    parts = _parts()
    size = _example_size(model)
    core = parts.Core(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices
        traced = torch.jit.trace(core, _example(size), check_trace=False)
        fixed = (0, 0)
        other = _example(height=_other_size(model)[0], width=_other_size(model)[1], seed=1)
        try:  # a trace records shapes as constants where the model computes them in Python
            with torch.no_grad():
                dynamic = _same(traced(*other), core(*other))
        except Exception:
            dynamic = False
        if not dynamic:
            fixed = (size, size)
            meta = {**meta, "input_size": f"{size}x{size}"}
        front = torch.jit.script(parts.ScriptedMetric(traced, model.min_size, model.backbone_name, *fixed).eval())
        torch.jit.save(front, str(tmp), _extra_files={TORCHSCRIPT_METADATA: json.dumps(meta)})
    note = "" if dynamic else f"; {size}x{size} images only (the trace of this backbone fixes the size)"
    return f"torch.jit.load({str(out)!r})(x0, x1)  # {INPUTS}{note}"


def _onnx_program(model: LPIPS, size: int, dynamic: bool, min_size: int = 2):
    import logging
    import warnings

    import torch

    shapes = None
    if dynamic:
        batch = torch.export.Dim("batch", min=1)
        height = torch.export.Dim("height", min=min_size, max=4096)
        width = torch.export.Dim("width", min=min_size, max=4096)
        shapes = ({0: batch, 2: height, 3: width}, {0: batch, 2: height, 3: width})
    else:
        batch = torch.export.Dim("batch", min=1)
        shapes = ({0: batch}, {0: batch})
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.onnx.export(
            _parts().Core(model).eval(),
            _example(size),
            dynamo=True,
            input_names=["x0", "x1"],
            output_names=["distance"],
            dynamic_shapes=shapes,
            external_data=False,
            verbose=False,
        )


def _onnx_runs_right(path: Path, model: LPIPS) -> bool:
    """Whether the ONNX file gives the model's distances at a size other than the example's."""
    import importlib

    import torch

    try:
        ort = importlib.import_module("onnxruntime")
    except ImportError:
        return True  # cannot check here: trust the exporter's dynamic shapes
    height, width = _other_size(model)
    x0, x1 = _example(height=height, width=width, seed=1)
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {"x0": x0.numpy(), "x1": x1.numpy()})
    except Exception:
        return False
    with torch.no_grad():
        return _same(got, _parts().Core(model).eval()(x0, x1))


def _write_onnx(model: LPIPS, hp: dict, meta: dict[str, str], tmp: Path, out: Path) -> str:
    import onnx

    size = _example_size(model)
    smallest = max(2, model.min_size)  # torch.export takes no dynamic size below 2
    meta = {**meta, "min_size": str(smallest)}
    try:
        _onnx_program(model, size, dynamic=True, min_size=smallest).save(str(tmp), external_data=False)
        dynamic = _onnx_runs_right(tmp, model)
    except Exception:
        dynamic = False
    if not dynamic:  # the backbone does not export for any size: fix it, and say so in the metadata
        _onnx_program(model, size, dynamic=False).save(str(tmp), external_data=False)
        meta["input_size"] = f"{size}x{size}"
        meta["min_size"] = str(model.min_size)
    proto = onnx.load(str(tmp))
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(tmp))
    onnx.checker.check_model(str(tmp))
    sizes = f"H and W >= {meta['min_size']}" if dynamic else f"H = W = {size} only"
    return (
        f"onnxruntime.InferenceSession({str(out)!r}).run(None, {{'x0': x0, 'x1': x1}})"
        f"  # float32 (N, 3, H, W) in [-1, 1], {sizes}; lpips_lightning.load takes uint8 too"
    )


_WRITERS = {
    "lpips": _write_lpips,
    "safetensors": _write_safetensors,
    "torchscript": _write_torchscript,
    "onnx": _write_onnx,
}
