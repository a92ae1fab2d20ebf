"""`Backbone`: a network cut at its taps, built from any spec by its family's registered builder."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .lora import adapt, merge_adapters
from .probe import as_list, probed
from .registry import FAMILIES
from .specs import BackboneArg, canonical, display_name, family_of, is_classic


class Backbone(nn.Module):
    """A network cut at its taps; `forward` returns one (N, C, h, w) tensor per tap.

    Args:
        name: a backbone spec (see `lpips_lightning.backbones.specs`): ``alex``, ``torchvision:resnet50``,
            ``timm:vit_small_patch14_dinov2``, ``{"class_path": ..., "init_args": ...}`` or a module.
        pretrained: load the family's pretrained weights through its library's cache.
        weights: a state dict file of the network to load instead (``backbone_weights``).
        requires_grad: let the parameters receive gradients. A frozen backbone stays in eval mode
            (batch-norm statistics and dropout as at inference) even when its parent trains.
        taps: which feature maps (torchvision: node names; timm: stage or block indices).
        args: keyword arguments of the torchvision/timm constructor.
    """

    def __init__(
        self,
        name: BackboneArg = "alex",
        pretrained: bool = True,
        weights: str | os.PathLike | None = None,
        requires_grad: bool = False,
        taps: Sequence[str | int] | None = None,
        args: dict | None = None,
    ) -> None:
        super().__init__()
        spec = canonical(name, taps, args)  # a plain-value spec, or the module itself
        built = FAMILIES[family_of(spec)](spec, pretrained, weights)
        self.spec: dict = built.spec
        self.name = display_name(built.spec)
        self.classic = is_classic(built.spec)
        self.normalization = built.normalization()
        self._attr = built.attr
        self.add_module(built.attr, built.body)
        if built.channels is not None and built.min_size is not None:
            self.channels, self.min_size = tuple(built.channels), int(built.min_size)
        else:  # one dry run per spec and process (an instance: every time)
            key = None if isinstance(spec, nn.Module) else json.dumps(built.spec, sort_keys=True, default=repr)
            self.channels, self.min_size = probed(self._body, self.name, key)
        self.lora_rank = 0
        self.trainable = requires_grad
        self.requires_grad_(requires_grad)
        self.train(True)  # eval mode when frozen (see `train`)

    @property
    def _body(self) -> nn.Module:
        return getattr(self, self._attr)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return as_list(self._body(x))

    def train(self, mode: bool = True) -> Backbone:
        """Train mode only when the backbone trains: a frozen one computes as at inference."""
        return super().train(mode and (self.trainable or self.lora_rank > 0))

    def add_lora(self, rank: int) -> list[str]:
        """Wrap the attention projections in `LoRALinear` adapters of `rank`; freeze everything else.

        Returns the adapted layers' names; one line when the backbone has none.
        """
        if rank < 1:
            raise ConfigError(f"lora_rank must be a positive number, got {rank}")
        targets = adapt(self, self._body, self.name, rank)
        self.lora_rank = rank
        self.train(self.training)
        return targets

    def merge_lora(self) -> None:
        """Fold every adapter into its linear layer: a plain backbone again, computing the same."""
        merge_adapters(self._body, self.trainable)
        self.lora_rank = 0
