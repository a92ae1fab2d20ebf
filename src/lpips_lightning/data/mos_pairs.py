"""A MOS group as 2AFC training triplets: two distorted images of one reference, and which one observers prefer.

For distorted images ``i`` and ``j`` of the same reference image (identical ``ref`` bytes, see
`references`), the triplet is ``(ref, p0 = dist_i, p1 = dist_j)`` and its judgment, as every 2AFC
judgment here, is the share of observers who find ``p1`` closer to the reference, i.e. of better
quality:

* with ``std`` (a Gaussian observer model: an observer's score of an image is drawn from
  N(mos, std²), independently per image): ``judge = Φ((m_j - m_i) / √(s_i² + s_j²))``, the
  probability that an observer scores ``p1`` above ``p0`` (where both stds are 0, the sign rule);
* without ``std``: the sign of the difference, ``1`` if ``m_j > m_i``, ``0`` if below, ``0.5`` for a tie.

For DMOS (``higher_is_better`` False: a higher score is worse) the difference is ``m_i - m_j``.
Each pair's two images are put in a random (seeded) order, so that ``p1`` is not always the item
stored later (data sets store a distortion's levels in order, which a ranking head would learn).
Pairs grow as n² per reference: at most `pairs_per_ref` of them (a seeded uniform sample of all
n(n-1)/2 where there are more); ``None`` keeps every pair. Built once, as rows into the stored
arrays (`items.Items`): no image is copied or stored twice.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from .items import Items

DEFAULT_PAIRS_PER_REF = 64


def pair_judgments(
    m0: np.ndarray,
    m1: np.ndarray,
    s0: np.ndarray | None = None,
    s1: np.ndarray | None = None,
    higher_is_better: bool = True,
) -> np.ndarray:
    """float32: the share of observers preferring the second image of each pair (see the module's rule)."""
    m0, m1 = np.asarray(m0, np.float64), np.asarray(m1, np.float64)
    diff = m1 - m0 if higher_is_better else m0 - m1
    judge = 0.5 * (1 + np.sign(diff))  # 1, 0.5 (a tie) or 0
    if s0 is not None and s1 is not None:
        scale = np.hypot(np.asarray(s0, np.float64), np.asarray(s1, np.float64))
        spread = scale > 0
        z = np.divide(diff, scale, out=np.zeros_like(diff), where=spread)
        judge = np.where(spread, torch.special.ndtr(torch.from_numpy(z)).numpy(), judge)
    return judge.astype(np.float32)


def pair_indices(n: int, cap: int | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) with a < b: every pair of `n` items in order, or a uniform sample of `cap` of them, in order."""
    total = n * (n - 1) // 2
    if cap is None or total <= cap:
        k = np.arange(total, dtype=np.int64)
    else:
        k = np.sort(rng.choice(total, size=cap, replace=False)).astype(np.int64)
    # pair number k -> (a, b): row a of the upper triangle starts at a*n - a(a+1)/2
    a_all = np.arange(max(n - 1, 0), dtype=np.int64)
    starts = a_all * n - a_all * (a_all + 1) // 2
    a = np.searchsorted(starts, k, side="right") - 1
    return a, k - starts[a] + a + 1


def mos_triplets(
    group: str,
    rows: np.ndarray,
    ref_ids: np.ndarray,
    mos: np.ndarray,
    std: np.ndarray | None,
    higher_is_better: bool,
    pairs_per_ref: int | None,
    seed: int,
    group_id: int,
) -> Items:
    """2AFC triplets of the MOS items `rows` of `group` (ref ids, scores and stds of every item of the group).

    `seed` and the group's name seed the sample of pairs and their order.
    """
    rows = np.asarray(rows, np.int64)
    ids = ref_ids[rows]
    order = np.argsort(ids, kind="stable")
    bounds = np.flatnonzero(np.diff(ids[order])) + 1
    rng = np.random.default_rng([seed, zlib.crc32(group.encode())])  # a group's pairs depend on it alone
    first, second = [], []
    for members in np.split(rows[order], bounds):  # the items of one reference, in stored order
        a, b = pair_indices(len(members), pairs_per_ref, rng)
        first.append(members[a])
        second.append(members[b])
    i = np.concatenate(first) if first else np.empty(0, np.int64)
    j = np.concatenate(second) if second else np.empty(0, np.int64)
    swap = rng.random(len(i)) < 0.5  # a random order within each pair
    i, j = np.where(swap, j, i), np.where(swap, i, j)
    judge = pair_judgments(
        mos[i], mos[j], None if std is None else std[i], None if std is None else std[j], higher_is_better
    )
    n = len(i)
    return Items(
        ("ref", "p0", "p1"),
        "judge",
        ((group, "ref"), (group, "dist")),
        {"ref": np.zeros(n, np.int64), "p0": np.ones(n, np.int64), "p1": np.ones(n, np.int64)},
        {"ref": i, "p0": i, "p1": j},
        judge,
        np.full(n, group_id, np.int64),
    )
