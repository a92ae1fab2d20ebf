"""Validation and test scores per subset: one metric per judgments group, named for logging.

Each group is scored by its kind's metric (`model.metrics.subset_metric`: 2AFC score, JND mAP,
SRCC against MOS, exact under DDP); each is logged as ``<stage>/2afc/<name>``,
``<stage>/jnd_map/<name>`` or ``<stage>/srcc/<name>``, with the mean of each kind
(``<stage>/srcc/mean`` for MOS groups). A MOS group also logs ``<stage>/krcc/<name>`` and
``<stage>/plcc/<name>`` (after the 4-parameter logistic fit): one fit per group and validation,
on the distances validation gathered anyway.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data import judgments
from ..model.metrics import SCORE_NAMES, subset_metric


def subset_names(groups: list[str]) -> list[str]:
    """Short names for logging: the group's last part (``cnn``), or split_subset where those repeat."""
    last = [g.rsplit("/", 1)[-1] for g in groups]
    kinds = [judgments.kind_of(g) for g in groups]
    pairs = list(zip(kinds, last))
    return [n if pairs.count((k, n)) == 1 else "_".join(g.split("/")[1:]) for g, k, n in zip(groups, kinds, last)]


def mos_directions(datamodule, groups: list[str]) -> dict[str, bool]:
    """Each MOS group's `higher_is_better` (False for DMOS), read from the data module's file; {} without MOS groups."""
    mos = [g for g in groups if judgments.kind_of(g) == "mos"]
    if not mos:
        return {}
    if hasattr(datamodule, "higher_is_better"):  # held-out subsets (val_fraction) are not groups of the file
        return {g: datamodule.higher_is_better(g) for g in mos}
    with judgments.open_file(datamodule.file) as f:
        return {g: judgments.higher_is_better(f, g) for g in mos}


class SubsetScores(nn.Module):
    """The metrics of each stage's groups (``val``, ``test``), in loader order."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics = nn.ModuleDict({"val": nn.ModuleList(), "test": nn.ModuleList()})
        self.groups: dict[str, list[str]] = {"val": [], "test": []}

    def set_groups(self, stage: str, groups: list[str], higher_is_better: dict[str, bool] | None = None) -> None:
        """The stage's groups; `higher_is_better`: MOS groups' direction (False for DMOS; default True)."""
        better = higher_is_better or {}
        self.groups[stage] = list(groups)
        self.metrics[stage] = nn.ModuleList(
            subset_metric(judgments.kind_of(g), better.get(g, True), every_measure=True) for g in groups
        )

    def update(self, stage: str, index: int, distances: tuple[torch.Tensor, ...], target: torch.Tensor) -> None:
        """Add one batch of group `index`: (d0, d1) and judgments (2AFC); (d,) and "same" fractions (JND) or scores."""
        self.metrics[stage][index].update(*distances, target)

    def compute(self, stage: str) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """(each subset's score, each kind's mean) of the stage's groups that saw data; the metrics start again."""
        values: dict[str, torch.Tensor] = {}
        means: dict[str, list[float]] = {name: [] for name in SCORE_NAMES.values()}
        for group, name, metric in zip(self.groups[stage], subset_names(self.groups[stage]), self.metrics[stage]):
            if metric.update_count == 0:  # e.g. a sanity check that did not reach this loader
                continue
            key = SCORE_NAMES[judgments.kind_of(group)]
            found = metric.compute()  # a MOS group's: {"srcc", "krcc", "plcc"}
            for measure, value in (found if isinstance(found, dict) else {key: found}).items():
                values[f"{stage}/{measure}/{name}"] = value.float()
            metric.reset()
            means[key].append(float(values[f"{stage}/{key}/{name}"]))
        return values, {f"{stage}/{key}/mean": sum(v) / len(v) for key, v in means.items() if v}
