"""How a metric is scored against people: 2AFC agreement, JND mean average precision, SRCC against MOS.

Plain functions (`two_afc`, `jnd_average_precision`), torchmetrics `Metric`s on top of them
(exact under DDP), and the one per-subset scorer that validation and ``evaluate`` share: a
subset of kind ``2afc`` is scored from (d0, d1) and the judgments, one of kind ``jnd`` from (d,)
and the "same" fractions, one of kind ``mos`` from (d,) and the opinion scores (Spearman's rank
correlation, signed as `correlations` says) (`subset_metric` accumulates batches, `score_subset`
scores them all).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ..errors import check_choice
from .correlations import MEASURES, correlations, srcc

KINDS = ("2afc", "jnd", "mos")
SCORE_NAMES = {
    "2afc": "2afc",
    "jnd": "jnd_map",
    "mos": "srcc",
}  # how a subset's score is named in logs: <stage>/<name>/<subset>


def two_afc(d0: torch.Tensor, d1: torch.Tensor, judge: torch.Tensor) -> torch.Tensor:
    """Per-triplet 2AFC agreement: (d0<d1)(1-judge) + (d1<d0)judge + (d0==d1)/2.

    `judge` is the fraction of observers who preferred p1 (found it closer to the reference).
    A NaN distance gives a NaN agreement: a broken model is not scored as merely wrong.
    """
    d0, d1, judge = d0.flatten(), d1.flatten(), judge.flatten().to(d0.dtype)
    agreement = (d0 < d1) * (1 - judge) + (d1 < d0) * judge + (d0 == d1) * 0.5
    return torch.where(d0.isnan() | d1.isnan(), torch.nan, agreement)


def jnd_precision_recall(d: torch.Tensor, same: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Precision and recall of "same" answers, pairs ranked by ascending distance, one point per distance.

    Pairs at the same distance form one block: the curve has a point only where the distance
    changes, so the result does not depend on the order in which tied items arrive (DDP
    gathers them in another order than one process reads them).
    """
    d, same = d.flatten().double(), same.flatten().double()
    order = torch.argsort(d, stable=True)
    d, s = d[order], same[order]
    tp, fp = torch.cumsum(s, 0), torch.cumsum(1 - s, 0)
    block_end = torch.ones_like(d, dtype=torch.bool)
    block_end[:-1] = d[1:] != d[:-1]
    tp, fp = tp[block_end], fp[block_end]
    return tp / (tp + fp), tp / s.sum()


def jnd_average_precision(d: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """VOC average precision of "same" answers ranked by ascending distance.

    Sort pairs by distance (flattened first: the original forgets, and reports 1.0), then
    TP = cumsum(same), FP = cumsum(1 - same), recall = TP / sum(same), precision = TP / (TP + FP),
    and the area under the precision envelope. Tied distances count as one block (see
    `jnd_precision_recall`); without ties this is exactly the original's computation.
    """
    if d.isnan().any():  # no ranking: NaN, as the 2AFC score gives
        return d.new_tensor(float("nan"), dtype=torch.float64)
    precision, recall = jnd_precision_recall(d, same)
    zero, one = recall.new_zeros(1), recall.new_ones(1)
    mrec = torch.cat([zero, recall, one])
    mpre = torch.cat([zero, precision, zero])
    mpre = torch.flip(torch.cummax(torch.flip(mpre, [0]), 0).values, [0])  # the precision envelope
    step = torch.nonzero(mrec[1:] != mrec[:-1]).flatten()
    return torch.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1])


class TwoAFCScore(Metric):
    """Mean 2AFC agreement with human judgments over all triplets seen (accumulated in float64).

    Example:
        >>> import torch
        >>> m = TwoAFCScore()
        >>> m.update(torch.tensor([0.1, 0.5, 0.3]), torch.tensor([0.2, 0.4, 0.3]), torch.tensor([0.0, 1.0, 0.6]))
        >>> round(m.compute().item(), 4)
        0.8333
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, d0: torch.Tensor, d1: torch.Tensor, judge: torch.Tensor) -> None:
        scores = two_afc(d0.detach().double(), d1.detach().double(), judge.detach())
        self.total += scores.sum()
        self.count += scores.numel()

    def compute(self) -> torch.Tensor:
        return self.total / self.count


class JNDAveragePrecision(Metric):
    """Mean average precision of JND "same" answers, pairs ranked by ascending distance.

    Example:
        >>> import torch
        >>> m = JNDAveragePrecision()
        >>> m.update(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([1.0, 0.0, 1.0, 0.0]))
        >>> round(m.compute().item(), 4)
        0.8333
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("distances", [], dist_reduce_fx="cat")
        self.add_state("same", [], dist_reduce_fx="cat")

    def update(self, d: torch.Tensor, same: torch.Tensor) -> None:
        self.distances.append(d.detach().flatten().double())
        self.same.append(same.detach().flatten().double())

    def compute(self) -> torch.Tensor:
        return jnd_average_precision(dim_zero_cat(self.distances), dim_zero_cat(self.same))


