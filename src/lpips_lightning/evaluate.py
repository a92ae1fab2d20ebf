"""Score any metric on a judgments file: the paper's table, per subset, exact over all items.

``lpips-lightning evaluate MODEL [MODEL ...] --data FILE.h5 [--groups ...] [--out DIR] [--batch-size N]``

MODEL: a checkpoint or any export (see `lpips_lightning.export`), ``official:alex|vgg|squeeze``
(the released v0.1 heads on ImageNet backbones), ``baseline:alex|vgg|squeeze`` (no heads),
``l2`` (mean squared RGB difference) or ``ssim`` (1 - SSIM, torchmetrics, RGB in [0, 1]).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:  # torch is imported when a command runs, not for --help
    import numpy as np
    import torch
    from torch import nn

    from .datamodules import JudgmentsDataset

SPLITS_BY_DEFAULT = ("val", "test")


def _l2(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of RGB images in [-1, 1] (the original's L2 baseline works in Lab)."""
    from .lpips import to_unit_range

    return ((to_unit_range(x0) - to_unit_range(x1)) ** 2).mean(dim=(1, 2, 3))


SSIM_MIN_SIZE = 6


def _ssim(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """1 - SSIM (torchmetrics, Gaussian window 11, RGB in [0, 1]), per pair."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    from .lpips import to_unit_range

    height, width = x0.shape[-2:]
    if min(height, width) < SSIM_MIN_SIZE:  # the 11-pixel window is padded by 5 on each side
        raise ConfigError(
            f"images of {height}x{width} pixels are smaller than the {SSIM_MIN_SIZE}x{SSIM_MIN_SIZE} minimum of ssim "
            "(its 11-pixel Gaussian window)"
        )
    a, b = ((to_unit_range(x) + 1) / 2 for x in (x0, x1))
    return 1 - ssim(a, b, data_range=1.0, reduction="none")


def _function_module(fn, name: str) -> nn.Module:
    from torch import nn

    class Distance(nn.Module):
        def forward(self, x0, x1):
            return fn(x0, x1)

    Distance.__name__ = Distance.__qualname__ = name
    Distance.__doc__ = fn.__doc__
    return Distance()


def resolve_model(spec: str, trust_code: bool = False) -> nn.Module:
    """A model from a MODEL argument (see the module docstring)."""
    if spec == "l2":
        return _function_module(_l2, "L2Distance")
    if spec == "ssim":
        return _function_module(_ssim, "SSIMDistance")
    from .lpips import LPIPS

    if ":" in spec and spec.split(":", 1)[0] in ("official", "baseline"):
        kind, backbone = spec.split(":", 1)
        return LPIPS(backbone, heads="official" if kind == "official" else None).eval()
    if not Path(spec).exists():
        raise ConfigError(
            f"{spec}: no such model file; MODEL is a checkpoint, an export, official:NET, baseline:NET, l2 or ssim"
        )
    from .export import load

    return load(spec, trust_code=trust_code)


def distances(model: Callable, dataset: JudgmentsDataset, batch_size: int, device: torch.device, bar) -> dict:
    """Per-item distances of one group: {"d0", "d1"} (2AFC) or {"d"} (JND), numpy float64.

    `model`: a model, or what `scorer` made of one.
    """
    import numpy as np
    import torch

    from .lpips import to_unit_range

    out: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = dataset.__getitems__(list(range(start, min(start + batch_size, len(dataset)))))
            batch = {k: v.to(device) for k, v in batch.items()}
            pairs = {"d0": ("ref", "p0"), "d1": ("ref", "p1")} if "ref" in batch else {"d": ("p0", "p1")}
            for name, (a, b) in pairs.items():
                d = model(to_unit_range(batch[a]), to_unit_range(batch[b])).flatten()
                out.setdefault(name, []).append(d.double().cpu().numpy())
            bar.update(len(batch["p0"]))
    return {k: np.concatenate(v) for k, v in out.items()}


def scorer(model: nn.Module, device: torch.device) -> Callable:
    """`model` as `distances` calls it: an LPIPS model on the CPU runs its backbone's oneDNN-prepacked copy.

    The copy (`steps.prepacked_copy`) is made at the first batch, then serves every group, and is
    kept only where it gives the same taps and is faster; anything else (exports, ONNX, GPU
    models, baselines) is `model` itself.
    """
    import torch

    from .lpips import LPIPS

    if not isinstance(model, LPIPS) or device.type != "cpu" or model.training:
        return model
    from .steps import prepacked_copy

    fast: list[nn.Module] = []

    def score(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        if not fast:
            fast.append(prepacked_copy(model.net, model.prepare(torch.cat([x0, x1]))))
        return model(x0, x1, net=fast[0])

    return score


def default_groups(f) -> list[str]:
    """The groups scored without ``--groups``: the val and test splits, or every group if there are none."""
    from . import judgments

    every = list(judgments.groups(f))
    held_out = [g for g in every if g.split("/")[1] in SPLITS_BY_DEFAULT]
    return held_out or every


def pick_device(device: str | None) -> torch.device:
    """`device` as a torch.device, refusing in one line one that this machine does not have."""
    import torch

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


def _preflight(name: str, model: nn.Module, sets: dict, device: torch.device) -> None:
    """Run `model` on one item of each image size before scoring: a bad model fails before any output."""
    import torch

    from .errors import LPIPSLightningError
    from .lpips import to_unit_range

    seen = set()
    for group, ds in sets.items():
        if ds.image_shape in seen:
            continue
        seen.add(ds.image_shape)
        images = {k: v.to(device) for k, v in ds.read_images([0]).items()}
        try:
            with torch.no_grad():
                model(to_unit_range(images["p0"]), to_unit_range(images["p1"]))
        except LPIPSLightningError as err:
            raise ConfigError(f"{name} cannot score group {group}: {err}") from None
        except Exception as err:  # a foreign model (TorchScript, ONNX) failing on these images
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(
                f"{name} cannot score group {group} ({ds.image_shape[1]}x{ds.image_shape[2]} images): {first[:200]}"
            ) from None


def evaluate(
    models: dict[str, nn.Module],
    path: str | os.PathLike,
    groups: Sequence[str] | None = None,
    batch_size: int = 64,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Score each model on each group: {"scores": {model: {group: value}}, "items": ..., "groups": [...]}.

    Without `groups`: the file's val and test groups (training groups would flatter a trained
    model), or every group when the file has no val/test split.
    """
    import numpy as np
    import torch
    from tqdm import tqdm

    from . import judgments
    from .datamodules import JudgmentsDataset
    from .errors import LPIPSLightningError
    from .metrics import jnd_average_precision, two_afc

    dev = pick_device(device)
    with judgments.open_file(path) as f:
        chosen = judgments.resolve(f, list(groups) if groups else default_groups(f))
    if not chosen:
        raise ConfigError(f"{path}: the file holds no groups to score")
    sets = {g: JudgmentsDataset(path, [g], in_memory=False) for g in chosen}
    for name, model in models.items():
        if not hasattr(model, "session"):
            models[name] = model.to(dev)
        _preflight(name, models[name], sets, dev)
    total = sum(len(s) for s in sets.values()) * len(models)
    scores: dict[str, dict[str, float]] = {}
    items: dict[str, dict[str, dict]] = {}
    with tqdm(total=total, unit="item", disable=not progress, desc="evaluate") as bar:
        for name, model in models.items():
            scores[name], items[name] = {}, {}
            score = scorer(model, dev)
            for group, ds in sets.items():
                d = distances(score, ds, batch_size, dev, bar)
                bad = sum(int((~np.isfinite(v)).sum()) for k, v in d.items() if k in ("d", "d0", "d1"))
                if bad:
                    raise LPIPSLightningError(
                        f"model {name} gives NaN or infinite distances ({bad} in group {group}): its weights or "
                        "its backbone are broken; nothing is scored"
                    )
                target = ds.targets.double()
                if "d0" in d:
                    value = two_afc(torch.from_numpy(d["d0"]), torch.from_numpy(d["d1"]), target).mean()
                else:
                    value = jnd_average_precision(torch.from_numpy(d["d"]), target)
                scores[name][group] = float(value)
                items[name][group] = {**d, "target": target.numpy()}
    return {"scores": scores, "items": items, "groups": chosen}


def table(scores: dict[str, dict[str, float]], groups: list[str]) -> str:
    """The paper's table: 2AFC (%) per 2AFC group, mAP (%) per JND group, then the means."""
    from . import judgments

    names = list(scores)
    width = max(12, *(len(n) for n in names))
    head = f"{'group':<28}" + "".join(f"{n:>{width + 2}}" for n in names)
    lines = [head, "-" * len(head)]
    for kind, label in (("2afc", "2AFC %"), ("jnd", "JND mAP %")):
        kind_groups = [g for g in groups if judgments.kind_of(g) == kind]
        for g in kind_groups:
            lines.append(f"{g:<28}" + "".join(f"{100 * scores[n][g]:>{width + 2}.2f}" for n in names))
        if kind_groups:
            means = [100 * sum(scores[n][g] for g in kind_groups) / len(kind_groups) for n in names]
            lines.append(f"{'mean ' + label:<28}" + "".join(f"{m:>{width + 2}.2f}" for m in means))
            lines.append("")
    return "\n".join(lines).rstrip()


OUTPUT_FILES = ("results.json", "results.csv", "distances.csv", "2afc_by_subset.png", "jnd_precision_recall.png")


def write_outputs(result: dict, out: Path, overwrite: bool = False) -> list[Path]:
    """results.json, results.csv, per-item distances.csv and the charts, each written atomically."""
    from . import judgments
    from .outputs import atomic_output

    scores, groups = result["scores"], result["groups"]
    means = {
        n: {
            k: sum(s[g] for g in groups if judgments.kind_of(g) == k) / sum(judgments.kind_of(g) == k for g in groups)
            for k in ("2afc", "jnd")
            if any(judgments.kind_of(g) == k for g in groups)
        }
        for n, s in scores.items()
    }

    def results_json(tmp: Path) -> None:
        tmp.write_text(json.dumps({"groups": groups, "scores": scores, "means": means}, indent=2))

    def results_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["group", "measure", *scores])
            for g in groups:
                measure = "2afc" if judgments.kind_of(g) == "2afc" else "jnd_map"
                w.writerow([g, measure, *(scores[n][g] for n in scores)])

    def distances_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["model", "group", "index", "d0_or_d", "d1", "judge_or_same"])
            for n, per_group in result["items"].items():
                for g, it in per_group.items():
                    first = it.get("d0", it.get("d"))
                    second = it.get("d1", [None] * len(first))
                    for i, (a, b, t) in enumerate(zip(first, second, it["target"])):
                        w.writerow([n, g, i, f"{a:.8g}", "" if b is None else f"{b:.8g}", f"{t:.6g}"])

    writers = {"results.json": results_json, "results.csv": results_csv, "distances.csv": distances_csv}
    writers.update(_plots(result))
    written = []
    for name, write in writers.items():
        with atomic_output(out / name, overwrite=True, what="evaluation result") as tmp:
            write(tmp)
        written.append(out / name)
    return written


