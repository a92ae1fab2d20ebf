"""Embedding distances (DreamSim-style): 1 - cosine similarity of global image embeddings.

Each backbone (a ``timm:`` or ``torchvision:`` model, whole, not cut at taps) sees the images
resized to its own input size (bicubic, antialiased) and normalised with its own mean and std,
and gives one embedding (N, D): the class token after the final norm (``cls``), its pooled
pre-logits features (``pool``) or both concatenated (``cls_pool``). An ensemble's embedding is
the concatenation of its backbones', optionally through DreamSim's MLP head (``head="mlp"``).

`EmbeddingDistance` has the interface of `LPIPS` that training, evaluation and export use: its
"taps" are the per-backbone embeddings (`unchecked_features`), `distance` turns two images' taps
into distances.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import timm_family, torchvision_family
from ..backbones.lora import adapt, merge_adapters
from ..backbones.specs import canonical, display_name, family_of
from ..errors import ConfigError, check_choice
from .lpips import check_image_pair, check_image_size, check_image_values, to_unit_range

FEATURES = ("cls", "pool", "cls_pool")
HEADS = ("mlp",)
MLP_HIDDEN = 512  # DreamSim's MLP head: in -> 512 -> in, with a residual connection
EMBEDDERS = {"timm": timm_family.embedder, "torchvision": torchvision_family.embedder}
SPEC_KEY = "embedding"  # the backbone_spec of an embedding metric: {"embedding": [specs], "features": ..., ...}


def per_backbone(option: str, value, count: int, what: str) -> list:
    """`value` as one entry per backbone: a single value repeated, or a list of exactly `count`."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ConfigError(
                f"{option}: {len(value)} {what} for {count} backbone{'s' if count != 1 else ''}; "
                f"give one {what.rstrip('s')} or one per backbone"
            )
        return list(value)
    return [value] * count


class MLPHead(nn.Module):
    """DreamSim's MLP head over the concatenated embedding: ``fc2(relu(fc1(e))) + e``."""

    def __init__(self, dim: int, hidden: int = MLP_HIDDEN) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(e))) + e


