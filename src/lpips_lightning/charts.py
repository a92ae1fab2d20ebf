"""The charts of ``evaluate --out``: 2AFC per subset, JND precision-recall, SRCC per MOS subset, distance against MOS.

`writers` gives, for the kinds a result holds, each chart's file name and a function drawing it
(`report.write_outputs` calls them inside its temporary folder). A bootstrapped result draws each
score's 95 % interval: error bars on the bar charts, the interval in the legend of the
precision-recall curves and in the title of each scatter. The MOS scatter shows every item's
distance against its opinion score with the fitted 4-parameter logistic that PLCC is computed
after (`model.correlations`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .data import judgments
from .model.correlations import fit_logistic, logistic4, signed
from .model.metrics import jnd_precision_recall

CHARTS = {"2afc": "2afc_by_subset.png", "jnd": "jnd_precision_recall.png"}
MOS_CHARTS = {"srcc": "mos_srcc_by_subset.png", "scatter": "mos_scatter.png"}
NO_SAME = "no pair judged the same, so its JND mAP is undefined"


def _of_kind(groups: list[str], kind: str) -> list[str]:
    return [g for g in groups if judgments.kind_of(g) == kind]


def _detail(result: dict, name: str, group: str) -> dict:
    return result.get("details", {}).get(name, {}).get(group, {})


def interval(detail: dict | None) -> tuple[float, float] | None:
    """The bootstrap interval of one score's details ("ci95"), or None (not bootstrapped, or undefined)."""
    ci = (detail or {}).get("ci95")
    return (ci[0], ci[1]) if ci is not None and all(v is not None and math.isfinite(v) for v in ci) else None


def _ci(result: dict, name: str, group: str) -> tuple[float, float] | None:
    return interval(_detail(result, name, group))


def with_ci(value: float, ci: tuple[float, float] | None, digits: int) -> str:
    """``0.7010 [0.680, 0.720]``: a score with its interval (one digit less), or the score alone."""
    if not math.isfinite(value):
        return "n/a"
    shown = f"{value:.{digits}f}"
    return shown if ci is None else f"{shown} [{ci[0]:.{max(digits - 1, 0)}f}, {ci[1]:.{max(digits - 1, 0)}f}]"


def writers(result: dict) -> dict[str, Callable[[Path], None]]:
    """{file name: writer} of the charts of the kinds present (each drawn when written)."""
    found: dict[str, Callable[[Path], None]] = {}
    groups = result["groups"]
    if _of_kind(groups, "2afc"):
        found[CHARTS["2afc"]] = lambda tmp: _save(_afc_chart, result, tmp)
    if _of_kind(groups, "jnd"):
        found[CHARTS["jnd"]] = lambda tmp: _save(_jnd_chart, result, tmp)
    if _of_kind(groups, "mos"):
        found[MOS_CHARTS["srcc"]] = lambda tmp: _save(_mos_bars, result, tmp)
        found[MOS_CHARTS["scatter"]] = lambda tmp: _save(_mos_scatter, result, tmp)
    return found


def _save(draw: Callable, result: dict, tmp: Path) -> None:
    """Draw a chart of `result` and save it as PNG at `tmp`; the figure is closed whatever happens."""
    import matplotlib  # heavy, and only `evaluate --out` draws: imported when a chart is made

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw(plt, result)
    try:
        fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)


def _yerr(result: dict, name: str, groups: list[str], scale: float) -> np.ndarray | None:
    """Matplotlib's (2, N) error bars of one model's scores from their intervals; None without any."""
    cis = [_ci(result, name, g) for g in groups]
    if all(ci is None for ci in cis):
        return None
    values = [result["scores"][name][g] for g in groups]
    below = [0.0 if ci is None or not math.isfinite(v) else v - ci[0] for v, ci in zip(values, cis)]
    above = [0.0 if ci is None or not math.isfinite(v) else ci[1] - v for v, ci in zip(values, cis)]
    return np.clip(scale * np.array([below, above]), 0, None)


