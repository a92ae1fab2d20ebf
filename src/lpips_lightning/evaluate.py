"""Score any metric on a judgments file: the paper's table, per subset, exact over all items.

``lpips-lightning evaluate MODEL [MODEL ...] --data FILE.h5 [--groups ...] [--out DIR] [--batch-size N]``

MODEL: a checkpoint or any export (see `lpips_lightning.export`), ``official:alex|vgg|squeeze``
(the released v0.1 heads on ImageNet backbones), ``baseline:alex|vgg|squeeze`` (no heads),
``l2`` (mean squared RGB difference) or ``ssim`` (1 - SSIM, torchmetrics, RGB in [0, 1]).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import judgments
from .datamodules import JudgmentsDataset
from .errors import ConfigError
from .lpips import LPIPS, to_unit_range
from .metrics import jnd_average_precision, two_afc


class L2Distance(nn.Module):
    """Mean squared difference of RGB images in [-1, 1] (the original's L2 baseline works in Lab)."""

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return ((to_unit_range(x0) - to_unit_range(x1)) ** 2).mean(dim=(1, 2, 3))


class SSIMDistance(nn.Module):
    """1 - SSIM (torchmetrics, Gaussian window 11, RGB in [0, 1]), per pair."""

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        from torchmetrics.functional.image import structural_similarity_index_measure as ssim

        a, b = ((to_unit_range(x) + 1) / 2 for x in (x0, x1))
        return 1 - ssim(a, b, data_range=1.0, reduction="none")


def resolve_model(spec: str) -> nn.Module:
    """A model from a MODEL argument (see the module docstring)."""
    if spec == "l2":
        return L2Distance()
    if spec == "ssim":
        return SSIMDistance()
    if ":" in spec and spec.split(":", 1)[0] in ("official", "baseline"):
        kind, backbone = spec.split(":", 1)
        return LPIPS(backbone, heads="official" if kind == "official" else None).eval()
    if not Path(spec).exists():
        raise ConfigError(
            f"{spec}: no such model file; MODEL is a checkpoint, an export, official:NET, baseline:NET, l2 or ssim"
        )
    from .export import load

    return load(spec)


@torch.no_grad()
def distances(model: nn.Module, dataset: JudgmentsDataset, batch_size: int, device: torch.device, bar) -> dict:
    """Per-item distances of one group: {"d0", "d1"} (2AFC) or {"d"} (JND), numpy float64."""
    out: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(dataset), batch_size):
        batch = dataset.__getitems__(list(range(start, min(start + batch_size, len(dataset)))))
        batch = {k: v.to(device) for k, v in batch.items()}
        pairs = {"d0": ("ref", "p0"), "d1": ("ref", "p1")} if "ref" in batch else {"d": ("p0", "p1")}
        for name, (a, b) in pairs.items():
            d = model(to_unit_range(batch[a]), to_unit_range(batch[b])).flatten()
            out.setdefault(name, []).append(d.double().cpu().numpy())
        bar.update(len(batch["p0"]))
    return {k: np.concatenate(v) for k, v in out.items()}