class Branch(nn.Module):
    """One backbone of an embedding metric: [-1, 1] images resized to its input size, normalised, embedded (N, D)."""

    def __init__(self, backbone, kind: str, pretrained: bool, weights, args: dict | None, requires_grad: bool) -> None:
        super().__init__()
        spec = canonical(backbone, None, args)
        family = family_of(spec)
        if family not in EMBEDDERS:
            raise ConfigError(
                f"backbone {display_name(spec) if isinstance(spec, dict) else type(spec).__name__}: embedding "
                f"metrics take {', '.join(f'{f}:<model>' for f in EMBEDDERS)} backbones (the whole model)"
            )
        check_choice("features", kind, FEATURES)
        built = EMBEDDERS[family](spec, pretrained, weights, kind)
        self.body = built.body
        self.spec, self.name, self.kind = built.spec, display_name(built.spec), kind
        self.dim = int(built.channels[0])
        self.size = tuple(built.extra["size"])
        shift, scale = built.normalization()
        self.register_buffer("shift", torch.tensor(shift).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(scale).view(1, 3, 1, 1), persistent=False)
        self.trainable, self.lora_rank = requires_grad, 0
        self.requires_grad_(requires_grad)
        self.train(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size or torch.jit.is_tracing() or torch.compiler.is_exporting():
            x = F.interpolate(x, size=self.size, mode="bicubic", align_corners=False, antialias=True)
        return self.body((x - self.shift) / self.scale)

    def train(self, mode: bool = True) -> Branch:
        """Train mode only when the backbone trains: a frozen one computes as at inference."""
        return super().train(mode and (self.trainable or self.lora_rank > 0))

    def add_lora(self, rank: int) -> None:
        """LoRA adapters of `rank` on the attention projections (`backbones.lora`); everything else frozen."""
        adapt(self, self.body, self.name, rank)
        self.lora_rank = rank
        self.train(self.training)

    def merge_lora(self) -> None:
        merge_adapters(self.body, self.trainable)
        self.lora_rank = 0


class Ensemble(nn.Module):
    """The backbones of an embedding metric: prepared images -> one embedding (N, D_i) per backbone."""

    def __init__(self, branches: list[Branch]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    @property
    def lora_rank(self) -> int:
        return self.branches[0].lora_rank

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [branch(x) for branch in self.branches]

    def add_lora(self, rank: int) -> None:
        if rank < 1:
            raise ConfigError(f"lora_rank must be a positive number, got {rank}")
        for branch in self.branches:
            branch.add_lora(rank)

    def merge_lora(self) -> None:
        for branch in self.branches:
            branch.merge_lora()


class EmbeddingDistance(nn.Module):
    """1 - cosine similarity of two images' embeddings (DreamSim's distance); one backbone or an ensemble.

    Args:
        backbone: a ``timm:<model>`` or ``torchvision:<model>`` spec, or a list of them (an ensemble:
            the embeddings are concatenated).
        features: ``cls`` (the class token after the final norm; ViTs), ``pool`` (the model's pooled
            pre-logits features) or ``cls_pool`` (both, concatenated); one value or one per backbone.
        pretrained: load each backbone's pretrained weights (its library's cache, else download).
        backbone_weights: a state dict file of the (whole) network, or a list of them, one per backbone.
        head: ``None`` or ``"mlp"`` (DreamSim's MLP head over the concatenated embedding).
        lora_rank: low-rank adapters of this rank on every backbone's attention projections (0: none).
        tune_backbone: let the backbones' parameters receive gradients.
        backbone_args: keyword arguments of the model constructor: one mapping, or one per backbone.
        head_hidden: the MLP head's hidden size.

    Example:
        >>> from lpips_lightning import EmbeddingDistance
        >>> metric = EmbeddingDistance("timm:vit_tiny_patch16_224", pretrained=False, backbone_args={"img_size": 32})
        >>> x = torch.rand(2, 3, 32, 32) * 2 - 1
        >>> [abs(round(v, 6)) for v in metric(x, x).tolist()]
        [0.0, 0.0]
    """

    def __init__(
        self,
        backbone: str | dict | Sequence[str | dict],
        features: str | Sequence[str] = "cls",
        pretrained: bool = True,
        backbone_weights: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        head: str | None = None,
        lora_rank: int = 0,
        tune_backbone: bool = False,
        backbone_args: dict | Sequence[dict] | None = None,
        head_hidden: int = MLP_HIDDEN,
    ) -> None:
        super().__init__()
        specs = list(backbone) if isinstance(backbone, (list, tuple)) else [backbone]
        if not specs:
            raise ConfigError("backbone: an empty list; name at least one backbone")
        kinds = per_backbone("features", features, len(specs), "features")
        weights = per_backbone("backbone_weights", backbone_weights, len(specs), "weight files")
        args = per_backbone("backbone_args", backbone_args, len(specs), "mappings")
        if head is not None:
            check_choice("head", head, HEADS)
        self.net = Ensemble([
            Branch(s, k, pretrained and w is None, w, a, tune_backbone)
            for s, k, w, a in zip(specs, kinds, weights, args)
        ])  # fmt: skip
        self.version = "0.1"  # (what metadata and messages read off a metric)
        self.backbone_name = " + ".join(b.name for b in self.net.branches)
        self.head_name, self.head_hidden = head, int(head_hidden)
        self.dim = sum(b.dim for b in self.net.branches)
        self.head = MLPHead(self.dim, self.head_hidden) if head == "mlp" else None
        if lora_rank:
            self.net.add_lora(lora_rank)
        self.eval()  # as LPIPS: a metric computes as at inference until .train()

    @classmethod
    def from_spec(cls, spec: dict, lora_rank: int = 0) -> EmbeddingDistance:
        """The metric a `backbone_spec` describes, with random weights (to load a state dict into)."""
        try:
            return cls(
                spec[SPEC_KEY], spec["features"], pretrained=False, head=spec.get("head"), lora_rank=lora_rank,
                head_hidden=int(spec.get("head_hidden") or MLP_HIDDEN),
            )  # fmt: skip
        except (KeyError, TypeError):
            raise ConfigError(f"not an embedding metric's spec: {spec!r}") from None

    @property
    def backbone_spec(self) -> dict:
        """Plain values from which `from_spec` rebuilds the metric: each backbone's resolved spec, features, head."""
        branches = self.net.branches
        return {
            SPEC_KEY: [b.spec for b in branches],
            "features": [b.kind for b in branches],
            "head": self.head_name,
            "head_hidden": self.head_hidden,
        }

    @property
    def min_size(self) -> int:
        """Any image size: each backbone resizes to its own."""
        return 1

    def check_size(self, height: int, width: int, where: str = "") -> None:
        check_image_size(height, width, self.min_size, self.backbone_name, where)

    def prepare(self, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Images as [-1, 1] floats (each backbone normalises and resizes them itself)."""
        return to_unit_range(x, normalize)

    def features(self, x: torch.Tensor, normalize: bool = False) -> list[torch.Tensor]:
        """Each backbone's embedding (N, D_i) of images `x` (uint8, [-1, 1], or [0, 1] with `normalize`)."""
        check_image_values(x, normalize)
        return self.unchecked_features(x, normalize)

    def unchecked_features(self, x: torch.Tensor, normalize: bool = False) -> list[torch.Tensor]:
        """`features` without checks: a pure tensor function, for tracing and export."""
        return self.net(self.prepare(x, normalize))

    def embed(self, taps: list[torch.Tensor]) -> torch.Tensor:
        """The metric's embedding (N, D): the backbones' concatenated, through the head if any, in float32."""
        e = torch.cat([t.float() for t in taps], dim=1)
        return e if self.head is None else self.head(e).float()

    def distance(
        self, f0: list[torch.Tensor], f1: list[torch.Tensor], size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Distances (N,) from two images' embeddings: 1 - cosine similarity."""
        return 1 - F.cosine_similarity(self.embed(f0), self.embed(f1), dim=1)

    def triplet_distances(self, taps: list[torch.Tensor], n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """d(ref, p0) and d(ref, p1) from the taps of a ref|p0|p1 batch of 3 `n` images."""
        e = self.embed(taps)
        ref, p0, p1 = e[:n], e[n : 2 * n], e[2 * n :]
        return 1 - F.cosine_similarity(ref, p0, dim=1), 1 - F.cosine_similarity(ref, p1, dim=1)

    def forward(
        self, x0: torch.Tensor, x1: torch.Tensor, normalize: bool = False, net: nn.Module | None = None
    ) -> torch.Tensor:
        """Distance (N,) between `x0` and `x1`, (N, 3, H, W) each, taken as `LPIPS.forward` takes them."""
        check_image_pair(x0.shape, x1.shape, self.min_size, self.backbone_name)
        check_image_values(x0, normalize)
        check_image_values(x1, normalize)
        f = (net or self.net)(self.prepare(torch.cat([x0, x1]), normalize))
        n = x0.shape[0]
        return self.distance([t[:n] for t in f], [t[n:] for t in f])
