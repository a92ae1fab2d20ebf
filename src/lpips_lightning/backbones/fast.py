"""A backbone as a fit runs it: one pass per batch, and a frozen backbone's fast copy, made once.

A frozen backbone need not run as it was built. Under autocast a copy in the autocast dtype
(bf16) replaces autocast's cast of every weight at every step; in float32 on the CPU a copy with
its convolutions prepacked for oneDNN (`prepacked_copy`) is kept where it computes the same taps
and runs faster. `FrozenCopy` makes that choice once per fit and records it (a resumed run
keeps its checkpoint's choice); `BackbonePass` is the pass itself, for training and validation.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.fx.experimental import optimization

TIMED_IMAGES = 150  # the prepacked CPU copy is timed against the plain backbone on this many images (a batch of 50)


def prepacked_copy(net: nn.Module, x: torch.Tensor, timed: bool = True) -> nn.Module:
    """A frozen CPU backbone with its convolutions prepacked for oneDNN, or `net` where that does not serve.

    torch.fx's `optimize_for_inference` folds batch norms into convolutions and keeps the
    weights in oneDNN's blocked layout: on 64x64 images (2 cores) AlexNet's float32 pass takes
    about 20 % less time, ResNet-18's and SqueezeNet's about half, while ConvNeXt's gets slower
    (layout changes around its layer norms). So the copy is kept only where it gives `net`'s
    taps on the first two images of `x` and, when `timed`, is faster on its first `TIMED_IMAGES`
    (`runs_faster`); backbones that torch.fx cannot trace (most ViTs) keep `net`. Which one is
    faster depends on the network, the memory layout and the CPU (SqueezeNet is faster
    prepacked in one layout and slower in the other), hence the timing rather than a table.
    """
    if not torch.backends.mkldnn.is_available() or x.dtype != torch.float32 or net.training:
        return net
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            # A deep copy of a torch.fx-built body (torchvision's feature extractor makes them) comes back in
            # train mode, and fx's passes copy: batch norms are folded in place, and eval mode is set again after.
            folded = optimization.fuse(copy.deepcopy(net).train(False), inplace=True)
            fast = optimization.optimize_for_inference(folded, {"conv_bn_fuse": False}).train(False)
            same = all(  # equal up to float rounding, relative to each tap's scale
                a.shape == b.shape and bool((a - b).abs().max() <= 1e-4 * a.abs().max() + 1e-6)
                for a, b in zip(net(x[:2]), fast(x[:2]), strict=True)
            )
            keep = same and (not timed or runs_faster(fast, net, x[:TIMED_IMAGES]))
    except Exception:  # noqa: BLE001 -- any failure to trace or run means: keep the plain network
        return net
    return fast if keep else net


def runs_faster(fast: Callable, plain: Callable, x: torch.Tensor, margin: float = 0.9) -> bool:
    """Whether `fast(x)` takes under `margin` of `plain(x)`'s time: each warmed up, then the best of three runs.

    On a busy machine the answer can differ from run to run; either network gives the same taps.
    """
    seconds = {}
    for name, fn in (("fast", fast), ("plain", plain)):
        fn(x)  # oneDNN builds its kernels for a shape on the first call
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
        seconds[name] = min(times)
    return seconds["fast"] < margin * seconds["plain"]


class FrozenCopy:
    """The fast copy of one frozen backbone for one fit, made at its first pass, and the choice it records.

    Under autocast, a copy in the autocast dtype; in float32 on the CPU, `prepacked_copy` where it
    computes the same taps to float rounding and runs faster. Like cuDNN's benchmark mode, that
    choice is made by timing, so two seeded runs may differ by rounding: deterministic algorithms
    (``trainer.deterministic: true``) keep the plain network. `prepack` is the choice: None where
    it does not arise (a GPU in float32, a compiled step, which the compiler cannot trace through
    oneDNN's prepacked network), else whether the copy is the prepacked one; a resumed run passes
    its checkpoint's choice, and keeps it under ``deterministic`` too (it continues the run exactly).
    """

    def __init__(self, net: nn.Module, prepack: bool | None = None, compiled: bool = False) -> None:
        self.net = net
        self.prepack = prepack
        self.compiled = compiled
        self._copy: tuple[torch.dtype, nn.Module] | None = None
        self.dtype: torch.dtype | None = None  # the copy's dtype, kept after `release`

    @property
    def prepacked(self) -> bool:
        """Whether this fit's frozen backbone ran as its oneDNN-prepacked copy (CPU); kept after `release`."""
        return self.prepack is True and self.dtype is not None

    def network(self, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
        """The network and input for a pass over prepared images `x`: the copy (made on first use), or `net`."""
        net = self.net
        device = x.device.type
        autocast = torch.is_autocast_enabled(device)
        if not (autocast or device == "cpu"):
            self.prepack = None  # e.g. a CPU run resumed on a GPU
            return net, x
        dtype = torch.get_autocast_dtype(device) if autocast else x.dtype
        if self._copy is None or self._copy[0] != dtype:
            if autocast:
                copied, self.prepack = copy.deepcopy(net).to(dtype).requires_grad_(False).train(net.training), None
            elif self.compiled:
                copied, self.prepack = net, None
            else:
                if self.prepack is None and torch.are_deterministic_algorithms_enabled():
                    self.prepack = False
                copied = net if self.prepack is False else prepacked_copy(net, x, timed=self.prepack is None)
                self.prepack = copied is not net
            self._copy = (dtype, copied)
            self.dtype = dtype
        return self._copy[1], x.to(dtype)

    def release(self) -> None:
        """Let go of the copy (its memory); the record of the choice stays."""
        self._copy = None


class BackbonePass:
    """The taps of images as a model computes them: its layout, its input scaling, then the backbone.

    A frozen backbone runs without autograd (no gradient flows into or through it) and, given a
    `FrozenCopy` (during a fit), as that copy. The layout is converted first: on uint8 images
    the cheapest copy, which the scaling keeps.
    """

    def __init__(
        self, net: nn.Module, prepare: Callable[[torch.Tensor], torch.Tensor], channels_last: bool, frozen: bool
    ):
        self.net, self.prepare, self.frozen = net, prepare, frozen
        self.layout = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: torch.Tensor, fast: FrozenCopy | None = None) -> list[torch.Tensor]:
        x = self.prepare(x.contiguous(memory_format=self.layout))
        net = self.net
        if fast is not None:
            net, x = fast.network(x)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return net(x)
