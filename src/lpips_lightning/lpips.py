"""The LPIPS distance (Zhang et al., CVPR 2018), computing exactly what the original computes.

Per tap: unit-normalise the features over channels, square their difference, weight the
channels with a 1x1 convolution (the "linear head", one per tap), average over space (or
upsample to the input size when ``spatial``), and sum over taps. Without heads (the
untrained baseline, the original's ``lpips=False``) the channels are summed instead.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone, check_fits, load_state_dict_file
from .errors import ConfigError, WeightsError, check_choice

VERSIONS = ("0.1", "0.0")
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# Squared norms below this are raised to it before the square root. Where a feature vector's
# squared norm is 0 (all zero, or tiny values whose squares underflow), sqrt'(0) is infinite and
# the original's gradient turns NaN, most often when x0 == x1 and LPIPS is used as a loss. The
# value is unchanged to far below float32 resolution: such vectors normalise to ~0 either way.
_TINY = 1e-20


def official_heads_file(backbone: str) -> Path:
    """The official v0.1 linear weights, as they ship inside torchmetrics."""
    return Path(str(resources.files("torchmetrics") / "functional" / "image" / "lpips_models" / f"{backbone}.pth"))


def normalize_tensor(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit-normalise over channels: ``x / (||x|| + eps)``, with a finite gradient at ``x == 0``."""
    norm = torch.sqrt(torch.sum(x * x, dim=1, keepdim=True).clamp_min(_TINY))
    return x / (norm + eps)


_BIT_SHIFTS = torch.arange(8, dtype=torch.uint8)


