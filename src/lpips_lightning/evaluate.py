"""Score any metric on a judgments file: the paper's numbers, per subset, exact over all items.

``lpips-lightning evaluate MODEL [MODEL ...] --data FILE.h5 [--groups ...] [--out DIR] [--batch-size N]``

MODEL (`resolve_model`): a checkpoint or any export (see `lpips_lightning.export`),
``official:alex|vgg|squeeze`` (the released v0.1 heads on ImageNet backbones),
``baseline:alex|vgg|squeeze`` (no heads), ``l2`` (mean squared RGB difference) or ``ssim``
(1 - SSIM, torchmetrics, RGB in [0, 1]). `evaluate` runs each model once on one item of each
image size (a model that cannot score the file fails before any scoring), then on every item;
`report` turns the result into the table and the files. A MOS group is scored by d(ref, dist)
against its opinion scores (`model.correlations`); `bootstrap` resamples each group's items for
a 95 % interval of every score.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure
from tqdm import tqdm

from .backbones.fast import prepacked_copy
from .data import group_checks, judgments
from .data.dataset import JudgmentsDataset
from .errors import ConfigError, LPIPSLightningError
from .export.read import load
from .model.correlations import bootstrap_ci, correlations
from .model.lpips import LPIPS, to_unit_range
from .model.metrics import SCORE_NAMES, score_subset
from .provenance import provenance

SPLITS_BY_DEFAULT = ("val", "test")
SSIM_MIN_SIZE = 6
MODEL_KINDS = "MODEL is a checkpoint, an export, official:NET, baseline:NET, l2 or ssim"


class L2Distance(nn.Module):
    """Mean squared difference of RGB images in [-1, 1] (the original's L2 baseline works in Lab)."""

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return ((to_unit_range(x0) - to_unit_range(x1)) ** 2).mean(dim=(1, 2, 3))


class SSIMDistance(nn.Module):
    """1 - SSIM (torchmetrics, Gaussian window 11, RGB in [0, 1]), per pair."""

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        height, width = x0.shape[-2:]
        if min(height, width) < SSIM_MIN_SIZE:  # the 11-pixel window is padded by 5 on each side
            raise ConfigError(
                f"images of {height}x{width} pixels are smaller than the {SSIM_MIN_SIZE}x{SSIM_MIN_SIZE} minimum "
                "of ssim (its 11-pixel Gaussian window)"
            )
        a, b = ((to_unit_range(x) + 1) / 2 for x in (x0, x1))
        return 1 - structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")


def resolve_model(spec: str, trust_code: bool = False) -> nn.Module:
    """A model from a MODEL argument (see the module docstring)."""
    if spec == "l2":
        return L2Distance()
    if spec == "ssim":
        return SSIMDistance()
    kind, _, backbone = spec.partition(":")
    if kind in ("official", "baseline") and backbone:
        return LPIPS(backbone, heads="official" if kind == "official" else None).eval()
    if not Path(spec).exists():
        raise ConfigError(f"{spec}: no such model file; {MODEL_KINDS}")
    return load(spec, trust_code=trust_code)


def distances(model: Callable, dataset: JudgmentsDataset, batch_size: int, device: torch.device, bar) -> dict:
    """Per-item distances of one group: {"d0", "d1"} (2AFC) or {"d"} (JND: p0-p1, MOS: ref-dist), numpy float64.

    `model`: a model, or what `scorer` made of one.
    """
    out: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = dataset.__getitems__(list(range(start, min(start + batch_size, len(dataset)))))
            batch = {k: v.to(device) for k, v in batch.items()}
            if "dist" in batch:
                pairs = {"d": ("ref", "dist")}
            else:
                pairs = {"d0": ("ref", "p0"), "d1": ("ref", "p1")} if "ref" in batch else {"d": ("p0", "p1")}
            for name, (a, b) in pairs.items():
                d = model(to_unit_range(batch[a]), to_unit_range(batch[b])).flatten()
                out.setdefault(name, []).append(d.double().cpu().numpy())
            bar.update(len(batch[dataset.target_key]))
    return {k: np.concatenate(v) for k, v in out.items()}


class PrepackedScorer:
    """An LPIPS model on the CPU scoring through its backbone's oneDNN-prepacked copy.

    The copy (`prepacked_copy`) is made at the first batch, then serves every group, and is kept
    only where it gives the same taps and is faster.
    """

    def __init__(self, model: LPIPS) -> None:
        self.model = model
        self.fast: nn.Module | None = None

    def __call__(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        if self.fast is None:
            self.fast = prepacked_copy(self.model.net, self.model.prepare(torch.cat([x0, x1])))
        return self.model(x0, x1, net=self.fast)


def scorer(model: nn.Module, device: torch.device) -> Callable:
    """`model` as `distances` calls it: an LPIPS model in eval mode on the CPU as a `PrepackedScorer`.

    Anything else (exports, ONNX, GPU models, baselines, a model in training mode) is `model` itself.
    """
    if not isinstance(model, LPIPS) or device.type != "cpu" or model.training:
        return model
    return PrepackedScorer(model)


def default_groups(f) -> list[str]:
    """The groups scored without ``--groups``: the val and test splits, or every group if there are none."""
    every = list(judgments.groups(f))
    held_out = [g for g in every if g.split("/")[1] in SPLITS_BY_DEFAULT]
    return held_out or every


def pick_device(device: str | None) -> torch.device:
    """`device` as a torch.device, refusing in one line one that this machine does not have."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {device}: unknown device; use cpu or cuda (cuda:N for one GPU)") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {device}: this machine has no usable CUDA GPU; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"--device {device}: this machine has {count} GPU(s), cuda:0..cuda:{count - 1}")
    elif dev.type != "cpu":
        raise ConfigError(f"--device {device}: only cpu and cuda are supported")
    return dev


def preflight(name: str, model: nn.Module, sets: dict[str, JudgmentsDataset], device: torch.device) -> None:
    """Run `model` on one item of each image size before scoring: a bad model fails before any output."""
    seen = set()
    for group, ds in sets.items():
        if ds.image_shape in seen:
            continue
        seen.add(ds.image_shape)
        images = {k: v.to(device) for k, v in ds.read_images([0]).items()}
        first, second = ds.keys[-2:]  # p0, p1 (2AFC, JND) or ref, dist (MOS)
        try:
            with torch.no_grad():
                model(to_unit_range(images[first]), to_unit_range(images[second]))
        except LPIPSLightningError as err:
            raise ConfigError(f"{name} cannot score group {group}: {err}") from None
        except Exception as err:  # a foreign model (TorchScript, ONNX) failing on these images
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(
                f"{name} cannot score group {group} ({ds.image_shape[1]}x{ds.image_shape[2]} images): {first[:200]}"
            ) from None


def score_group(
    name: str, group: str, d: dict[str, np.ndarray], target: torch.Tensor, higher_is_better: bool = True
) -> float:
    """The 2AFC score (d0, d1), JND mAP (d) or SRCC (d, MOS) of one group's distances; refuses NaN or infinite ones."""
    bad = sum(int((~np.isfinite(v)).sum()) for v in d.values())
    if bad:
        raise LPIPSLightningError(
            f"model {name} gives NaN or infinite distances ({bad} in group {group}): its weights or "
            "its backbone are broken; nothing is scored"
        )
    kind = judgments.kind_of(group)
    keys = ("d0", "d1") if kind == "2afc" else ("d",)
    return score_subset(kind, [torch.from_numpy(d[k]) for k in keys], target, higher_is_better)


def details(
    group: str,
    d: dict[str, np.ndarray],
    target: np.ndarray,
    value: float,
    higher_is_better: bool,
    resamples: int,
    seed: int,
) -> dict:
    """One score as results.json details it: kind, n, measure, value; correlations (MOS); ci95 (bootstrap).

    A MOS group adds "srcc", "krcc", "plcc" (`correlations`: "logistic_fit" says whether PLCC is
    after the logistic fit or, where it did not converge, plain Pearson) and "higher_is_better"
    (False for DMOS); "ci95" is [low, high] of `value` over `resamples` resamples of the items.
    """
    kind = judgments.kind_of(group)
    found = {"kind": kind, "n": int(len(target)), "measure": SCORE_NAMES[kind], "value": value}
    if kind == "mos":
        found.update(correlations(d["d"], target, higher_is_better), higher_is_better=higher_is_better)
    if resamples:

        def score(target, **dist):
            return score_subset(
                kind, [torch.from_numpy(v) for v in dist.values()], torch.from_numpy(target), higher_is_better
            )

        found["ci95"] = list(bootstrap_ci(score, {"target": target, **d}, resamples, seed))
    return found


def evaluate(
    models: dict[str, nn.Module],
    path: str | os.PathLike,
    groups: Sequence[str] | None = None,
    batch_size: int = 64,
    device: str | None = None,
    progress: bool = True,
    bootstrap: int = 0,
    seed: int = 0,
    sources: Sequence[str] = (),
) -> dict:
    """Score each model on each group: {"scores": {model: {group: value}}, "details", "items", "groups", "provenance"}.

    `sources`: the models as the user named them (files are recorded with their sha256 in "provenance").

    Without `groups`: the file's val and test groups (training groups would flatter a trained
    model), or every group when the file has no val/test split. "items" holds each group's
    per-item distances and targets, numpy arrays: {model: {group: {"d0", "d1" or "d", "target"}}};
    "details" {model: {group: `details`}}, with a 95 % interval from `bootstrap` resamples (seeded by `seed`;
    then "bootstrap": {"resamples", "seed"} too). With `progress`, a bar and one line per model (on stderr).
    """
    dev = pick_device(device)
    if bootstrap < 0:
        raise ConfigError(f"--bootstrap must be a number of resamples >= 0, got {bootstrap}")
    with judgments.open_file(path) as f:
        chosen = group_checks.resolve(f, list(groups) if groups else default_groups(f))
        better = {g: judgments.higher_is_better(f, g) for g in chosen if judgments.kind_of(g) == "mos"}
    if not chosen:
        raise ConfigError(f"{path}: the file holds no groups to score")
    sets = {g: JudgmentsDataset(path, [g], in_memory=False) for g in chosen}
    for name, model in models.items():
        models[name] = model.to(dev)  # an ONNX metric has no parameters: it runs on the CPU, answers on dev
        preflight(name, models[name], sets, dev)
    total = sum(len(s) for s in sets.values()) * len(models)
    scores: dict[str, dict[str, float]] = {}
    items: dict[str, dict[str, dict]] = {}
    detail: dict[str, dict[str, dict]] = {}
    with tqdm(total=total, unit="item", disable=not progress, desc="evaluate") as bar:
        for number, (name, model) in enumerate(models.items(), 1):
            if progress:
                bar.write(f"scoring {name} ({number} of {len(models)})", file=sys.stderr)
            bar.set_description(f"evaluate {name}")
            scores[name], items[name], detail[name] = {}, {}, {}
            score = scorer(model, dev)
            for group, ds in sets.items():
                d = distances(score, ds, batch_size, dev, bar)
                target, hib = ds.targets.double(), better.get(group, True)
                scores[name][group] = score_group(name, group, d, target, hib)
                items[name][group] = {**d, "target": target.numpy()}
                detail[name][group] = details(group, d, target.numpy(), scores[name][group], hib, bootstrap, seed)
    result = {"scores": scores, "details": detail, "items": items, "groups": chosen}
    result["provenance"] = provenance(data=path, models=sources or list(models))
    if bootstrap:
        result["bootstrap"] = {"resamples": bootstrap, "seed": seed}
    return result
