"""The metadata every export carries: what the metric is, so that `load` can rebuild or wrap it.

String keys and values: a safetensors header, the TorchScript extra file ``lpips-lightning.json``,
an ONNX model's ``metadata_props``. `metadata` writes it from a checkpoint's metric; `MetricFacts`
is what a reader needs back from it (`facts_of`, checked, one line for what is wrong).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..backbones.classic import BACKBONES
from ..errors import ExportError
from ..model.embedding import EmbeddingDistance
from ..model.lpips import LPIPS

METRIC_FORMAT = "lpips-lightning/metric"
METRIC_FORMAT_VERSION = "1"
INPUTS = (
    "images (N, 3, H, W): uint8 (or any integer dtype) in [0, 255], floats in [-1, 1], "
    "or floats in [0, 1] with normalize=True"
)


def metadata(model: LPIPS | EmbeddingDistance, hp: dict, info: dict, ckpt: str | os.PathLike) -> dict[str, str]:
    """The metadata of `model`, the metric of checkpoint `ckpt` (its hyperparameters `hp` and `info`).

    An embedding metric adds ``distance: embedding`` (its ``backbone_spec`` rebuilds it, see
    `EmbeddingDistance.from_spec`); an LPIPS metric's metadata has no ``distance`` key.
    """
    extra = {"distance": "embedding"} if isinstance(model, EmbeddingDistance) else {}
    return {
        **extra,
        "format": METRIC_FORMAT,
        "format_version": METRIC_FORMAT_VERSION,
        "backbone": model.backbone_name,
        "backbone_spec": json.dumps(model.backbone_spec),  # rebuilds the backbone (see backbones.normalize_spec)
        "version": model.version,
        "variant": hp["variant"],
        "heads": "learned",
        "min_size": str(model.min_size),
        "input_size": "",  # "HxW" when the export computes right at that size only
        "inputs": INPUTS,
        "scores": json.dumps(info["scores"]),
        "config": json.dumps(hp, default=str),
        "epoch": str(info["epoch"]),
        "source": Path(ckpt).name,
    }


@dataclass(frozen=True)
class MetricFacts:
    """What a loaded metric must know: its backbone (name and spec), version and image sizes."""

    backbone: str
    version: str
    spec: dict
    min_size: int
    fixed_size: tuple[int, int] | None = None  # (height, width) of an export that computes right at that size only
    distance: str = "lpips"  # or "embedding" (`model.embedding.EmbeddingDistance`)


def facts_of(meta: dict[str, str], source: str) -> MetricFacts:
    """The facts in an export's metadata, checked; `ExportError` naming `source` when they are not ours."""
    if meta.get("format") != METRIC_FORMAT:
        raise ExportError(f"{source}: not an lpips-lightning metric (metadata format != {METRIC_FORMAT})")
    if meta.get("format_version") != METRIC_FORMAT_VERSION:
        raise ExportError(
            f"{source}: metric format version {meta.get('format_version')}, expected {METRIC_FORMAT_VERSION}"
        )
    backbone = meta.get("backbone")
    version = meta.get("version", "0.1")
    if not meta.get("backbone_spec"):  # a classic backbone is named enough
        if backbone not in BACKBONES:
            raise ExportError(f"{source}: metadata names backbone {backbone!r}, not one of {', '.join(BACKBONES)}")
        return MetricFacts(backbone, version, {"name": backbone}, BACKBONES[backbone].min_size)
    damaged = ExportError(f"{source}: damaged metadata (backbone_spec, min_size or input_size)")
    try:
        spec = json.loads(meta["backbone_spec"])
        min_size = int(meta["min_size"])
        fixed = meta.get("input_size") or ""
        fixed_size = tuple(int(v) for v in fixed.split("x")) if fixed else None
    except (ValueError, KeyError, TypeError):
        raise damaged from None
    if not isinstance(spec, dict) or (fixed_size is not None and len(fixed_size) != 2):
        raise damaged
    distance = meta.get("distance", "lpips")
    if distance not in ("lpips", "embedding"):
        raise ExportError(f"{source}: metadata names distance {distance!r}, not lpips or embedding")
    return MetricFacts(backbone, version, spec, min_size, fixed_size, distance)
