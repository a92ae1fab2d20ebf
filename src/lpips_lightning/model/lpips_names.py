"""The `lpips` package's weight names, and the official v0.1 linear weights as torchmetrics ships them.

Heads are ``lin{i}.model.1.weight`` (shape (1, C, 1, 1)); a classic backbone's ``slices.{k}.{j}.*``
are ``net.slice{k+1}.{j}.*``; a whole ``lpips.LPIPS().state_dict()`` also repeats the heads as
``lins.{i}.*`` and holds the input scaling buffers (`drop_lpips_aliases`).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import torch

from ..backbones.classic import SCALE, SHIFT
from ..errors import WeightsError


def official_heads_file(backbone: str) -> Path:
    """The official v0.1 linear weights of a classic backbone, as they ship inside torchmetrics."""
    return Path(str(resources.files("torchmetrics") / "functional" / "image" / "lpips_models" / f"{backbone}.pth"))


def to_lpips_names(
    heads: list[torch.Tensor], backbone: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Head weights (and a classic backbone's ``slices.{k}.{j}.*`` state) under the lpips package's names."""
    state = {f"lin{i}.model.1.weight": w.detach().clone() for i, w in enumerate(heads)}
    for key, value in (backbone or {}).items():
        _, k, rest = key.split(".", 2)
        state[f"net.slice{int(k) + 1}.{rest}"] = value.detach().clone()
    return state


def from_lpips_names(state: dict[str, torch.Tensor], n_heads: int, backbone_keys: Iterable[str]) -> tuple[list, dict]:
    """(head weights, backbone state under ``slices.{k}.{j}.*``) from lpips-named `state` (already checked)."""
    heads = [state[f"lin{i}.model.1.weight"] for i in range(n_heads)]
    backbone = {}
    for key in backbone_keys:
        _, k, rest = key.split(".", 2)
        backbone[key] = state[f"net.slice{int(k) + 1}.{rest}"]
    return heads, backbone


def drop_lpips_aliases(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Drop what a whole `lpips.LPIPS().state_dict()` repeats: ``lins.{i}`` aliases and the scaling buffers.

    The scaling buffers must hold the standard LPIPS input scaling (`SHIFT`, `SCALE`).
    """
    out = {}
    for key, value in state.items():
        if key.startswith("lins."):
            alias = "lin" + key[len("lins.") :]
            if alias in state and torch.equal(state[alias], value):
                continue
        if key in ("scaling_layer.shift", "scaling_layer.scale"):
            expected = torch.tensor(SHIFT if key.endswith("shift") else SCALE)
            if torch.allclose(value.flatten().float(), expected):
                continue
            raise WeightsError(f"{source}: {key} is not the standard LPIPS input scaling")
        out[key] = value
    return out
