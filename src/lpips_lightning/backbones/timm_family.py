"""``timm:<model>`` (``pip install 'lpips-lightning[timm]'``): feature maps read with ``forward_intermediates``.

``taps`` are indices of the model's feature stages (CNNs) or blocks (ViTs: the patch tokens
reshaped to (N, C, h, w), class and register tokens dropped); by default every stage of a CNN,
four evenly spaced blocks of a ViT. The input normalisation is the model's own
(``pretrained_cfg``); its pretrained weights come through the Hugging Face hub cache.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, WeightsError
from ..weights import load_state_dict_file, load_used, unavailable
from .registry import IMAGENET_MEAN, IMAGENET_STD, Built, one_line, register_family, unknown_model

# ViTs take any image size with these (the position embedding resampled, the image padded to whole
# patches); a CNN takes none of them: each set is tried in turn
SIZE_ARGUMENTS = ({"dynamic_img_size": True, "dynamic_img_pad": True}, {"dynamic_img_size": True}, {})


class Intermediates(nn.Module):
    """A timm model's intermediate feature maps at `indices` (``forward_intermediates``, NCHW)."""

    def __init__(self, model: nn.Module, indices: list[int]) -> None:
        super().__init__()
        self.model = model
        self.indices = list(indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, indices=self.indices, output_fmt="NCHW", intermediates_only=True)


def _require_timm():
    try:
        import timm  # optional and heavy: imported when a timm backbone is built
    except ImportError:
        raise ConfigError("timm backbones need timm: pip install 'lpips-lightning[timm]'") from None
    return timm


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """Raise these loggers to ERROR for the duration."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@register_family("timm")
def build(spec: dict, pretrained: bool, weights: str | os.PathLike | None) -> Built:
    """A timm model pruned after its last tap, returning the feature maps at the spec's taps."""
    timm = _require_timm()
    label = spec["name"]
    model_name = label.split(":", 1)[1]
    if not timm.is_model(model_name.split(".", 1)[0]):
        raise unknown_model("timm", model_name, timm.list_models())
    network, args = _create(timm, model_name, label, dict(spec["args"]), pretrained and weights is None)
    network.eval()
    if not hasattr(network, "forward_intermediates") or not hasattr(network, "prune_intermediate_layers"):
        raise ConfigError(
            f"timm model {model_name} has no forward_intermediates (needed to read its feature maps); "
            "choose another model or wrap it as a custom {class_path: ...} module"
        )
    info = getattr(network, "feature_info", None) or []
    count = len(info)
    if spec["taps"]:
        taps = [_index(t, count, label) for t in spec["taps"]]
        if len(set(taps)) != len(taps):
            raise ConfigError(f"backbone {label}: taps {spec['taps']} name a stage or block twice")
    else:
        reductions = {f.get("reduction") for f in info}
        if count >= 4 and len(reductions) == 1:  # isotropic (ViT-like): four evenly spaced blocks
            taps = sorted({round(count * k / 4) - 1 for k in (1, 2, 3, 4)})
        else:
            taps = list(range(count))
    network_keys = list(network.state_dict())
    network.prune_intermediate_layers(taps, prune_norm=True, prune_head=True)
    if weights is not None:
        load_used(network, network_keys, load_state_dict_file(weights), str(weights))
    cfg = getattr(network, "pretrained_cfg", None) or {}
    mean, std = tuple(cfg.get("mean") or IMAGENET_MEAN), tuple(cfg.get("std") or IMAGENET_STD)
    return Built(Intermediates(network, taps), {"name": label, "taps": taps, "args": args}, mean=mean, std=std)


def _create(
    timm, model_name: str, label: str, args: dict, load_pretrained: bool, sizes: tuple = SIZE_ARGUMENTS
) -> tuple[nn.Module, dict]:
    """The model and the arguments it was built with (the first of `sizes` it takes added)."""
    tries = [t for t in sizes if not set(t) & set(args)] or [{}]
    for extra in tries:
        try:
            with warnings.catch_warnings(), _quiet_loggers("huggingface_hub", "timm"):
                warnings.simplefilter("ignore")  # a failed download is our one line, not their warnings
                network = timm.create_model(model_name, pretrained=load_pretrained, **{**extra, **args})
        except TypeError as err:
            if extra:
                continue  # the model takes no such arguments (a CNN)
            raise ConfigError(
                f"backbone {label} could not be built with backbone_args {args}: {one_line(err)}"
            ) from None
        except Exception as err:
            if load_pretrained:
                raise _unavailable(timm, model_name, label, err) from None
            raise ConfigError(
                f"backbone {label} could not be built with backbone_args {args}: {one_line(err)}"
            ) from None
        return network, {**extra, **args}
    raise AssertionError("unreachable: the last try takes no extra arguments")


