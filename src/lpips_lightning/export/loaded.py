"""What every model `load` returns from an export: `LPIPS.forward`'s inputs and checks, before the file runs.

A `LoadedMetric` takes images (N, 3, H, W) as uint8 (or any integer dtype) in [0, 255], floats in
[-1, 1], or floats in [0, 1] with ``normalize=True``; it refuses other values, and images below
its backbone's minimum (and, for an export fixed to one size, of another size) in one line, and
has ``backbone_name``, ``version``, ``min_size``, ``fixed_size`` and ``check_size``. Each format's
subclass says how to `run` it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..model.lpips import check_image_pair, check_image_size, check_image_values
from .metadata import MetricFacts


class LoadedMetric(nn.Module):
    """A metric loaded from an export: the checks of `LPIPS.forward` before running it."""

    def __init__(self, facts: MetricFacts) -> None:
        super().__init__()
        self.backbone_name = facts.backbone
        self.version = facts.version
        self.min_size = int(facts.min_size)
        self.fixed_size = facts.fixed_size  # (height, width) for a fixed-size export, else None

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
        """Distances (N,) between `x0` and `x1`, as `LPIPS.forward` gives them."""
        check_image_pair(x0.shape, x1.shape, self.min_size, self.backbone_name)
        if self.fixed_size is not None:
            self.check_size(x0.shape[-2], x0.shape[-1])
        check_image_values(x0, normalize)
        check_image_values(x1, normalize)
        return self.run(_as_uint8(x0), _as_uint8(x1), normalize)

    def run(self, x0: Tensor, x1: Tensor, normalize: bool) -> Tensor:
        """The export's own computation, on checked images: uint8 or floats."""
        raise NotImplementedError


def _as_uint8(x: Tensor) -> Tensor:
    """Checked integer images (0..255) as uint8, which every export's own front takes (older ones no other integers)."""
    return x if x.dtype.is_floating_point else x.to(torch.uint8)