def evaluate(
    models: dict[str, nn.Module],
    path: str | os.PathLike,
    groups: Sequence[str] | None = None,
    batch_size: int = 64,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Score each model on each group: {"scores": {model: {group: value}}, "items": ...}."""
    from tqdm import tqdm

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with judgments.open_file(path) as f:
        chosen = judgments.resolve(f, list(groups) if groups else ["2afc/*/*", "jnd/*/*"])
    sets = {g: JudgmentsDataset(path, [g], in_memory=False) for g in chosen}
    total = sum(len(s) for s in sets.values()) * len(models)
    scores: dict[str, dict[str, float]] = {}
    items: dict[str, dict[str, dict]] = {}
    with tqdm(total=total, unit="item", disable=not progress, desc="evaluate") as bar:
        for name, model in models.items():
            model = model.to(dev) if not hasattr(model, "session") else model
            scores[name], items[name] = {}, {}
            for group, ds in sets.items():
                d = distances(model, ds, batch_size, dev, bar)
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
    names = list(scores)
    width = max(12, *(len(n) for n in names))
    head = f"{'group':<28}" + "".join(f"{n:>{width + 2}}" for n in names)
    lines = [head, "-" * len(head)]
    for kind, label in (("2afc", "2AFC %"), ("jnd", "JND mAP %")):
        kind_groups = [g for g in groups if judgments.kind_of(g) == kind]
        for g in kind_groups:
            lines.append(f"{g:<28}" + "".join(f"{100 * scores[n][g]:>{width + 2}.2f}" for n in names))
        if kind_groups:
            means = [100 * np.mean([scores[n][g] for g in kind_groups]) for n in names]
            lines.append(f"{'mean ' + label:<28}" + "".join(f"{m:>{width + 2}.2f}" for m in means))
            lines.append("")
    return "\n".join(lines).rstrip()


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_outputs(result: dict, out: Path, per_item: bool) -> list[Path]:
    """results.json and results.csv; with `per_item`, distances.csv and the PNG charts too."""
    scores, groups = result["scores"], result["groups"]
    written = []
    means = {
        n: {
            k: float(np.mean([s[g] for g in groups if judgments.kind_of(g) == k]))
            for k in ("2afc", "jnd")
            if any(judgments.kind_of(g) == k for g in groups)
        }
        for n, s in scores.items()
    }

    def js(tmp):
        tmp.write_text(json.dumps({"scores": scores, "means": means}, indent=2))

    def cs(tmp):
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["group", "measure", *scores])
            for g in groups:
                w.writerow(
                    [g, "2afc" if judgments.kind_of(g) == "2afc" else "jnd_map", *(scores[n][g] for n in scores)]
                )

    for name, fn in (("results.json", js), ("results.csv", cs)):
        _atomic_write(out / name, fn)
        written.append(out / name)
    if not per_item:
        return written

    def ds(tmp):
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["model", "group", "index", "d0_or_d", "d1", "judge_or_same"])
            for n, per_group in result["items"].items():
                for g, it in per_group.items():
                    first = it.get("d0", it.get("d"))
                    second = it.get("d1", [None] * len(first))
                    for i, (a, b, t) in enumerate(zip(first, second, it["target"])):
                        w.writerow([n, g, i, f"{a:.8g}", "" if b is None else f"{b:.8g}", f"{t:.6g}"])

    _atomic_write(out / "distances.csv", ds)
    written.append(out / "distances.csv")
    written += _plots(result, out)
    return written


def _plots(result: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    scores, groups = result["scores"], result["groups"]
    afc = [g for g in groups if judgments.kind_of(g) == "2afc"]
    if afc:
        fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(afc) * len(scores) ** 0.5), 4))
        width = 0.8 / len(scores)
        for i, n in enumerate(scores):
            ax.bar(np.arange(len(afc)) + i * width, [100 * scores[n][g] for g in afc], width, label=n)
        ax.set_xticks(np.arange(len(afc)) + 0.4 - width / 2, [g.split("/", 1)[1] for g in afc], rotation=30, ha="right")
        ax.set_ylabel("2AFC score (%)")
        ax.set_ylim(50, 100)
        ax.legend(fontsize="small")
        fig.tight_layout()
        _atomic_write(out / "2afc_by_subset.png", lambda tmp: fig.savefig(tmp, format="png", dpi=100))
        plt.close(fig)
        written.append(out / "2afc_by_subset.png")
    jnd = [g for g in groups if judgments.kind_of(g) == "jnd"]
    if jnd:
        fig, axes = plt.subplots(1, len(jnd), figsize=(4.5 * len(jnd), 4), squeeze=False)
        for ax, g in zip(axes[0], jnd):
            for n, per_group in result["items"].items():
                it = per_group[g]
                order = np.argsort(it["d"], kind="stable")
                s = it["target"][order]
                tp, fp = np.cumsum(s), np.cumsum(1 - s)
                ax.plot(tp / s.sum(), tp / (tp + fp), label=f"{n} (mAP {100 * scores[n][g]:.1f})")
            ax.set_title(g)
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
            ax.legend(fontsize="small")
        fig.tight_layout()
        _atomic_write(out / "jnd_precision_recall.png", lambda tmp: fig.savefig(tmp, format="png", dpi=100))
        plt.close(fig)
        written.append(out / "jnd_precision_recall.png")
    return written


def _label(spec: str, specs: Sequence[str]) -> str:
    """A short column name: a file's name, unless two models share it."""
    name = Path(spec).name if Path(spec).exists() else spec
    return name if sum(Path(s).name == name for s in specs) <= 1 else spec


def main(argv: Sequence[str]) -> int:
    """``lpips-lightning evaluate``."""
    p = argparse.ArgumentParser(prog="lpips-lightning evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="checkpoint, export, official:NET, baseline:NET, l2 or ssim (several: one column each)",
    )
    p.add_argument("--data", required=True, help="a judgments file (lpips-lightning pack / demo-data)")
    p.add_argument("--groups", nargs="+", default=None, help="groups or globs (default: every group)")
    p.add_argument("--out", default=None, help="folder for results, per-item distances and charts")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    models = {_label(spec, args.models): resolve_model(spec) for spec in args.models}
    result = evaluate(models, args.data, args.groups, args.batch_size, args.device, progress=not args.quiet)
    print(table(result["scores"], result["groups"]))
    out = Path(args.out) if args.out else Path.cwd()
    out.mkdir(parents=True, exist_ok=True)
    for path in write_outputs(result, out, per_item=args.out is not None):
        print(f"wrote {path}")
    return 0
