"""The LPIPS distance (Zhang et al., CVPR 2018): the one distance core, and the `LPIPS` module.

Per tap: unit-normalise the features over channels, square their difference, weight the
channels with a 1x1 convolution (the "linear head", one per tap), average over space (or
upsample to the input size when ``spatial``), and sum over taps. Without heads (the untrained
baseline, the original's ``lpips=False``) the channels are summed instead. Training takes the
spatial mean before the heads (`pair_means`, `head_distances`): a head is linear, so
``mean(w . diff) == w . mean(diff)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.backbone import Backbone
from ..backbones.classic import SCALE, SHIFT
from ..backbones.specs import BackboneArg
from ..errors import ConfigError, WeightsError, check_choice
from ..weights import check_fits, load_state_dict_file
from .lpips_names import drop_lpips_aliases, from_lpips_names, official_heads_file, to_lpips_names

VERSIONS = ("0.1", "0.0")
# Squared norms below this are raised to it before the square root. Where a feature vector's
# squared norm is 0 (all zero, or tiny values whose squares underflow), sqrt'(0) is infinite and
# the original's gradient turns NaN, most often when x0 == x1 and LPIPS is used as a loss. The
# value is unchanged to far below float32 resolution: such vectors normalise to ~0 either way.
_TINY = 1e-20
_BIT_SHIFTS = torch.arange(7, dtype=torch.uint8)  # bits 1..7 of a random byte, each brought to bit 1 (value 2)
RANGE_TOLERANCE = 0.5  # how far float images may stray beyond [-1, 1] (or [0, 1]) before they are refused
IMAGE_INPUTS = "pass uint8 images (0..255), floats in [-1, 1], or floats in [0, 1] with normalize=True"
ALLOCATION_FAILURES = ("can't allocate memory", "out of memory", "DefaultCPUAllocator")


# --- the distance core ------------------------------------------------------------------------------
def normalize_tensor(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit-normalise over channels: ``x / (||x|| + eps)``, with a finite gradient at ``x == 0``."""
    norm = torch.sqrt(torch.sum(x * x, dim=1, keepdim=True).clamp_min(_TINY))
    return x / (norm + eps)