class MOSRankCorrelation(Metric):
    """Spearman's rank correlation of distances with opinion scores, signed so that a good metric scores positive.

    `higher_is_better`: the scores are MOS (True: a distance is negated) or DMOS (False).

    Example:
        >>> import torch
        >>> m = MOSRankCorrelation()
        >>> m.update(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([4.0, 3.5, 1.0, 2.0]))
        >>> round(m.compute().item(), 4)
        0.8
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, higher_is_better: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scores_higher_is_better = higher_is_better
        self.add_state("distances", [], dist_reduce_fx="cat")
        self.add_state("scores", [], dist_reduce_fx="cat")

    def update(self, d: torch.Tensor, scores: torch.Tensor) -> None:
        self.distances.append(d.detach().flatten().double())
        self.scores.append(scores.detach().flatten().double())

    def gathered(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(distances, scores) of every item seen, as numpy; None when there are none or a distance is NaN."""
        d, s = dim_zero_cat(self.distances).cpu().numpy(), dim_zero_cat(self.scores).cpu().numpy()
        return None if not len(d) or (d != d).any() else (d, s)  # NaN distances rank nothing

    def compute(self) -> torch.Tensor:
        items = self.gathered()
        value = float("nan") if items is None else srcc(*items, self.scores_higher_is_better)
        return torch.tensor(value, dtype=torch.float64)


class MOSCorrelations(MOSRankCorrelation):
    """SRCC, KRCC and PLCC (after the 4-parameter logistic fit) of distances with opinion scores, signed.

    ``compute()`` gives ``{"srcc", "krcc", "plcc"}`` (float64 tensors; NaN where a distance is NaN).

    Example:
        >>> import torch
        >>> m = MOSCorrelations()
        >>> m.update(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([4.0, 3.5, 1.0, 2.0]))
        >>> {k: round(v.item(), 4) for k, v in m.compute().items() if k != "plcc"}
        {'srcc': 0.8, 'krcc': 0.6667}
    """

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        items = self.gathered()
        found = (
            dict.fromkeys(MEASURES, float("nan"))
            if items is None
            else correlations(*items, self.scores_higher_is_better)
        )
        return {m: torch.tensor(float(found[m]), dtype=torch.float64) for m in MEASURES}


def subset_metric(
    kind: str, higher_is_better: bool = True, every_measure: bool = False
) -> TwoAFCScore | JNDAveragePrecision | MOSRankCorrelation:
    """The metric of one subset of `kind`: ``update(*distances, target)``, then ``compute()``.

    ``2afc``: distances (d0, d1), target the fraction of observers who preferred p1; ``jnd``:
    distances (d,), target the fraction who answered "same"; ``mos``: distances (d,) of (ref,
    dist), target the opinion scores, `higher_is_better` False for DMOS; its ``compute()`` gives
    the SRCC, or with `every_measure` {"srcc", "krcc", "plcc"} (`MOSCorrelations`).
    """
    check_choice("subset kind", kind, KINDS)
    if kind == "mos":
        return MOSCorrelations(higher_is_better) if every_measure else MOSRankCorrelation(higher_is_better)
    return TwoAFCScore() if kind == "2afc" else JNDAveragePrecision()


def score_subset(
    kind: str, distances: Sequence[torch.Tensor], target: torch.Tensor, higher_is_better: bool = True
) -> float:
    """The score of one subset from all of its distances: `subset_metric` fed them in one update.

    Example:
        >>> import torch
        >>> score_subset("2afc", (torch.tensor([0.1, 0.5]), torch.tensor([0.2, 0.4])), torch.tensor([0.0, 1.0]))
        1.0
        >>> score_subset("jnd", (torch.tensor([0.1, 0.2, 0.3, 0.4]),), torch.tensor([1.0, 0.0, 1.0, 0.0]))
        0.8333333333333333
    """
    metric = subset_metric(kind, higher_is_better)
    metric.update(*distances, target)
    return float(metric.compute())