def _plots(result: dict) -> dict:
    """{file name: writer} for the 2AFC bar chart and the JND precision-recall curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from . import judgments
    from .metrics import jnd_precision_recall

    def saver(fig):
        def save(tmp: Path) -> None:
            fig.savefig(tmp, format="png", dpi=100)
            plt.close(fig)

        return save

    writers = {}
    scores, groups = result["scores"], result["groups"]
    afc = [g for g in groups if judgments.kind_of(g) == "2afc"]
    if afc:
        fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(afc) * len(scores) ** 0.5), 4))
        width = 0.8 / len(scores)
        for i, n in enumerate(scores):
            ax.bar(np.arange(len(afc)) + i * width, [100 * scores[n][g] for g in afc], width, label=n)
        ax.set_xticks(np.arange(len(afc)) + 0.4 - width / 2, [g.split("/", 1)[1] for g in afc], rotation=30, ha="right")
        ax.axhline(50, color="grey", linestyle="--", linewidth=1, label="chance")
        ax.set_ylabel("2AFC score (%)")
        ax.set_ylim(40, 100)
        ax.legend(fontsize="small")
        fig.tight_layout()
        writers["2afc_by_subset.png"] = saver(fig)
    jnd = [g for g in groups if judgments.kind_of(g) == "jnd"]
    if jnd:
        fig, axes = plt.subplots(1, len(jnd), figsize=(4.5 * len(jnd), 4), squeeze=False)
        for ax, g in zip(axes[0], jnd):
            for n, per_group in result["items"].items():
                it = per_group[g]
                precision, recall = jnd_precision_recall(torch.from_numpy(it["d"]), torch.from_numpy(it["target"]))
                ax.plot(recall.numpy(), precision.numpy(), label=f"{n} (mAP {100 * scores[n][g]:.1f})")
            ax.set_title(g)
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
            ax.legend(fontsize="small")
        fig.tight_layout()
        writers["jnd_precision_recall.png"] = saver(fig)
    return writers


