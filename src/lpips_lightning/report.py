"""What `evaluate` reports: the paper's table, and the files ``evaluate --out DIR`` writes.

`table`: 2AFC (%) per 2AFC group and JND mAP (%) per JND group, one column per model, then the
means. `write_outputs`: results.json (scores and means), results.csv (one row per group),
distances.csv (every item's distances and target) and two charts (2AFC per subset, JND
precision-recall curves), written as one set: all into a temporary folder, then moved in.

A score can be undefined: the JND mAP of a group in which no pair was judged the same (its
recall divides by zero). It is shown as ``n/a`` with the reason (`notes`), written as ``null``
in results.json (with the reason under ``notes``) and left empty in results.csv (the reason in
a ``note`` column); a mean over such a group is undefined too. (NaN distances never get this
far: `evaluate` refuses a model that gives them.)
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .data import judgments
from .errors import OutputError
from .model.metrics import SCORE_NAMES, jnd_precision_recall

OUTPUT_FILES = ("results.json", "results.csv", "distances.csv", "2afc_by_subset.png", "jnd_precision_recall.png")
KINDS = {"2afc": "2AFC %", "jnd": "JND mAP %", "mos": "SRCC"}
PERCENT = ("2afc", "jnd")  # shown as percentages; SRCC as it is (-1..1)
# why a score of each kind can be undefined (NaN distances are refused before scoring)
UNDEFINED = {
    "jnd": "no pair judged the same, so its JND mAP is undefined",
    "2afc": "no triplet scored",
    "mos": "the distances do not vary, so no rank correlation is defined",
}
MOS_NOTE = (
    "SRCC: Spearman's rank correlation of distance with opinion score, signed so that a good metric scores "
    "positive (negated against MOS, not against DMOS); results.json adds KRCC and PLCC (after a 4-parameter "
    "logistic fit)"
)
STAGE = re.compile(r"^\.evaluate\.tmp-(\d+)$")  # `write_outputs`' temporary folder inside --out


def of_kind(groups: list[str], kind: str) -> list[str]:
    """The groups of one kind (2afc or jnd), in order."""
    return [g for g in groups if judgments.kind_of(g) == kind]


def defined(value: float) -> bool:
    """Whether a score or mean is a number (not NaN or infinite)."""
    return math.isfinite(value)


def notes(scores: dict[str, dict[str, float]], groups: list[str]) -> dict[str, dict[str, str]]:
    """{model: {group: why its score is undefined}}, for the undefined scores only."""
    return {
        n: {g: UNDEFINED[judgments.kind_of(g)] for g in groups if not defined(s[g])}
        for n, s in scores.items()
        if any(not defined(s[g]) for g in groups)
    }


def table(scores: dict[str, dict[str, float]], groups: list[str]) -> str:
    """The paper's table: 2AFC (%) per 2AFC group, mAP (%) per JND group, then the means.

    An undefined score (and a mean over it) reads ``n/a[i]``; footnote ``[i]`` below says why.
    """
    names = list(scores)
    width = max(12, *(len(n) for n in names))
    undefined = [g for g in groups if any(not defined(scores[n][g]) for n in names)]
    marks = {g: f"[{i}]" for i, g in enumerate(undefined, 1)}

    def cell(value: float, why: list[str], kind: str) -> str:
        shown = f"{100 * value:.2f}" if kind in PERCENT else f"{value:.4f}"
        text = shown if defined(value) else "n/a" + "".join(marks[g] for g in why)
        return f"{text:>{width + 2}}"

    head = f"{'group':<28}" + "".join(f"{n:>{width + 2}}" for n in names)
    lines = [head, "-" * len(head)]
    for kind, label in KINDS.items():
        kind_groups = of_kind(groups, kind)
        for g in kind_groups:
            lines.append(f"{g:<28}" + "".join(cell(scores[n][g], [g], kind) for n in names))
        if kind_groups:
            mean_cells = []
            for n in names:
                why = [g for g in kind_groups if not defined(scores[n][g])]
                mean_cells.append(cell(sum(scores[n][g] for g in kind_groups) / len(kind_groups), why, kind))
            lines.append(f"{'mean ' + label:<28}" + "".join(mean_cells))
            lines.append("")
    for g, mark in marks.items():
        lines.append(f"{mark} {g}: {UNDEFINED[judgments.kind_of(g)]} (n/a), and so is a mean over it")
    if of_kind(groups, "mos"):
        lines.append(MOS_NOTE)
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
    """results.json, results.csv, per-item distances.csv and the charts in `out`, as one set.

    The whole set is written into a temporary folder inside `out` (``.evaluate.tmp-PID``) and
    only then moved in, file by file (renames on one file system: they need no space): a full
    disk or an interrupt leaves the earlier set as it was (or nothing), never half a set. Our
    outputs of an earlier evaluation that this one does not write (a chart of a kind no longer
    scored) are removed, so the folder holds one evaluation's results; other files in `out`
    stay. The command checks `out` (and --overwrite) before scoring; `overwrite` is not used.
    """
    writers: dict[str, Callable[[Path], None]] = {
        "results.json": lambda tmp: _results_json(result, tmp),
        "results.csv": lambda tmp: _results_csv(result, tmp),
        "distances.csv": lambda tmp: _distances_csv(result, tmp),
    }
    writers.update(_charts(result))
    _remove_stale_stages(out)
    stage = out / f".evaluate.tmp-{os.getpid()}"
    moving = False
    try:
        shutil.rmtree(stage, ignore_errors=True)  # left by a process of the same id that died
        stage.mkdir()
        for name, write in writers.items():
            write(stage / name)
        moving = True
        for name in writers:
            os.replace(stage / name, out / name)
        for name in OUTPUT_FILES:
            if name not in writers and os.path.lexists(out / name):
                os.unlink(out / name)
    except OSError as err:
        why = err.strerror or type(err).__name__
        if moving:
            raise OutputError(f"--out {out}: cannot move the new evaluation results in ({why})") from None
        raise OutputError(f"--out {out}: cannot write the evaluation results ({why}); nothing there changed") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return [out / name for name in writers]


def _remove_stale_stages(out: Path) -> None:
    """Remove temporary folders of `write_outputs` left in `out` by processes that no longer run (SIGKILL)."""
    with contextlib.suppress(OSError):
        for entry in out.iterdir():
            found = STAGE.match(entry.name)
            if found and entry.is_dir() and not entry.is_symlink() and not _running(int(found.group(1))):
                shutil.rmtree(entry, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's live process
        return True
    return True


def _number(value: float) -> float | None:
    """A score or mean as JSON can hold it: None (null) when undefined."""
    return float(value) if defined(value) else None


def _json_ready(value):
    """A details entry with every undefined number as null."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return _number(value) if isinstance(value, float) else value


