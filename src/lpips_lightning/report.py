"""What `evaluate` reports: the paper's table, and the files ``evaluate --out DIR`` writes.

`table`: 2AFC (%) per 2AFC group, JND mAP (%) per JND group and SRCC per MOS group (with its
KRCC and PLCC below it), one column per model, then the means of each kind; a bootstrapped
result shows each score's 95 % interval beside it (``0.7010 [0.680, 0.720]``). `write_outputs`:
results.json (scores, means, details), results.csv (one row per group and measure),
distances.csv (every item's distances and target) and the charts of the kinds present
(`charts`), written as one set: all into a temporary folder, then moved in.

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

from . import charts
from .data import judgments
from .errors import OutputError
from .model.metrics import SCORE_NAMES

# the files of an evaluation of 2AFC and JND groups; MOS groups add MOS_FILES (EVERY_FILE: all of them)
OUTPUT_FILES = ("results.json", "results.csv", "distances.csv", *charts.CHARTS.values())
MOS_FILES = tuple(charts.MOS_CHARTS.values())
EVERY_FILE = OUTPUT_FILES + MOS_FILES
KINDS = {"2afc": "2AFC %", "jnd": "JND mAP %", "mos": "SRCC"}
PERCENT = ("2afc", "jnd")  # shown as percentages; SRCC as it is (-1..1)
# why a score of each kind can be undefined (NaN distances are refused before scoring)
UNDEFINED = {
    "jnd": charts.NO_SAME,
    "2afc": "no triplet scored",
    "mos": "the distances do not vary, so no rank correlation is defined",
}
MOS_NOTE = (
    "SRCC, KRCC: Spearman's and Kendall's (tau-b) rank correlation of distance with opinion score;\n"
    "PLCC: Pearson's after a 4-parameter logistic fit (VQEG); all signed so that a good metric scores\n"
    "positive (the distance negated against MOS, not against DMOS)"
)
NO_FIT = (
    "PLCC*: plain Pearson: no rising 4-parameter logistic fits (the fit did not converge, "
    "or the distances rank against the scores)"
)
MOS_ROWS = ("krcc", "plcc")  # shown below each MOS group's SRCC (from its details)
STAGE = re.compile(r"^\.evaluate\.tmp-(\d+)$")  # `write_outputs`' temporary folder inside --out


def of_kind(groups: list[str], kind: str) -> list[str]:
    """The groups of one kind (2afc, jnd or mos), in order."""
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


def table(
    scores: dict[str, dict[str, float]],
    groups: list[str],
    details: dict[str, dict[str, dict]] | None = None,
    bootstrap: dict | None = None,
) -> str:
    """The paper's table: 2AFC (%) per 2AFC group, mAP (%) per JND group, SRCC per MOS group, then the means.

    With `details` (`evaluate`'s): each score's 95 % interval beside it, and a MOS group's KRCC and
    PLCC below its SRCC; `bootstrap` ({"resamples", "seed"}) names the intervals' resampling in a
    footnote. An undefined score (and a mean over it) reads ``n/a[i]``; footnote ``[i]`` below says why.
    """
    names, details = list(scores), details or {}
    undefined = [g for g in groups if any(not defined(scores[n][g]) for n in names)]
    marks = {g: f"[{i}]" for i, g in enumerate(undefined, 1)}
    unfitted: list[str] = []

    def cell(value: float, why: list[str], kind: str, ci=None) -> str:
        if not defined(value):
            return "n/a" + "".join(marks[g] for g in why)
        scale, digits = (100, 2) if kind in PERCENT else (1, 4)
        return charts.with_ci(scale * value, ci and (scale * ci[0], scale * ci[1]), digits)

    def measured(n: str, g: str, measure: str) -> str:
        detail = details.get(n, {}).get(g, {})
        value = detail.get(measure)
        if value is None or not defined(value):
            return "n/a"
        if measure == "plcc" and detail.get("logistic_fit") is False:
            unfitted.append(g)
            return f"{value:.4f}*"
        return f"{value:.4f}"

    rows: list[tuple[str, list[str]] | None] = []  # None: a blank line
    for kind, label in KINDS.items():
        kind_groups = of_kind(groups, kind)
        for g in kind_groups:
            rows.append((g, [cell(scores[n][g], [g], kind, charts.interval(details.get(n, {}).get(g))) for n in names]))
            for measure in MOS_ROWS if kind == "mos" else ():
                if any(measure in details.get(n, {}).get(g, {}) for n in names):
                    rows.append((f"  {measure.upper()}", [measured(n, g, measure) for n in names]))
        if kind_groups:
            mean_cells = []
            for n in names:
                why = [g for g in kind_groups if not defined(scores[n][g])]
                mean_cells.append(cell(sum(scores[n][g] for g in kind_groups) / len(kind_groups), why, kind))
            rows += [(f"mean {label}", mean_cells), None]
    width = max(12, *(len(n) for n in names), *(len(c) for row in rows if row for c in row[1]))
    head = f"{'group':<28}" + "".join(f"{n:>{width + 2}}" for n in names)
    lines = [head, "-" * len(head)]
    lines += ["" if row is None else f"{row[0]:<28}" + "".join(f"{c:>{width + 2}}" for c in row[1]) for row in rows]
    for g, mark in marks.items():
        lines.append(f"{mark} {g}: {UNDEFINED[judgments.kind_of(g)]} (n/a), and so is a mean over it")
    if of_kind(groups, "mos"):
        lines.append(MOS_NOTE)
    if unfitted:
        lines.append(NO_FIT)
    if bootstrap and any(charts.interval(d) for per in details.values() for d in per.values()):
        lines.append(
            f"[low, high]: 95 % bootstrap interval over {bootstrap['resamples']} resamples of each group's items "
            f"(seed {bootstrap['seed']});\nmeans are plain means of the subset scores"
        )
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
    writers.update(charts.writers(result))
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
        for name in EVERY_FILE:
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
    if "bootstrap" in result:  # how the intervals were drawn: {"resamples", "seed"}
        document["bootstrap"] = result["bootstrap"]
    if "provenance" in result:  # versions, command line, data and model files with their sha256
        document["provenance"] = result["provenance"]
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
    """One row per group and measure, a column per model; an undefined score is empty, a ``note`` column says why.

    A group's score comes first (measure 2afc, jnd_map or srcc); a MOS group's KRCC and PLCC (from
    the details) follow in rows of their own. A bootstrapped result adds the columns ``<model> ci95
    low`` and ``<model> ci95 high`` (of each group's score, in its unit: fractions for 2AFC and JND).
    """
    scores, details = result["scores"], result.get("details", {})
    why = notes(scores, result["groups"])
    rows = []
    for g in result["groups"]:
        measure = SCORE_NAMES[judgments.kind_of(g)]
        cells = ["" if not defined(scores[n][g]) else scores[n][g] for n in scores]
        cis = [charts.interval(details.get(n, {}).get(g)) for n in scores]
        rows.append([g, measure, cells, cis, "; ".join(sorted({why[n][g] for n in why if g in why[n]}))])
        for extra in MOS_ROWS if judgments.kind_of(g) == "mos" else ():
            found = [details.get(n, {}).get(g, {}) for n in scores]
            if any(extra in d for d in found):
                values = [d[extra] if defined(d.get(extra, math.nan)) else "" for d in found]
                unfit = [n for n, d in zip(scores, found) if extra == "plcc" and d.get("logistic_fit") is False]
                note = f"{', '.join(unfit)}: {NO_FIT.split(': ', 1)[1]}" if unfit else ""
                rows.append([g, extra, values, [None] * len(found), note])
    with_ci = any(ci is not None for row in rows for ci in row[3])
    with_note = any(row[4] for row in rows)
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        ci_head = [f"{n} ci95 {end}" for n in scores for end in ("low", "high")] if with_ci else []
        w.writerow(["group", "measure", *scores, *ci_head, *(["note"] if with_note else [])])
        for g, measure, cells, cis, note in rows:
            ci_cells = [v for ci in cis for v in (ci or ("", ""))] if with_ci else []
            w.writerow([g, measure, *cells, *ci_cells, *([note] if with_note else [])])


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
