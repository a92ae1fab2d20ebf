"""The dry run: a backbone's channels per tap and its minimum input size, found by running it.

A backbone that does not declare them (every family but the classic three) runs on zeros of
growing sizes; its output must be a list of (N, C, H, W) feature maps that keep the batch
dimension, else one line says what it returned. The result is kept once per spec and process.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .registry import one_line

MAX_PROBE_SIZE = 1024
PROBE_BATCH = 2  # a dry run's batch: a map that loses or mixes up the batch dimension shows
_PROBED: dict[str, tuple[tuple[int, ...], int]] = {}  # spec (JSON) -> (channels, minimum size)


def as_list(out: Any) -> list:
    """A backbone's output (a list, tuple or dict of feature maps, or one map) as a list."""
    if isinstance(out, dict):
        return list(out.values())
    if isinstance(out, (list, tuple)):
        return list(out)
    return [out]


def check_output(out: Any, label: str, batch: int = PROBE_BATCH) -> tuple[int, ...]:
    """The channels of a dry run's output, or one line saying why it is not a list of feature maps."""
    if not isinstance(out, (list, tuple, dict)):
        raise ConfigError(f"backbone {label} returned a {type(out).__name__}, not a list of (N, C, H, W) feature maps")
    items = as_list(out)
    if not items:
        raise ConfigError(f"backbone {label} returned no feature maps (an empty list)")
    for i, item in enumerate(items):
        if not isinstance(item, torch.Tensor):
            raise ConfigError(f"backbone {label}: feature map {i} is a {type(item).__name__}, not a tensor")
        if item.dim() != 4:
            hint = "; for ViTs use timm:<model>" if item.dim() == 3 else ""
            raise ConfigError(
                f"backbone {label}: feature map {i} has shape {tuple(item.shape)}, not (N, C, H, W){hint}"
            )
        if item.shape[0] != batch:
            raise ConfigError(
                f"backbone {label}: feature map {i} has batch size {item.shape[0]} for {batch} input images; "
                "each map must keep the batch dimension"
            )
        if item.shape[1] == 0:
            raise ConfigError(f"backbone {label}: feature map {i} has no channels (shape {tuple(item.shape)})")
    return tuple(int(t.shape[1]) for t in items)


def _empty_map(out: Any) -> bool:
    """Whether a dry run's output holds a feature map of no pixels (the input was too small for it)."""
    items = as_list(out) if isinstance(out, (list, tuple, dict)) else []
    return any(isinstance(t, torch.Tensor) and t.dim() == 4 and 0 in t.shape[2:] for t in items)


@torch.no_grad()
def probe(body: nn.Module, label: str, limit: int = MAX_PROBE_SIZE) -> tuple[tuple[int, ...], int]:
    """(channels per tap, minimum input size) of `body`, by running it on zeros of growing sizes.

    The minimum is the smallest square size that runs through every tap (sizes double until one
    runs, then a bisection). One line when no size up to `limit` runs, or the output is not a
    list of (N, C, H, W) feature maps.
    """
    was_training = body.training
    body.eval()

    param = next(body.parameters(), None)  # a module given as an instance may live on a GPU already
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32

    def attempt(size: int, batch: int = PROBE_BATCH):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = body(torch.zeros(batch, 3, size, size, device=device, dtype=dtype))
        except ConfigError:
            raise
        except Exception as err:
            return None, err
        if _empty_map(out):
            return None, ValueError(f"a feature map of 0 pixels at {size}x{size}")
        return out, None

    try:
        size, out, err = 1, None, None
        while size <= limit:
            out, err = attempt(size)
            if out is not None:
                break
            size *= 2
        if out is None:
            raise ConfigError(
                f"backbone {label} runs on no input size from 1x1 to {limit}x{limit} pixels "
                f"(at {limit}x{limit}: {one_line(err)})"
            )
        channels = check_output(out, label)
        low, high = size // 2, size  # low fails (or is 0), high runs
        while high - low > 1:
            middle = (low + high) // 2
            if attempt(middle)[0] is not None:
                high = middle
            else:
                low = middle
        single, err = attempt(high, batch=1)  # a map that squeezes the batch away shows only on one image
        if single is None:
            raise ConfigError(f"backbone {label} fails on a single image of {high}x{high} pixels ({one_line(err)})")
        check_output(single, label, batch=1)
        return channels, high
    finally:
        body.train(was_training)


def probed(body: nn.Module, label: str, key: str | None) -> tuple[tuple[int, ...], int]:
    """`probe`, run once per `key` (a spec as JSON) and process; every time when `key` is None."""
    found = _PROBED.get(key) if key is not None else None
    if found is None:
        found = probe(body, label)
        if key is not None:
            _PROBED[key] = found
    return found
