"""LoRA: low-rank adapters on a backbone's attention projections, and folding them back in.

`add_adapters` wraps every ``nn.Linear`` named like an attention projection (`LORA_TARGETS`)
inside an attention block in a `LoRALinear`; `merge_adapters` turns each back into a plain
``nn.Linear`` that computes the same, so exports hold an ordinary network.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

LORA_TARGETS = ("qkv", "proj", "q_proj", "k_proj", "v_proj", "out_proj", "q", "k", "v", "kv", "to_q", "to_k", "to_v")


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update: ``W x + b + B (A x)``, B starting at zero.

    Its state dict holds ``weight`` and ``bias`` under the linear layer's own names, plus ``lora_a``
    and ``lora_b``; `merged` folds the update into a plain `nn.Linear`.
    """

    def __init__(self, base: nn.Linear, rank: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = base.in_features, base.out_features, rank
        self.weight = nn.Parameter(base.weight.detach().clone(), requires_grad=False)
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach().clone(), requires_grad=False)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.lora_a), self.lora_b)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        linear.to(device=self.weight.device, dtype=self.weight.dtype)
        linear.weight.copy_(self.weight + self.lora_b @ self.lora_a)
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        return linear


def lora_targets(root: nn.Module) -> list[str]:
    """The names of the attention projections in `root` that adapters would wrap."""
    found = []
    for name, module in root.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            continue
        for child_name, child in module.named_children():
            if type(child) is not nn.Linear or child_name not in LORA_TARGETS:
                continue
            parent = type(module).__name__.lower()
            if "attention" in parent or "attn" in parent or "attn" in name.rsplit(".", 1)[-1]:
                found.append(f"{name}.{child_name}" if name else child_name)
    return found


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, child, new)


def add_adapters(root: nn.Module, targets: list[str], rank: int) -> None:
    """Wrap each layer of `targets` (see `lora_targets`) in a `LoRALinear` of `rank`."""
    for path in targets:
        _replace(root, path, LoRALinear(root.get_submodule(path), rank))


def adapt(owner: nn.Module, root: nn.Module, name: str, rank: int) -> list[str]:
    """Freeze `owner` and wrap the attention projections of `root` (inside it) in adapters of `rank`.

    Returns the adapted layers' names; one `ConfigError` line naming backbone `name` when it has none.
    """
    targets = lora_targets(root)
    if not targets:
        raise ConfigError(
            f"lora_rank: backbone {name} has no attention projections to adapt (nn.Linear layers named "
            f"{', '.join(LORA_TARGETS[:6])}, ... inside attention blocks); drop lora_rank"
        )
    owner.requires_grad_(False)
    add_adapters(root, targets, rank)
    return targets


def merge_adapters(root: nn.Module, requires_grad: bool) -> None:
    """Fold every adapter in `root` into its linear layer (whose parameters get `requires_grad`)."""
    for path, module in list(root.named_modules()):
        if isinstance(module, LoRALinear):
            _replace(root, path, module.merged().requires_grad_(requires_grad))