class Embedding(nn.Module):
    """A whole timm model's global embedding (N, D): ``cls``, ``pool`` or ``cls_pool`` (both, concatenated).

    ``cls``: the class token after the final norm (``forward_features(x)[:, 0]``); ``pool``: the
    model's own pooled pre-logits features (``forward_head(..., pre_logits=True)``).
    """

    def __init__(self, model: nn.Module, kind: str) -> None:
        super().__init__()
        self.model = model
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.model.forward_features(x)
        if self.kind == "cls":
            return tokens[:, 0]
        pooled = self.model.forward_head(tokens, pre_logits=True)
        return pooled if self.kind == "pool" else torch.cat([tokens[:, 0], pooled], dim=1)


def embedder(spec: dict, pretrained: bool, weights: str | os.PathLike | None, kind: str) -> Built:
    """The whole timm model of `spec` as an `Embedding` of `kind`; ``extra["size"]``: its input (height, width)."""
    timm = _require_timm()
    label = spec["name"]
    model_name = label.split(":", 1)[1]
    if not timm.is_model(model_name.split(".", 1)[0]):
        raise unknown_model("timm", model_name, timm.list_models())
    # at its own input size (images are resized to it): no dynamic size arguments
    network, args = _create(timm, model_name, label, dict(spec["args"]), pretrained and weights is None, ({},))
    network.eval()
    if kind != "pool" and (getattr(network, "cls_token", None) is None or not getattr(network, "num_prefix_tokens", 0)):
        raise ConfigError(
            f"features {kind}: backbone {label} has no class token (a CNN, or a ViT without one); use features: pool"
        )
    if weights is not None:
        load_used(network, list(network.state_dict()), load_state_dict_file(weights), str(weights))
    network.reset_classifier(0)
    cfg = getattr(network, "pretrained_cfg", None) or {}
    mean, std = tuple(cfg.get("mean") or IMAGENET_MEAN), tuple(cfg.get("std") or IMAGENET_STD)
    size = (
        getattr(getattr(network, "patch_embed", None), "img_size", None)
        or tuple(cfg.get("input_size", (3, 224, 224)))[-2:]
    )
    cls_dim = int(getattr(network, "embed_dim", network.num_features))
    pool_dim = int(getattr(network, "head_hidden_size", network.num_features))
    dim = {"cls": cls_dim, "pool": pool_dim}.get(kind, cls_dim + pool_dim)
    resolved = {"name": label, "taps": None, "args": args}
    return Built(Embedding(network, kind), resolved, mean=mean, std=std, channels=(dim,), min_size=1,
                 extra={"size": tuple(int(v) for v in size)})  # fmt: skip


def _unavailable(timm, model_name: str, label: str, err: BaseException) -> WeightsError:
    """The one-line error for timm weights that are neither cached nor downloadable."""
    cfg = timm.models.get_pretrained_cfg(model_name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if hub_id:
        from huggingface_hub import constants  # comes with timm (optional)

        target = Path(constants.HF_HUB_CACHE) / ("models--" + hub_id.split("@")[0].replace("/", "--"))
        return WeightsError(
            f"pretrained weights for backbone {label} are not available: the Hugging Face hub cache has no "
            f"{target.name} in {target.parent} and it could not be downloaded ({type(err).__name__}); "
            f"download {hub_id} there on a machine online (or set HF_HOME), or pass backbone_weights=PATH, "
            "or pretrained=False"
        )
    url = getattr(cfg, "url", None) if cfg is not None else None
    if url:
        return unavailable(
            f"pretrained weights for backbone {label}",
            Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url),
            err,
        )
    return WeightsError(
        f"backbone {label} has no pretrained weights in timm ({one_line(err)}); "
        "pass backbone_weights=PATH or pretrained=False"
    )


def _index(tap: str | int, count: int, label: str) -> int:
    if isinstance(tap, str) and re.fullmatch(r"-?\d+", tap.strip()):
        tap = int(tap)
    if not isinstance(tap, int) or isinstance(tap, bool):
        raise ConfigError(
            f"unknown tap {tap!r} of backbone {label}; timm taps are indices of its {count} feature stages "
            f"or blocks, 0..{count - 1}"
        )
    index = tap + count if tap < 0 else tap
    if not 0 <= index < count:
        raise ConfigError(
            f"tap {tap} of backbone {label} is out of range: it has {count} feature stages or blocks "
            f"(taps 0..{count - 1})"
        )
    return index