def _bars(plt, result: dict, groups: list[str], scale: float, ylabel: str, line: tuple[float, str]):
    """Bars of each model's score per subset (times `scale`), intervals as error bars, a reference line."""
    scores = result["scores"]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(groups) * len(scores) ** 0.5), 4))
    width = 0.8 / len(scores)
    for i, n in enumerate(scores):
        values = [scale * scores[n][g] for g in groups]
        errors = _yerr(result, n, groups, scale)
        ax.bar(np.arange(len(groups)) + i * width, values, width, label=n, yerr=errors, capsize=3)
    ticks = np.arange(len(groups)) + 0.4 - width / 2
    ax.set_xticks(ticks, [g.split("/", 1)[1] for g in groups], rotation=30, ha="right")
    ax.axhline(line[0], color="grey", linestyle="--", linewidth=1, label=line[1])
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")
    return fig, ax


def _afc_chart(plt, result: dict):
    """Bars of each model's 2AFC score per subset, with the chance line (an undefined score has no bar)."""
    fig, ax = _bars(plt, result, _of_kind(result["groups"], "2afc"), 100, "2AFC score (%)", (50, "chance"))
    ax.set_ylim(40, 100)
    fig.tight_layout()
    return fig


def _mos_bars(plt, result: dict):
    """Bars of each model's SRCC per MOS subset (signed: a good metric scores positive), with the 0 line."""
    mos = _of_kind(result["groups"], "mos")
    fig, ax = _bars(plt, result, mos, 1, "SRCC (signed)", (0, "no correlation"))
    lowest = min([0.0, *(v for s in result["scores"].values() for g in mos if math.isfinite(v := s[g]))])
    ax.set_ylim(min(-0.1, lowest - 0.1), 1)
    fig.tight_layout()
    return fig


def _jnd_chart(plt, result: dict):
    """Each JND group's precision-recall curves, one per model (none where no pair was judged the same)."""
    scores, jnd = result["scores"], _of_kind(result["groups"], "jnd")
    fig, axes = plt.subplots(1, len(jnd), figsize=(4.5 * len(jnd), 4), squeeze=False)
    for ax, g in zip(axes[0], jnd):
        for n, per_group in result["items"].items():
            it = per_group[g]
            precision, recall = jnd_precision_recall(torch.from_numpy(it["d"]), torch.from_numpy(it["target"]))
            ci = _ci(result, n, g)
            score = with_ci(100 * scores[n][g], ci and (100 * ci[0], 100 * ci[1]), 1)
            ax.plot(recall.numpy(), precision.numpy(), label=f"{n} (mAP {score})")
        ax.set_title(g if all(math.isfinite(scores[n][g]) for n in scores) else f"{g}\n{NO_SAME}")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def _mos_scatter(plt, result: dict):
    """Per model (rows) and MOS group (columns): distance against opinion score, and the fitted logistic."""
    names, mos = list(result["scores"]), _of_kind(result["groups"], "mos")
    fig, axes = plt.subplots(len(names), len(mos), figsize=(4.2 * len(mos), 3.6 * len(names)), squeeze=False)
    for row, n in enumerate(names):
        for ax, g in zip(axes[row], mos):
            d, score, detail = result["items"][n][g]["d"], result["items"][n][g]["target"], _detail(result, n, g)
            better = detail.get("higher_is_better", True)
            ax.scatter(d, score, s=8, alpha=0.6, label="items")
            params = fit_logistic(signed(d, better), score) if detail.get("logistic_fit", True) else None
            if params is not None and np.ptp(d) > 0:
                grid = np.linspace(d.min(), d.max(), 200)
                ax.plot(grid, logistic4(signed(grid, better), *params), color="C3", label="4-parameter logistic")
                ax.legend(fontsize="x-small")
            title = f"SRCC {with_ci(result['scores'][n][g], _ci(result, n, g), 3)}"
            if "plcc" in detail and detail["plcc"] is not None:
                title += f", PLCC {detail['plcc']:.3f}" + (" (plain Pearson)" if params is None else "")
            ax.set_title(f"{g}: {n}\n{title}", fontsize="small")
            ax.set_xlabel("distance")
            ax.set_ylabel("MOS" if better else "DMOS")
    fig.tight_layout()
    return fig
