"""The safetensors export: the metric's own weights, and metadata from which `read` rebuilds it.

No code travels in the file: the backbone is rebuilt from its spec in the metadata (a custom
``class_path`` only with ``trust_code``), then every weight must fit it exactly.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save

from ..backbones.custom import require_trusted
from ..errors import ExportError, WeightsError
from ..model.embedding import EmbeddingDistance
from ..model.lpips import LPIPS
from ..weights import read_safetensors, strict_load
from .metadata import facts_of


def write(
    model: LPIPS | EmbeddingDistance, hp: dict, meta: dict[str, str], tmp: Path, out: Path, size: int | None = None
) -> str:
    """Write `model`'s state dict and `meta` to `tmp`; return how to load `out`."""
    # as `weights.write_safetensors`, but into memory and written by Python: a full disk is an OSError
    tmp.write_bytes(save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, metadata=meta))
    return f"lpips_lightning.load({str(out)!r})"


def read(path: Path, trust_code: bool = False) -> LPIPS | EmbeddingDistance:
    """The metric a safetensors export holds, in eval mode (an embedding metric's too)."""
    try:
        tensors, meta = read_safetensors(path, what="model")
    except WeightsError as err:  # the file itself: a reader's error
        raise ExportError(str(err)) from None
    facts = facts_of(meta, str(path))
    if facts.distance == "embedding":  # timm: and torchvision: backbones only: no code to trust
        model = EmbeddingDistance.from_spec(facts.spec)
        strict_load(model, tensors, str(path))
        return model.eval()
    require_trusted(facts.spec, trust_code, str(path))
    heads = "random" if meta.get("heads", "learned") == "learned" else None
    model = LPIPS(facts.spec, facts.version, pretrained=False, heads=heads)
    strict_load(model, tensors, str(path))
    return model.eval()