def dropout_half(x: torch.Tensor) -> torch.Tensor:
    """Dropout with p = 0.5 in training (zero half, double the rest), like ``F.dropout(x, 0.5)``.

    On the CPU the mask is unpacked from random 64-bit words: bits 1 to 7 of each random byte,
    each shifted to bit 1 and masked, are the factors 0 or 2 of seven elements. One random draw
    per 56 elements instead of `F.dropout`'s Bernoulli sample per element, which took a third of
    a CPU training step.
    """
    if x.device.type != "cpu":
        return F.dropout(x, 0.5, True)
    n = x.numel()
    n_bytes = (n + 6) // 7
    words = torch.randint(-(2**63), 2**63 - 1, ((n_bytes + 7) // 8,), dtype=torch.int64)  # all 64 bits random
    mask = (words.view(torch.uint8)[:n_bytes].unsqueeze(-1) >> _BIT_SHIFTS) & 2
    return x * mask.flatten()[:n].view(x.shape)


def to_unit_range(x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """Bring images to the [-1, 1] floats LPIPS expects: any integer dtype from 0..255, `normalize` from [0, 1]."""
    if not x.dtype.is_floating_point:
        return x.float() / 127.5 - 1.0
    if normalize:
        return 2.0 * x - 1.0
    return x


def unit_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per pixel and channel: the squared difference of two taps' unit-normalised features."""
    return (normalize_tensor(a) - normalize_tensor(b)) ** 2


def pair_means(f: torch.Tensor, n: int, dropout: bool) -> torch.Tensor:
    """One tap of a ref|p0|p1 batch: (2, n, C) spatial means of the squared normalised differences."""
    f = normalize_tensor(f.float())
    diff = (f[n:].unflatten(0, (2, n)) - f[:n]) ** 2
    if dropout:
        diff = dropout_half(diff)
    return diff.mean(dim=(3, 4))


def head_vector(heads: nn.ModuleList) -> torch.Tensor:
    """All head weights as one vector, in the order of `pair_means` concatenated over taps."""
    return torch.cat([h.weight.flatten() for h in heads])


def head_distances(v: torch.Tensor, heads: nn.ModuleList) -> tuple[torch.Tensor, torch.Tensor]:
    """d(ref, p0) and d(ref, p1) from (2, N, channels) pair means: one product with the head weights, in float32."""
    with torch.autocast(v.device.type, enabled=False):
        d = v @ head_vector(heads)
    return d.unbind(0)


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


def check_image_values(x: torch.Tensor, normalize: bool = False) -> None:
    """Raise `ConfigError` unless images `x` are integers in 0..255 or floats in [-1, 1] ([0, 1] with `normalize`).

    Floats may stray `RANGE_TOLERANCE` beyond their range (resampling overshoots); farther out
    (images in 0..255 as floats) they would be taken for other images. uint8 needs no look.
    """
    if x.dtype == torch.uint8 or x.numel() == 0:
        return
    if x.dtype == torch.bool or x.dtype.is_complex:
        raise ConfigError(f"images of dtype {x.dtype}: {IMAGE_INPUTS}")
    integer = not x.dtype.is_floating_point
    lo, hi = (v.item() for v in torch.aminmax(x.detach().to(torch.int64) if integer else x.detach()))
    if integer:  # (as int64: aminmax has no uint16 ... uint64)
        if lo < 0 or hi > 255:
            raise ConfigError(f"integer images ({x.dtype}) must hold 0..255, got values {lo}..{hi}; {IMAGE_INPUTS}")
        return
    low, high = (0.0, 1.0) if normalize else (-1.0, 1.0)
    if not (low - RANGE_TOLERANCE <= lo and hi <= high + RANGE_TOLERANCE):  # NaN fails too
        given = "[0, 1] (normalize=True)" if normalize else "[-1, 1]"
        raise ConfigError(f"float images outside {given}: values {lo:.4g}..{hi:.4g}; {IMAGE_INPUTS}")


def out_of_memory(err: BaseException) -> bool:
    """Whether `err` is torch failing to allocate memory (the CPU's allocator, CUDA or MPS)."""
    return isinstance(err, RuntimeError) and any(s in str(err) for s in ALLOCATION_FAILURES)


# --- the module -------------------------------------------------------------------------------------
class LPIPS(nn.Module):
    """Learned perceptual distance between images.

    Args:
        backbone: a backbone spec (see `lpips_lightning.backbones`): ``alex``, ``vgg``, ``squeeze``,
            ``torchvision:<model>``, ``timm:<model>``, ``{"class_path": ..., "init_args": ...}`` or,
            in Python, an `nn.Module` returning a list of (N, C, H, W) feature maps.
        version: ``"0.1"`` normalises the input as the backbone expects (for the classic three, the
            released model's scaling); ``"0.0"`` feeds the classic three the raw [-1, 1] images.
        pretrained: load the backbone's pretrained weights (its library's cache, else download).
        heads: ``"official"`` (the released v0.1 weights; classic backbones only), ``"random"`` (to
            train), ``None`` (the untrained baseline: channel sums) or the path of an lpips-format
            ``.pth``. A file may also hold a classic backbone under the lpips names (``net.slice{k}.{j}.*``).
        spatial: return a distance map (N, 1, H, W) instead of one distance per pair.
        dropout: dropout (p=0.5) on each tap's difference before its head, in training mode.
        backbone_weights: a state dict file of the backbone network to load instead of the pretrained one.
        tune_backbone: let the backbone's parameters receive gradients.
        taps: which feature maps of a ``torchvision:`` (node names) or ``timm:`` (indices) backbone.
        backbone_args: keyword arguments of the ``torchvision:``/``timm:`` model's constructor.
        lora_rank: train low-rank adapters of this rank on the backbone's attention projections
            instead of the whole backbone (0: none).

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
        backbone: BackboneArg = "alex",
        version: str = "0.1",
        pretrained: bool = True,
        heads: str | os.PathLike | None = "official",
        spatial: bool = False,
        dropout: bool = False,
        backbone_weights: str | os.PathLike | None = None,
        tune_backbone: bool = False,
        taps: Sequence[str | int] | None = None,
        backbone_args: dict | None = None,
        lora_rank: int = 0,
    ) -> None:
        super().__init__()
        check_choice("version", version, VERSIONS)
        if heads == "official" and version != "0.1":
            raise ConfigError(
                "heads='official' exists for version 0.1 only (the 0.0 weights are not shipped); "
                "use version='0.1', heads='random' or a .pth file"
            )
        self.version, self.spatial, self.dropout = version, spatial, dropout
        self.net = Backbone(
            backbone, pretrained, weights=backbone_weights, requires_grad=tune_backbone, taps=taps, args=backbone_args
        )
        self.backbone_name = self.net.name
        if lora_rank:
            self.net.add_lora(lora_rank)
        if version == "0.0" and not self.net.classic:
            raise ConfigError(
                f"version 0.0 (raw input) exists for alex, vgg and squeeze only; backbone {self.backbone_name} "
                "brings its own input normalisation: use version 0.1"
            )
        shift, scale = self.net.normalization or (SHIFT, SCALE)
        # the input normalisation: version 0.1 (every backbone that declares one), never in 0.0
        self.normalizes = version == "0.1" and self.net.normalization is not None
        self.register_buffer("shift", torch.tensor(shift).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(scale).view(1, 3, 1, 1), persistent=False)
        self.heads = None if heads is None else nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.net.channels)
        if heads == "official":
            if not self.net.classic:
                raise ConfigError(
                    f"heads='official' (the released v0.1 weights) exist for alex, vgg and squeeze only; for "
                    f"backbone {self.backbone_name} use heads='random' and train them, or a .pth file"
                )
            self.load_lpips_state(load_state_dict_file(official_heads_file(backbone)), "official heads")
        elif heads not in (None, "random"):
            self.load_lpips_state(load_state_dict_file(heads), str(heads))
        self.eval()  # as the lpips package's LPIPS: a metric computes as at inference until .train()

    @property
    def backbone_spec(self) -> dict:
        """The backbone's resolved spec: plain values from which `Backbone` rebuilds it."""
        return self.net.spec

    # --- the lpips package's weight names ---------------------------------------------------
    def lpips_state_dict(self, with_backbone: bool = False) -> dict[str, torch.Tensor]:
        """This model's weights under the `lpips` package's names (with the backbone: classic ones only)."""
        if self.heads is None:
            raise WeightsError("the baseline (heads=None) has no linear weights to export")
        if with_backbone and not self.net.classic:
            raise WeightsError(
                f"the lpips package's names describe alex, vgg and squeeze only, not backbone {self.backbone_name}"
            )
        return to_lpips_names([h.weight for h in self.heads], self.net.state_dict() if with_backbone else None)

    def load_lpips_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load lpips-format weights strictly: heads always, the backbone when the file has it."""
        if self.heads is None:
            raise ConfigError(f"{source}: cannot load linear weights into the baseline (heads=None)")
        state = drop_lpips_aliases(state, source)
        with_backbone = any(k.startswith("net.") for k in state)
        if with_backbone and not self.net.classic:
            raise WeightsError(
                f"{source}: holds a backbone under the lpips package's names (net.slice*), which describe alex, "
                f"vgg and squeeze only, not backbone {self.backbone_name}"
            )
        check_fits(self.lpips_state_dict(with_backbone), state, source)
        heads, backbone = from_lpips_names(state, len(self.heads), self.net.state_dict() if with_backbone else ())
        with torch.no_grad():
            for head, weight in zip(self.heads, heads):
                head.weight.copy_(weight)
        if with_backbone:
            self.net.load_state_dict(backbone, strict=True)

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
        """The backbone's tap tensors for images `x` ([-1, 1] floats, [0, 1] with `normalize`, or uint8/integers)."""
        if x.dim() >= 2:
            self.check_size(x.shape[-2], x.shape[-1])
        check_image_values(x, normalize)
        return self.unchecked_features(x, normalize)

    def prepare(self, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Images as the backbone takes them: [-1, 1] (see `to_unit_range`), then its input normalisation."""
        x = to_unit_range(x, normalize)
        if self.normalizes:
            x = (x - self.shift) / self.scale
        return x

    def unchecked_features(self, x: torch.Tensor, normalize: bool = False) -> list[torch.Tensor]:
        """`features` without the size check: a pure tensor function, for tracing and export."""
        return self.net(self.prepare(x, normalize))

    def distance(
        self, f0: list[torch.Tensor], f1: list[torch.Tensor], size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Distances from two images' features: (N,), or (N, 1, *size) when spatial."""
        total = None
        for i, (a, b) in enumerate(zip(f0, f1)):
            diff = unit_difference(a, b)
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

    def forward(
        self, x0: torch.Tensor, x1: torch.Tensor, normalize: bool = False, net: nn.Module | None = None
    ) -> torch.Tensor:
        """Distance between `x0` and `x1`, (N, 3, H, W) each: (N,), or (N, 1, H, W) when spatial.

        Images: uint8 (or any integer dtype) in 0..255, floats in [-1, 1], or floats in [0, 1] with
        `normalize`; others (floats in 0..255) are refused in one line (`check_image_values`).

        `net`: a stand-in for the backbone that computes the same taps (``evaluate`` passes the
        oneDNN-prepacked copy of a CPU backbone, see `backbones.fast.prepacked_copy`).
        """
        check_image_pair(x0.shape, x1.shape, self.min_size, self.backbone_name)
        check_image_values(x0, normalize)
        check_image_values(x1, normalize)
        x = self.prepare(torch.cat([x0, x1]), normalize)
        f = self.net(x) if net is None else net(x)
        n = x0.shape[0]
        return self.distance([t[:n] for t in f], [t[n:] for t in f], tuple(x0.shape[-2:]))

    @torch.no_grad()
    def clamp_heads(self) -> None:
        """Keep the head weights non-negative (after every optimizer step, as the paper does)."""
        if self.heads is not None:
            for head in self.heads:
                head.weight.clamp_(min=0)
