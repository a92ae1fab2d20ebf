"""The metric as a pure tensor function, and the example images a trace or an ONNX export runs on.

`Core` is ``(x0, x1) -> (N,)`` on [-1, 1] float images, without checks or conversions: what
``torch.jit.trace`` and ``torch.onnx.export`` record. The example size is 64 (or the backbone's
minimum, or the ``--size`` asked for); `other_size` is a second size to check that the recorded
graph computes right at any size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..model.lpips import LPIPS


class Core(nn.Module):
    """(x0, x1) in [-1, 1] -> (N,) distances: the whole metric as a pure tensor function, to trace."""

    def __init__(self, model: LPIPS) -> None:
        super().__init__()
        self.model = model

    def forward(self, x0: Tensor, x1: Tensor) -> Tensor:
        return self.model.distance(self.model.unchecked_features(x0), self.model.unchecked_features(x1))


def example(size: int = 64, height: int | None = None, width: int | None = None, seed: int = 0):
    """Two batches of random [-1, 1] images: the example a trace or export runs on."""
    g = torch.Generator().manual_seed(seed)
    shape = (2, 3, height or size, width or size)
    return torch.rand(*shape, generator=g) * 2 - 1, torch.rand(*shape, generator=g) * 2 - 1


def example_size(model: LPIPS, size: int | None = None) -> int:
    """The size of the example images: `size` when asked for, else 64 or the backbone's minimum when larger."""
    return size or max(64, model.min_size)


def other_size(size: int) -> tuple[int, int]:
    """A second (height, width), unlike the example's `size`, to check that an export computes right at any size."""
    return size + 13, size + 30


def same(a, b) -> bool:
    """Whether two outputs are the same distances, up to float rounding."""
    a, b = torch.as_tensor(a).flatten().float(), torch.as_tensor(b).flatten().float()
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-4, atol=1e-6))
