"""Trained metrics as files other tools load, and `load` to get any of them back as an `nn.Module`.

``lpips-lightning export CKPT OUT [--format lpips|safetensors|torchscript|onnx]``; one module per
format, each with ``write`` and ``read``:

- ``lpips`` (``.pth``, `lpips_format`): the `lpips` package's state dict, also for torchmetrics
  (`load_into_torchmetrics`).
- ``safetensors`` (`safetensors_format`): the metric's weights plus metadata (backbone, version,
  variant, scores, config) from which `load` rebuilds it.
- ``torchscript`` (``.pt``, `torchscript_format`): the whole metric, ``m(x0, x1, normalize=False)``,
  which ``torch.jit.load`` alone runs.
- ``onnx`` (`onnx_format`): the tensor core ``(x0, x1) -> distance`` on [-1, 1] floats.

`write.export` dispatches by format, `read.load` by content. Every model `load` returns takes the
same inputs and gives the same distances (to ~1e-5), and refuses images smaller than its
backbone's minimum in one line (`loaded.LoadedMetric`); `metadata` is what every export carries.
"""

from .lpips_format import load_into_torchmetrics
from .read import load
from .write import FORMATS, export

__all__ = [
    "FORMATS",
    "export",
    "load",
    "load_into_torchmetrics",
]