def _results_json(result: dict, tmp: Path) -> None:
    scores, groups = result["scores"], result["groups"]
    avg = means(scores, groups)
    document = {
        "groups": groups,
        "scores": {n: {g: _number(v) for g, v in s.items()} for n, s in scores.items()},
        "means": {n: {k: _number(v) for k, v in m.items()} for n, m in avg.items()},
        "notes": {"scores": notes(scores, groups), "means": _mean_notes(scores, groups, avg)},  # why a value is null
    }
    if "details" in result:  # kind, n, measure, value; MOS correlations; ci95 when bootstrapped
        document["details"] = {n: {g: _json_ready(d) for g, d in per.items()} for n, per in result["details"].items()}
    tmp.write_text(json.dumps(document, indent=2, allow_nan=False))


def _mean_notes(scores: dict, groups: list[str], avg: dict) -> dict[str, dict[str, str]]:
    """{model: {kind: why its mean is undefined}}: the groups of that kind without a score."""
    found: dict[str, dict[str, str]] = {}
    for n, per_kind in avg.items():
        for kind, value in per_kind.items():
            if not defined(value):
                missing = [g for g in of_kind(groups, kind) if not defined(scores[n][g])]
                found.setdefault(n, {})[kind] = f"undefined: no score for {', '.join(missing)}"
    return found


def _results_csv(result: dict, tmp: Path) -> None:
    """One row per group, a column per model; an undefined score is empty, with a ``note`` column saying why."""
    scores = result["scores"]
    why = notes(scores, result["groups"])
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["group", "measure", *scores, *(["note"] if why else [])])
        for g in result["groups"]:
            measure = SCORE_NAMES[judgments.kind_of(g)]
            cells = ["" if not defined(scores[n][g]) else scores[n][g] for n in scores]
            note = "; ".join(sorted({why[n][g] for n in why if g in why[n]}))
            w.writerow([g, measure, *cells, *([note] if why else [])])


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
    """{file name: writer} for the 2AFC bar chart and the JND precision-recall curves (each drawn when written)."""
    writers: dict[str, Callable[[Path], None]] = {}
    groups = result["groups"]
    if of_kind(groups, "2afc"):
        writers["2afc_by_subset.png"] = lambda tmp: _save(_afc_chart, result, tmp)
    if of_kind(groups, "jnd"):
        writers["jnd_precision_recall.png"] = lambda tmp: _save(_jnd_chart, result, tmp)
    return writers


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


def _afc_chart(plt, result: dict):
    """Bars of each model's 2AFC score per subset, with the chance line (an undefined score has no bar)."""
    scores, afc = result["scores"], of_kind(result["groups"], "2afc")
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
    return fig


def _jnd_chart(plt, result: dict):
    """Each JND group's precision-recall curves, one per model (none where no pair was judged the same)."""
    scores, jnd = result["scores"], of_kind(result["groups"], "jnd")
    fig, axes = plt.subplots(1, len(jnd), figsize=(4.5 * len(jnd), 4), squeeze=False)
    for ax, g in zip(axes[0], jnd):
        for n, per_group in result["items"].items():
            it = per_group[g]
            precision, recall = jnd_precision_recall(torch.from_numpy(it["d"]), torch.from_numpy(it["target"]))
            score = f"{100 * scores[n][g]:.1f}" if defined(scores[n][g]) else "n/a"
            ax.plot(recall.numpy(), precision.numpy(), label=f"{n} (mAP {score})")
        ax.set_title(g if all(defined(scores[n][g]) for n in scores) else f"{g}\n{UNDEFINED['jnd']}")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig
