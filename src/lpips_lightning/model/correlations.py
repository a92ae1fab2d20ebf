"""How a metric is scored against opinion scores: rank and linear correlations, signed so higher is better.

A distance should fall as quality rises: against MOS (higher is better) the distance is negated
before correlating, against DMOS (higher is worse) it is not, so a good metric scores positive
either way. SRCC and KRCC are scipy's `spearmanr` and `kendalltau` (tau-b); PLCC is Pearson's
correlation after the 4-parameter logistic mapping usual in IQA (VQEG):
``f(x) = (b1 - b2) / (1 + exp(-(x - b3) / b4)) + b2``, fitted by least squares with the curve
held rising (b1 >= b2, b4 > 0), so PLCC keeps the sign of the relation as SRCC does (a free fit
would turn a metric that ranks backwards into a positive PLCC); where the fit does not
converge, plain Pearson on the signed distances, and the result says so.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit
from scipy.special import expit
from scipy.stats import ConstantInputWarning, kendalltau, pearsonr, spearmanr

MEASURES = ("srcc", "krcc", "plcc")


def signed(d: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Distances as quality predictions: negated against MOS, as they are against DMOS."""
    d = np.asarray(d, dtype=np.float64)
    return -d if higher_is_better else d


def srcc(d: np.ndarray, mos: np.ndarray, higher_is_better: bool = True) -> float:
    """Spearman's rank correlation of the signed distances with the scores."""
    return float(spearmanr(signed(d, higher_is_better), mos).statistic)


def krcc(d: np.ndarray, mos: np.ndarray, higher_is_better: bool = True) -> float:
    """Kendall's tau-b of the signed distances with the scores."""
    return float(kendalltau(signed(d, higher_is_better), mos).statistic)


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """The 4-parameter logistic of IQA: from b2 (low x) to b1 (high x), centred at b3, scale b4 > 0."""
    return (b1 - b2) * expit((x - b3) / b4) + b2


def _rising(x: np.ndarray, low: float, span: float, centre: float, scale: float) -> np.ndarray:
    return logistic4(x, low + span, low, centre, scale)


def fit_logistic(x: np.ndarray, mos: np.ndarray) -> np.ndarray | None:
    """(b1, b2, b3, b4) of the rising logistic mapping predictions `x` to `mos`, or None when the fit fails."""
    x, mos = np.asarray(x, np.float64), np.asarray(mos, np.float64)
    scale = float(np.std(x)) or 1.0
    start = [mos.min(), float(np.ptp(mos)), float(np.median(x)), scale]
    bounds = ([-np.inf, 0.0, -np.inf, scale * 1e-6], [np.inf, np.inf, np.inf, np.inf])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            (low, span, centre, width), _ = curve_fit(_rising, x, mos, p0=start, bounds=bounds, maxfev=10000)
    except (RuntimeError, ValueError):
        return None
    params = np.array([low + span, low, centre, width])
    return params if np.all(np.isfinite(params)) else None


def plcc(d: np.ndarray, mos: np.ndarray, higher_is_better: bool = True) -> tuple[float, bool]:
    """(Pearson's correlation after the logistic fit, whether the fit converged; else plain Pearson)."""
    x, mos = signed(d, higher_is_better), np.asarray(mos, np.float64)
    params = fit_logistic(x, mos)
    mapped = logistic4(x, *params) if params is not None else x
    if np.ptp(mapped) <= 1e-9 * np.ptp(mos):  # a fit flat over the data: no linear relation is left to measure
        mapped, params = x, None
    return float(pearsonr(mapped, mos).statistic), params is not None


def correlations(d: np.ndarray, mos: np.ndarray, higher_is_better: bool = True) -> dict[str, float | bool]:
    """{"srcc", "krcc", "plcc", "logistic_fit"} of one group's distances against its scores."""
    value, fitted = plcc(d, mos, higher_is_better)
    return {
        "srcc": srcc(d, mos, higher_is_better),
        "krcc": krcc(d, mos, higher_is_better),
        "plcc": value,
        "logistic_fit": fitted,
    }


def bootstrap_ci(score, arrays: dict[str, np.ndarray], resamples: int, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of `score(**arrays)` over `resamples` resamples of the items (with replacement).

    `arrays` hold one value per item (all of one length); the generator is seeded by `seed`, so
    the interval is reproducible. Resamples whose score is undefined (NaN: a resample of one
    repeated item has no rank correlation) are left out, without scipy's warning about them.
    """
    n = len(next(iter(arrays.values())))
    rng = np.random.default_rng(seed)
    values = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        for _ in range(resamples):
            pick = rng.integers(0, n, n)
            values.append(score(**{k: v[pick] for k, v in arrays.items()}))
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)
