"""The TorchScript export (``.pt``): the whole metric, which ``torch.jit.load`` alone runs.

``m(x0, x1, normalize=False) -> distance`` takes what `LPIPS.forward` takes: a traced tensor core
(`core.Core`) behind a small scripted front (`ScriptedMetric`) that checks and converts the
input. The metadata travels as the extra file ``lpips-lightning.json``; a TorchScript file
without it is not an lpips-lightning export and is refused, never run.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ExportError
from ..model.lpips import IMAGE_INPUTS, LPIPS, RANGE_TOLERANCE
from .core import Core, example, example_size, other_size, same
from .loaded import LoadedMetric
from .metadata import INPUTS, MetricFacts, facts_of

METADATA_FILE = "lpips-lightning.json"  # the extra file inside a TorchScript export


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
        self.inputs = IMAGE_INPUTS  # (TorchScript reads no module globals)
        self.tolerance = RANGE_TOLERANCE

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
        self.check_values(x0, normalize)
        self.check_values(x1, normalize)
        return self.core(self.unit_range(x0, normalize), self.unit_range(x1, normalize))

    def check_values(self, x: Tensor, normalize: bool) -> None:
        """As `lpips.check_image_values`: integers in 0..255, floats in [-1, 1] ([0, 1] with normalize), 0.5 leeway."""
        if x.dtype == torch.uint8 or x.numel() == 0:
            return
        if x.dtype == torch.bool or x.is_complex():
            raise ValueError(f"images must be integers (0..255) or floats; {self.inputs}")
        if not x.is_floating_point():
            lo, hi = int(x.to(torch.int64).min()), int(x.to(torch.int64).max())
            if lo < 0 or hi > 255:
                raise ValueError(f"integer images must hold 0..255, got values from {lo} to {hi}; {self.inputs}")
            return
        lo, hi = float(x.min()), float(x.max())
        low = 0.0 if normalize else -1.0
        if not (low - self.tolerance <= lo and hi <= 1.0 + self.tolerance):
            given = "[0, 1] (normalize=True)" if normalize else "[-1, 1]"
            raise ValueError(f"float images outside {given}: values from {lo} to {hi}; {self.inputs}")

    def unit_range(self, x: Tensor, normalize: bool) -> Tensor:
        if not x.is_floating_point():  # any integer dtype, 0..255: the same arithmetic as lpips.to_unit_range
            return x.float() / 127.5 - 1.0
        if normalize:
            return 2.0 * x - 1.0
        return x


class TorchScriptMetric(LoadedMetric):
    """A loaded TorchScript export: its scripted front takes uint8 and ``normalize`` itself."""

    def __init__(self, module: nn.Module, facts: MetricFacts) -> None:
        super().__init__(facts)
        self.module = module

    def run(self, x0: Tensor, x1: Tensor, normalize: bool) -> Tensor:
        return self.module(x0, x1, normalize)


def write(model: LPIPS, hp: dict, meta: dict[str, str], tmp: Path, out: Path, size: int | None = None) -> str:
    """Trace `model` at `size` (see `core.example_size`), script its front, save to `tmp`; return how to load `out`.

    A trace records shapes as constants where the model computes them in Python (a ViT padding
    images to whole patches): then the export is fixed to `size`, and its metadata says so.
    """
    size = example_size(model, size)
    core = Core(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices
        traced = torch.jit.trace(core, example(size), check_trace=False)
        height, width = other_size(size)
        other = example(height=height, width=width, seed=1)
        try:
            with torch.no_grad():
                dynamic = same(traced(*other), core(*other))
        except Exception:
            dynamic = False
        fixed = (0, 0) if dynamic else (size, size)
        if not dynamic:
            meta = {**meta, "input_size": f"{size}x{size}"}
        front = torch.jit.script(ScriptedMetric(traced, model.min_size, model.backbone_name, *fixed).eval())
        # into memory, then written by Python: a failed write (a full disk) is an OSError here, where
        # torch.jit.save's own file writer aborts the interpreter
        buffer = io.BytesIO()
        torch.jit.save(front, buffer, _extra_files={METADATA_FILE: json.dumps(meta)})
    tmp.write_bytes(buffer.getvalue())
    note = "" if dynamic else f"; {size}x{size} images only (the trace of this backbone fixes the size)"
    return f"torch.jit.load({str(out)!r})(x0, x1)  # {INPUTS}{note}"


def read(path: Path) -> TorchScriptMetric:
    """The metric a TorchScript export holds; a TorchScript file without our metadata is refused."""
    extra = {METADATA_FILE: ""}
    try:
        with warnings.catch_warnings():
            # torch 2.9+ marks torch.jit.load deprecated (a FutureWarning on every load) in favour of
            # torch.export; a TorchScript export is still what C++ and other tools load: silence that
            # notice only, so that any other warning of the load still shows
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as err:
        raise ExportError(
            f"{path}: truncated or damaged, not a loadable TorchScript export ({type(err).__name__})"
        ) from None
    if not extra[METADATA_FILE]:
        raise ExportError(f"{path}: a TorchScript module, but not an lpips-lightning metric export")
    try:
        meta = json.loads(extra[METADATA_FILE])
    except (ValueError, UnicodeDecodeError):
        raise ExportError(f"{path}: damaged {METADATA_FILE} inside the TorchScript export") from None
    return TorchScriptMetric(module, facts_of(meta if isinstance(meta, dict) else {}, str(path))).eval()
