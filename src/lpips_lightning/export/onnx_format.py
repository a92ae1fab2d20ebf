"""The ONNX export: the tensor core ``(x0, x1) -> distance`` on float32 images in [-1, 1].

The metadata goes in the model's ``metadata_props``; `read` wraps the file in an onnxruntime
session behind `OnnxMetric`, which takes the same inputs as every loaded model. The export is
for any image size (H and W >= 2: torch.export's smallest dynamic size) where the backbone
allows; where it does not, it is fixed to the example size and says so in its metadata.
onnx, onnxscript and onnxruntime are optional (``pip install 'lpips-lightning[onnx]'``):
imported here only when an ONNX file is written or read.
"""

from __future__ import annotations

import importlib
import logging
import sys
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from ..errors import ExportError
from ..model.lpips import LPIPS, to_unit_range
from .core import Core, example, example_size, other_size, same
from .loaded import LoadedMetric
from .metadata import facts_of

SMALLEST_DYNAMIC_SIZE = 2  # torch.export takes no dynamic size below 2
LARGEST_DYNAMIC_SIZE = 4096


def require(module: str) -> ModuleType:
    """Import optional `module` (onnx, onnxscript, onnxruntime), or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{module} is not installed: pip install 'lpips-lightning[onnx]'") from None


def check(hp: dict, info: dict, out: Path) -> None:
    """Refuse before the model is built when the exporter is not installed."""
    require("onnx")
    require("onnxscript")


class OnnxMetric(LoadedMetric):
    """An exported ONNX metric run by onnxruntime (on the CPU), behind the same ``forward(x0, x1, normalize=False)``."""

    def __init__(self, session, facts) -> None:
        super().__init__(facts)
        self.session = session

    def run(self, x0: Tensor, x1: Tensor, normalize: bool) -> Tensor:
        a, b = (np.ascontiguousarray(to_unit_range(x, normalize).detach().float().cpu().numpy()) for x in (x0, x1))
        (out,) = self.session.run(None, {"x0": a, "x1": b})
        return torch.from_numpy(out).to(x0.device)


def _session(path: Path):
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no warnings on stderr
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def read(path: Path) -> OnnxMetric:
    """The metric an ONNX export holds; an ONNX model without our inputs and metadata is refused."""
    try:
        session = _session(path)
    except ExportError:
        raise
    except Exception as err:
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise ExportError(f"{path}: not a loadable ONNX model ({reason})") from None
    names = [i.name for i in session.get_inputs()]
    if names != ["x0", "x1"]:
        raise ExportError(f"{path}: an ONNX model with inputs {names}, not an lpips-lightning metric (x0, x1)")
    meta = dict(session.get_modelmeta().custom_metadata_map)
    return OnnxMetric(session, facts_of(meta, str(path))).eval()


def _program(model: LPIPS, size: int, dynamic: bool, min_size: int = SMALLEST_DYNAMIC_SIZE):
    """torch.export's ONNX program of `model`'s core, traced at `size`: any batch, and any image size if `dynamic`."""
    batch = torch.export.Dim("batch", min=1)
    if dynamic:
        height = torch.export.Dim("height", min=min_size, max=LARGEST_DYNAMIC_SIZE)
        width = torch.export.Dim("width", min=min_size, max=LARGEST_DYNAMIC_SIZE)
        shapes = ({0: batch, 2: height, 3: width}, {0: batch, 2: height, 3: width})
    else:
        shapes = ({0: batch}, {0: batch})
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.onnx.export(
            Core(model).eval(),
            example(size),
            dynamo=True,
            input_names=["x0", "x1"],
            output_names=["distance"],
            dynamic_shapes=shapes,
            external_data=False,
            verbose=False,
        )


def _runs_right(path: Path, model: LPIPS, size: int) -> bool:
    """Whether the ONNX file gives the model's distances at a size other than the example's `size`."""
    try:
        importlib.import_module("onnxruntime")
    except ImportError:
        return True  # cannot check here: trust the exporter's dynamic shapes
    height, width = other_size(size)
    x0, x1 = example(height=height, width=width, seed=1)
    try:
        (got,) = _session(path).run(None, {"x0": x0.numpy(), "x1": x1.numpy()})
    except Exception:
        return False
    with torch.no_grad():
        return same(got, Core(model).eval()(x0, x1))


def write(model: LPIPS, hp: dict, meta: dict[str, str], tmp: Path, out: Path, size: int | None = None) -> str:
    """Export `model` to `tmp` with `meta` in its metadata_props; return how to run `out`."""
    onnx = require("onnx")
    size = example_size(model, size)
    smallest = max(SMALLEST_DYNAMIC_SIZE, model.min_size)
    meta = {**meta, "min_size": str(smallest)}
    # the export is silent for a while: say so on stderr (stdout stays for the loading line)
    print(f"exporting {out.name} to ONNX (this takes 20-50 s) ...", file=sys.stderr, flush=True)
    try:
        _program(model, size, dynamic=True, min_size=smallest).save(str(tmp), external_data=False)
        dynamic = _runs_right(tmp, model, size)
    except OSError:  # the file cannot be written (a full disk): a fixed-size export could not be either
        raise
    except Exception:
        dynamic = False
    if not dynamic:  # the backbone does not export for any size: fix it, and say so in the metadata
        _program(model, size, dynamic=False).save(str(tmp), external_data=False)
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
