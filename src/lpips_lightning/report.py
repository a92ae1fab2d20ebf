"""What `evaluate` reports: the paper's table, and the files ``evaluate --out DIR`` writes.

`table`: 2AFC (%) per 2AFC group and JND mAP (%) per JND group, one column per model, then the
means. `write_outputs`: results.json (scores and means), results.csv (one row per group),
distances.csv (every item's distances and target) and two charts (2AFC per subset, JND
precision-recall curves), each written atomically.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .data import judgments
from .model.metrics import jnd_precision_recall
from .outputs import atomic_output

OUTPUT_FILES = ("results.json", "results.csv", "distances.csv", "2afc_by_subset.png", "jnd_precision_recall.png")
KINDS = {"2afc": "2AFC %", "jnd": "JND mAP %"}


def of_kind(groups: list[str], kind: str) -> list[str]:
    """The groups of one kind (2afc or jnd), in order."""
    return [g for g in groups if judgments.kind_of(g) == kind]


def table(scores: dict[str, dict[str, float]], groups: list[str]) -> str:
    """The paper's table: 2AFC (%) per 2AFC group, mAP (%) per JND group, then the means."""
    names = list(scores)
    width = max(12, *(len(n) for n in names))
    head = f"{'group':<28}" + "".join(f"{n:>{width + 2}}" for n in names)
    lines = [head, "-" * len(head)]
    for kind, label in KINDS.items():
        kind_groups = of_kind(groups, kind)
        for g in kind_groups:
            lines.append(f"{g:<28}" + "".join(f"{100 * scores[n][g]:>{width + 2}.2f}" for n in names))
        if kind_groups:
            means = [100 * sum(scores[n][g] for g in kind_groups) / len(kind_groups) for n in names]
            lines.append(f"{'mean ' + label:<28}" + "".join(f"{m:>{width + 2}.2f}" for m in means))
            lines.append("")
    return "\n".join(lines).rstrip()


def means(scores: dict[str, dict[str, float]], groups: list[str]) -> dict[str, dict[str, float]]:
    """{model: {kind: mean score over the groups of that kind}}, for the kinds present."""
    return {
        n: {
            kind: sum(s[g] for g in of_kind(groups, kind)) / len(of_kind(groups, kind))
            for kind in KINDS
            if of_kind(groups, kind)
        }
        for n, s in scores.items()
    }


def write_outputs(result: dict, out: Path, overwrite: bool = False) -> list[Path]:
    """results.json, results.csv, per-item distances.csv and the charts, each written atomically."""
    writers: dict[str, Callable[[Path], None]] = {
        "results.json": lambda tmp: _results_json(result, tmp),
        "results.csv": lambda tmp: _results_csv(result, tmp),
        "distances.csv": lambda tmp: _distances_csv(result, tmp),
    }
    writers.update(_charts(result))
    written = []
    for name, write in writers.items():
        with atomic_output(out / name, overwrite=True, what="evaluation result") as tmp:
            write(tmp)
        written.append(out / name)
    return written


def _results_json(result: dict, tmp: Path) -> None:
    scores, groups = result["scores"], result["groups"]
    tmp.write_text(json.dumps({"groups": groups, "scores": scores, "means": means(scores, groups)}, indent=2))


def _results_csv(result: dict, tmp: Path) -> None:
    scores = result["scores"]
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["group", "measure", *scores])
        for g in result["groups"]:
            measure = "2afc" if judgments.kind_of(g) == "2afc" else "jnd_map"
            w.writerow([g, measure, *(scores[n][g] for n in scores)])


def _distances_csv(result: dict, tmp: Path) -> None:
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "group", "index", "d0_or_d", "d1", "judge_or_same"])
        for n, per_group in result["items"].items():
            for g, it in per_group.items():
                first = it.get("d0", it.get("d"))
                second = it.get("d1", [None] * len(first))
                for i, (a, b, t) in enumerate(zip(first, second, it["target"])):
                    w.writerow([n, g, i, f"{a:.8g}", "" if b is None else f"{b:.8g}", f"{t:.6g}"])


def _charts(result: dict) -> dict[str, Callable[[Path], None]]:
    """{file name: writer} for the 2AFC bar chart and the JND precision-recall curves."""
    import matplotlib  # heavy, and only `evaluate --out` draws: imported when a chart is made

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def saver(fig) -> Callable[[Path], None]:
        def save(tmp: Path) -> None:
            fig.savefig(tmp, format="png", dpi=100)
            plt.close(fig)

        return save

    writers = {}
    scores, groups = result["scores"], result["groups"]
    afc = of_kind(groups, "2afc")
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
    jnd = of_kind(groups, "jnd")
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
