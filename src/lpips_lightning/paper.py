"""The paper's published numbers: Table 5 of Zhang et al. (CVPR 2018), shipped as package data.

``paper_table5.csv`` (beside this file) holds the 2AFC scores (%) on the six BAPPS validation
subsets for humans, low-level metrics, off-the-shelf networks and the nine LPIPS configurations,
as printed in the paper's appendix (arXiv:1801.03924v2), with its source in the file's header.
The values predate the v0.1 weights. The paper prints no JND mAP values: there are none here.

Example:
    >>> paper_2afc("lin_alex", "traditional"), paper_trad_cnn("lin_alex"), paper_mean("human")
    (73.9, 78.7, 73.9)
"""

from __future__ import annotations

import csv
import functools
from importlib import resources

# the BAPPS validation subsets in the paper's order, named as our groups name them (2afc/val/<subset>)
SUBSETS_2AFC = ("traditional", "cnn", "superres", "deblur", "color", "frameinterp")
_COLUMNS = {"color": "colorization"}  # our subset name -> the table's column, where they differ
SOURCE = (
    'Table 5 of Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", '
    "CVPR 2018 (arXiv:1801.03924v2, appendix); it predates the released v0.1 weights"
)
NO_JND = "the paper prints no JND mAP values (its Figure 5 plots them only)"


@functools.cache
def table5() -> dict[str, dict[str, float]]:
    """{row (``human``, ``l2``, ``alex``, ``lin_alex``, ...): {column: 2AFC %}}, as printed."""
    text = resources.files(__package__).joinpath("paper_table5.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(line for line in text.splitlines() if line and not line.startswith("#"))
    return {r["metric"]: {k: float(v) for k, v in r.items() if k not in ("group", "metric")} for r in rows}


def row_names() -> list[str]:
    """The table's rows in the paper's order."""
    return list(table5())


def paper_2afc(row: str, subset: str) -> float | None:
    """The paper's 2AFC (%) of `row` (``lin_alex``, ``human``, ``l2`` ...) on `subset`; None if not printed."""
    return table5().get(row, {}).get(_COLUMNS.get(subset, subset))


def paper_trad_cnn(row: str) -> float | None:
    """The paper's mean 2AFC (%) over the traditional and CNN-based distortions (its "Dist. All")."""
    return table5().get(row, {}).get("dist_all")


def paper_mean(row: str) -> float | None:
    """The paper's mean 2AFC (%) over the six subsets (its "All")."""
    return table5().get(row, {}).get("all")


def beside(scores: dict[str, dict[str, float]], groups: list[str]) -> str:
    """Our 2AFC scores ({model: {group: fraction}}) on BAPPS's validation subsets, above Table 5's rows.

    Columns: the subsets among `groups` (``2afc/val/<subset>``), in the paper's order; then the mean of
    six and the traditional+CNN mean where all their subsets are there (ours computed, the paper's as
    printed). Raises ValueError when `groups` hold none of the subsets.
    """
    subsets = [s for s in SUBSETS_2AFC if f"2afc/val/{s}" in groups]
    if not subsets:
        raise ValueError(
            "the groups scored hold none of BAPPS's validation subsets ("
            + ", ".join(f"2afc/val/{s}" for s in SUBSETS_2AFC)
            + "): pack BAPPS (lpips-lightning download / pack) and evaluate on it"
        )
    heads = [*subsets] + (["all"] if len(subsets) == 6 else [])
    heads += ["dist_all"] if subsets[:2] == ["traditional", "cnn"] else []
    width = max(14, *(len(n) + 2 for n in scores))

    def line(name: str, values: list[float | None]) -> str:
        return f"{name:<{width}}" + "".join(f"{'—' if v is None else f'{v:.1f}':>13}" for v in values)

    lines = [f"2AFC % beside the paper ({SOURCE}); the paper prints no JND mAP", line("", [])]
    lines[-1] += "".join(f"{h:>13}" for h in heads)
    for name, ours in scores.items():
        values = [100 * ours[f"2afc/val/{s}"] for s in subsets]
        extra = {"all": sum(values) / len(values), "dist_all": sum(values[:2]) / 2}
        lines.append(line(name, values + [extra[h] for h in heads[len(subsets) :]]))
    for row in row_names():
        printed = table5()[row]
        lines.append(line(f"paper {row}", [printed[_COLUMNS.get(h, h)] for h in heads]))
    return "\n".join(lines)
