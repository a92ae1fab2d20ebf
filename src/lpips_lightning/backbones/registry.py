"""The registry of backbone families: a key (a spec's family, `specs.family_of`) -> a builder.

A family is one module that registers its builder (``@register_family("timm")``); the builder
turns a spec into a `Built`: the network cut at its taps, with its input normalisation. The
registry knows no family; `Backbone` looks every spec up here, the classic three included.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import ConfigError

# ImageNet's input statistics, in [0, 1] image terms: what most families' networks were trained with
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Built:
    """What a family builds from a spec.

    `body`: an `nn.Module` whose ``forward(x)`` returns a list, tuple or dict of (N, C, h, w) feature
    maps, one per tap, from normalised images. `spec`: the resolved spec (plain values, default taps
    filled in) that rebuilds it. `mean`/`std`: the input normalisation in [0, 1] image terms (None:
    the body sees the [-1, 1] images), or `shift`/`scale` directly in [-1, 1] terms. `channels` and
    `min_size`: when None, found by a dry run. `attr`: the attribute the body is stored under
    (``slices`` keeps the classic state dict names).
    """

    body: nn.Module
    spec: dict
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    shift: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None
    channels: tuple[int, ...] | None = None
    min_size: int | None = None
    attr: str = "body"
    extra: dict = field(default_factory=dict)

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """(shift, scale) in [-1, 1] image terms, or None."""
        if self.shift is not None and self.scale is not None:
            return tuple(self.shift), tuple(self.scale)
        if self.mean is not None and self.std is not None:
            return tuple(2 * m - 1 for m in self.mean), tuple(2 * s for s in self.std)
        return None


# (canonical spec, or the module itself for an instance; pretrained; a weights file or None) -> Built
Builder = Callable[[Any, bool, "str | os.PathLike | None"], Built]
FAMILIES: dict[str, Builder] = {}


def register_family(prefix: str) -> Callable[[Builder], Builder]:
    """Register a family of backbones named ``<prefix>:<model>``; use as a decorator on its builder.

    The builder gets the canonical spec (``name``, ``taps`` or None, ``args``), whether to load
    pretrained weights, and a weights file to load instead (or None); it returns a `Built`.
    The spec forms without a prefix register under their own keys (`specs.UNPREFIXED`).
    """

    def add(build: Builder) -> Builder:
        FAMILIES[prefix] = build
        return build

    return add


# --- what families share: their one-line messages ---------------------------------------------------
def one_line(err: BaseException, limit: int = 200) -> str:
    """An exception as a short one-line reason: ``TypeError: first line of its message``."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:limit]}" if text else type(err).__name__


def unknown_model(family: str, model: str, known: list[str]) -> ConfigError:
    """The error for a model name a family does not have, with the closest names it does."""
    close = difflib.get_close_matches(model, known, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown {family} model {model!r} (backbone {family}:{model}){hint}")