def dropout_half(x: torch.Tensor) -> torch.Tensor:
    """Dropout with p = 0.5 in training (zero half, double the rest), like ``F.dropout(x, 0.5)``.

    On the CPU the mask is unpacked from random bytes, eight draws per byte: 15x faster than
    `F.dropout`'s Bernoulli sampling, which took a third of a CPU training step.
    """
    if x.device.type != "cpu":
        return F.dropout(x, 0.5, True)
    n = x.numel()
    random_bytes = torch.randint(0, 256, ((n + 7) // 8,), dtype=torch.uint8)
    mask = ((random_bytes.unsqueeze(1) >> _BIT_SHIFTS) & 1).flatten()[:n].view(x.shape)
    return x * (mask * 2).to(x.dtype)


def to_unit_range(x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """Bring images to the [-1, 1] floats LPIPS expects: uint8 from [0, 255], `normalize` from [0, 1]."""
    if x.dtype == torch.uint8:
        return x.float() / 127.5 - 1.0
    if normalize:
        return 2.0 * x - 1.0
    return x


def check_image_size(height: int, width: int, min_size: int, backbone: str, where: str = "") -> None:
    """Raise `ConfigError` when ``height x width`` images are smaller than `backbone`'s `min_size`."""
    if height < min_size or width < min_size:
        raise ConfigError(
            f"{where + ': ' if where else ''}images of {height}x{width} pixels are smaller than the "
            f"{min_size}x{min_size} minimum of backbone {backbone}"
        )


def check_image_pair(shape0: tuple[int, ...], shape1: tuple[int, ...], min_size: int, backbone: str) -> None:
    """Raise `ConfigError` unless two image batches are (N, 3, H, W) alike and large enough for `backbone`."""
    if tuple(shape0) != tuple(shape1):
        raise ConfigError(f"images to compare must have the same shape, got {tuple(shape0)} and {tuple(shape1)}")
    if len(shape0) != 4 or shape0[1] != 3:
        raise ConfigError(f"images must be (N, 3, H, W) batches of RGB images, got shape {tuple(shape0)}")
    check_image_size(shape0[2], shape0[3], min_size, backbone)


def _drop_lpips_aliases(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Drop what a whole `lpips.LPIPS().state_dict()` repeats: ``lins.{i}`` aliases and the scaling buffers."""
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


class LPIPS(nn.Module):
    """Learned perceptual distance between images.

    Args:
        backbone: ``alex``, ``vgg`` or ``squeeze``.
        version: ``"0.1"`` scales the input as the released model does; ``"0.0"`` feeds it raw.
        pretrained: load the backbone's ImageNet weights (torchvision cache, else download).
        heads: ``"official"`` (the released v0.1 weights), ``"random"`` (to train), ``None``
            (the untrained baseline: channel sums) or the path of an lpips-format ``.pth``.
            A file may also hold the backbone under the lpips names (``net.slice{k}.{j}.*``).
        spatial: return a distance map (N, 1, H, W) instead of one distance per pair.
        dropout: dropout (p=0.5) on each tap's difference before its head, in training mode.
        backbone_weights: a torchvision state dict file to load instead of ImageNet's.
        tune_backbone: let the backbone's parameters receive gradients.

    Example:
        >>> import torch
        >>> from lpips_lightning import LPIPS
        >>> metric = LPIPS("alex", pretrained=False, heads=None)
        >>> x = torch.rand(2, 3, 64, 64) * 2 - 1
        >>> metric(x, x).tolist()
        [0.0, 0.0]
    """

    def __init__(
        self,
        backbone: str = "alex",
        version: str = "0.1",
        pretrained: bool = True,
        heads: str | os.PathLike | None = "official",
        spatial: bool = False,
        dropout: bool = False,
        backbone_weights: str | os.PathLike | None = None,
        tune_backbone: bool = False,
    ) -> None:
        super().__init__()
        check_choice("version", version, VERSIONS)
        self.backbone_name = backbone
        self.version = version
        self.spatial = spatial
        self.dropout = dropout
        self.net = Backbone(backbone, pretrained=pretrained, weights=backbone_weights, requires_grad=tune_backbone)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        if heads is None:
            self.heads = None
        else:
            self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.net.channels)
            if heads == "official":
                if version != "0.1":
                    raise ConfigError(
                        "heads='official' exists for version 0.1 only (the 0.0 weights are not shipped); "
                        "use version='0.1', heads='random' or a .pth file"
                    )
                self.load_lpips_state(load_state_dict_file(official_heads_file(backbone)), "official heads")
            elif heads != "random":
                self.load_lpips_state(load_state_dict_file(heads), str(heads))

    # --- the lpips package's weight names ---------------------------------------------------
    def lpips_state_dict(self, with_backbone: bool = False) -> dict[str, torch.Tensor]:
        """This model's weights under the `lpips` package's names."""
        if self.heads is None:
            raise WeightsError("the baseline (heads=None) has no linear weights to export")
        state = {f"lin{i}.model.1.weight": h.weight.detach().clone() for i, h in enumerate(self.heads)}
        if with_backbone:
            for key, value in self.net.state_dict().items():
                _, k, rest = key.split(".", 2)
                state[f"net.slice{int(k) + 1}.{rest}"] = value.detach().clone()
        return state

    def load_lpips_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load lpips-format weights strictly: heads always, the backbone when the file has it."""
        if self.heads is None:
            raise ConfigError(f"{source}: cannot load linear weights into the baseline (heads=None)")
        state = _drop_lpips_aliases(state, source)
        with_backbone = any(k.startswith("net.") for k in state)
        check_fits(self.lpips_state_dict(with_backbone), state, source)
        with torch.no_grad():
            for i, head in enumerate(self.heads):
                head.weight.copy_(state[f"lin{i}.model.1.weight"])
        if with_backbone:
            own = {}
            for key in self.net.state_dict():
                _, k, rest = key.split(".", 2)
                own[key] = state[f"net.slice{int(k) + 1}.{rest}"]
            self.net.load_state_dict(own, strict=True)

    # --- the computation --------------------------------------------------------------------
    @property
    def min_size(self) -> int:
        """The smallest image height and width the backbone runs on (see `BackboneSpec.min_size`)."""
        return self.net.min_size

    def check_size(self, height: int, width: int, where: str = "") -> None:
        """Raise `ConfigError` naming the minimum when ``height x width`` images are too small for the backbone.

        `where` (a file, a group) starts the message when given.
        """
        check_image_size(height, width, self.min_size, self.backbone_name, where)

    def features(self, x: torch.Tensor, normalize: bool = False) -> list[torch.Tensor]:
        """The backbone's tap tensors for images `x` ([-1, 1] floats, [0, 1] with `normalize`, or uint8)."""
        if x.dim() >= 2:
            self.check_size(x.shape[-2], x.shape[-1])
        return self.unchecked_features(x, normalize)

    def unchecked_features(self, x: torch.Tensor, normalize: bool = False) -> list[torch.Tensor]:
        """`features` without the size check: a pure tensor function, for tracing and export."""
        x = to_unit_range(x, normalize)
        if self.version == "0.1":
            x = (x - self.shift) / self.scale
        return self.net(x)

    def distance(
        self, f0: list[torch.Tensor], f1: list[torch.Tensor], size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Distances from two images' features: (N,), or (N, 1, *size) when spatial."""
        total = None
        for i, (a, b) in enumerate(zip(f0, f1)):
            diff = (normalize_tensor(a) - normalize_tensor(b)) ** 2
            if self.heads is not None:
                if self.dropout and self.training:
                    diff = dropout_half(diff)
                layer = self.heads[i](diff)
            else:
                layer = diff.sum(dim=1, keepdim=True)
            if self.spatial:
                if size is None:
                    raise ConfigError("a spatial distance needs the input size")
                layer = F.interpolate(layer, size=size, mode="bilinear", align_corners=False)
            else:
                layer = layer.mean(dim=(1, 2, 3))
            total = layer if total is None else total + layer
        assert total is not None
        return total

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Distance between `x0` and `x1`, (N, 3, H, W) each: (N,), or (N, 1, H, W) when spatial."""
        check_image_pair(x0.shape, x1.shape, self.min_size, self.backbone_name)
        f = self.unchecked_features(torch.cat([x0, x1]), normalize)
        n = x0.shape[0]
        return self.distance([t[:n] for t in f], [t[n:] for t in f], tuple(x0.shape[-2:]))

    @torch.no_grad()
    def clamp_heads(self) -> None:
        """Keep the head weights non-negative (after every optimizer step, as the paper does)."""
        if self.heads is not None:
            for head in self.heads:
                head.weight.clamp_(min=0)
