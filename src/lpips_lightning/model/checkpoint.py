"""A Lightning checkpoint of `LPIPSModule` as data: its hyperparameters, the metric's weights, and the metric.

The checkpoint is read with ``weights_only=True`` (tensors and plain values only); the metric
is rebuilt from the resolved backbone spec the run saved beside the hyperparameters
(`CHECKPOINT_BACKBONE_KEY`), a custom ``class_path`` only when the user trusts the file.
"""

from __future__ import annotations

import os

from ..backbones.custom import require_trusted
from ..errors import ExportError, WeightsError
from ..weights import load_torch_file, strict_load
from .backbone_file import BACKBONE_WEIGHTS_KEY, rebuilt_backbone
from .embedding import EmbeddingDistance
from .lpips import LPIPS

CHECKPOINT_BACKBONE_KEY = "lpips_backbone"  # the resolved backbone spec, beside the hyperparameters


def logged_step(ckpt: dict) -> int | None:
    """The step at which loggers last wrote (Lightning's count of training batches), or None.

    Equal to the optimizer step count since batches of several steps keep it so (`train.cadence.Cadence`).
    """
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"])
    except (KeyError, TypeError, ValueError):
        return ckpt.get("global_step")


def checkpoint_parts(ckpt: object, path: str | os.PathLike) -> tuple[dict, dict, dict]:
    """(hyperparameters, LPIPS state dict, extra info) of a loaded checkpoint; `ExportError` for anything else.

    Extra info: ``scores`` (the best validation score a checkpoint callback kept), ``epoch``,
    ``global_step``, ``logged_step`` (where a resumed run's metrics.csv is cut), ``backbone``
    (the resolved backbone spec the run saved, or None) and ``weights`` (a ``lin`` checkpoint's
    frozen backbone file, whose tensors it does not hold: `backbone_file.weights_record`, or None).
    """
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or not isinstance(state, dict) or "variant" not in hp or "backbone" not in hp:
        raise ExportError(f"{path}: not a checkpoint of lpips-lightning (no LPIPSModule hyperparameters)")
    weights = {k[len("lpips.") :]: v for k, v in state.items() if k.startswith("lpips.")}
    weights = {k.replace("_orig_mod.", ""): v for k, v in weights.items()}  # left by torch.compile
    if not weights:
        raise ExportError(f"{path}: a checkpoint of lpips-lightning without the metric's weights (no 'lpips.*' keys)")
    scores = {}
    for cb_state in (ckpt.get("callbacks") or {}).values():
        if isinstance(cb_state, dict) and cb_state.get("best_model_score") is not None:
            scores["best_val_2afc_mean"] = float(cb_state["best_model_score"])
    backbone = ckpt.get(CHECKPOINT_BACKBONE_KEY)
    info = {
        "scores": scores,
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
        "logged_step": logged_step(ckpt),
        "backbone": backbone if isinstance(backbone, dict) else None,
        "weights": ckpt.get(BACKBONE_WEIGHTS_KEY) if isinstance(ckpt.get(BACKBONE_WEIGHTS_KEY), dict) else None,
    }
    return dict(hp), weights, info


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict, dict]:
    """(hyperparameters, LPIPS state dict, extra info) from a checkpoint file (see `checkpoint_parts`).

    Raises `ExportError` in one line naming the file for anything else (see `weights.load_torch_file`).
    """
    try:
        ckpt = load_torch_file(path, "checkpoint")
    except WeightsError as err:
        raise ExportError(str(err)) from None
    return checkpoint_parts(ckpt, path)


def model_from_parts(
    hp: dict, weights: dict, info: dict, source: str, trust_code: bool = False
) -> LPIPS | EmbeddingDistance:
    """The trained metric of a checkpoint's parts, in eval mode (its LoRA adapters merged)."""
    resolved = info.get("backbone")
    if hp.get("distance", "lpips") == "embedding":
        model = embedding_of(hp, resolved)
        strict_load(model, weights, source)
        if model.net.lora_rank:
            model.net.merge_lora()
        return model.eval()
    require_trusted(resolved or hp["backbone"], trust_code, source)

    def build(pretrained: bool = False, backbone_weights: str | None = None) -> LPIPS:
        return LPIPS(
            resolved or hp["backbone"],
            hp.get("version", "0.1"),
            pretrained=pretrained,
            backbone_weights=backbone_weights,
            heads="random",
            taps=None if resolved else hp.get("taps"),
            backbone_args=None if resolved else hp.get("backbone_args"),
            lora_rank=int(hp.get("lora_rank") or 0),
        )

    if info.get("weights") and resolved:  # a lin checkpoint: its frozen backbone rebuilt from its checked file
        model = rebuilt_backbone(info["weights"], resolved, build, source)
        weights = {**{f"net.{k}": v for k, v in model.net.state_dict().items()}, **weights}
    else:
        model = build()
    strict_load(model, weights, source)
    if model.net.lora_rank:
        model.net.merge_lora()
    return model.eval()


def embedding_of(hp: dict, resolved: dict | None) -> EmbeddingDistance:
    """An embedding metric with random weights as a run built it: from its resolved spec, else its options."""
    lora_rank = int(hp.get("lora_rank") or 0)
    if resolved is not None:
        return EmbeddingDistance.from_spec(resolved, lora_rank)
    return EmbeddingDistance(
        hp["backbone"], hp.get("features") or "cls", pretrained=False, head=hp.get("head"), lora_rank=lora_rank,
        backbone_args=hp.get("backbone_args"),
    )  # fmt: skip


def model_from_checkpoint(
    path: str | os.PathLike, trust_code: bool = False
) -> tuple[LPIPS | EmbeddingDistance, dict, dict]:
    """(the trained metric in eval mode, hyperparameters, extra info) of a checkpoint file.

    A checkpoint whose backbone is custom code is refused unless `trust_code` is true.
    """
    hp, weights, info = read_checkpoint(path)
    return model_from_parts(hp, weights, info, str(path), trust_code), hp, info
