"""Items as rows of stored arrays: the index that MOS pairs and held-out splits build, never a copy of an image.

Item ``j``'s image ``key`` is row ``row[key][j]`` of the stored array ``sources[source[key][j]]``
(a ``(group, dataset)`` pair of the judgments file). A group served as it is has one source per
image key and rows ``0..N-1``; a 2AFC triplet made of two MOS items has its ``ref`` from the MOS
group's ``ref`` array and ``p0``, ``p1`` from its ``dist`` array (two rows of one source).
`JudgmentsDataset` reads (or loads once, in memory) each source and gathers items by these rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Items:
    """The items of one dataset: images as (source, row) per key, their targets and group ids.

    keys: the image keys batches carry (``ref, p0, p1`` or ``ref, dist``); target_key: ``judge`` or
    ``mos``; sources: the stored ``(group, dataset)`` arrays rows point into; source, row: per key,
    int (N,) each; targets: float32 (N,); group: int64 (N,), the index of each item's group in the
    data module's list of the stage's groups.
    """

    keys: tuple[str, ...]
    target_key: str
    sources: tuple[tuple[str, str], ...]
    source: dict[str, np.ndarray]
    row: dict[str, np.ndarray]
    targets: np.ndarray
    group: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def groups(self) -> list[str]:
        """The stored groups the items' images come from, in order, each once."""
        return list(dict.fromkeys(g for g, _ in self.sources))

    def take(self, index: Sequence[int] | np.ndarray) -> Items:
        """The items `index`, in that order."""
        idx = np.asarray(index, dtype=np.int64)
        return Items(
            self.keys,
            self.target_key,
            self.sources,
            {k: v[idx] for k, v in self.source.items()},
            {k: v[idx] for k, v in self.row.items()},
            self.targets[idx],
            self.group[idx],
        )


def stored(group: str, keys: Sequence[str], target_key: str, targets: np.ndarray, group_id: int) -> Items:
    """Every item of a stored group as it is: key ``k`` of item ``j`` is row ``j`` of ``group/k``."""
    n = len(targets)
    rows = np.arange(n, dtype=np.int64)
    return Items(
        tuple(keys),
        target_key,
        tuple((group, k) for k in keys),
        {k: np.full(n, i, np.int64) for i, k in enumerate(keys)},
        {k: rows for k in keys},
        np.asarray(targets, np.float32),
        np.full(n, group_id, np.int64),
    )


def concat(parts: Sequence[Items]) -> Items:
    """The items of `parts` one after another (same keys and target), their sources merged, each once."""
    first = parts[0]
    if any(p.keys != first.keys or p.target_key != first.target_key for p in parts):
        raise ValueError("items of different kinds cannot be concatenated")
    sources = list(dict.fromkeys(s for p in parts for s in p.sources))
    where = {s: i for i, s in enumerate(sources)}
    source = {
        k: np.concatenate([np.array([where[s] for s in p.sources], np.int64)[p.source[k]] for p in parts])
        for k in first.keys
    }
    return Items(
        first.keys,
        first.target_key,
        tuple(sources),
        source,
        {k: np.concatenate([p.row[k] for p in parts]) for k in first.keys},
        np.concatenate([p.targets for p in parts]).astype(np.float32),
        np.concatenate([p.group for p in parts]),
    )
