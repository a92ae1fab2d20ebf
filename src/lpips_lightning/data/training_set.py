"""The training items of the train groups and the validation subsets held out of them, as `items.Items`.

2AFC groups train as they are stored; MOS groups as triplets of two distorted images of one
reference (`mos_pairs`). With `val_fraction`, each group first gives up whole references to its
held-out subset (`holdout`); a MOS group's held-out part is served as MOS items (ref, dist, mos)
and scored by rank correlation, a 2AFC group's as triplets. Built once, at the data module's set-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h5py
import numpy as np

from ..errors import ConfigError
from . import judgments
from .holdout import check_mos_heldout, heldout_name, split_by_reference
from .items import Items, concat, stored
from .mos_pairs import mos_triplets
from .references import reference_digests, reference_ids


@dataclass
class TrainingSet:
    """The training items and the held-out subsets of the training groups.

    `train`: every training item (None: plain 2AFC groups, nothing held out: served as stored);
    `heldout`: held-out subset name -> its items; `source`: held-out subset name -> its training group.
    """

    train: Items | None
    heldout: dict[str, Items] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)


def needs_index(groups: list[str], val_fraction: float) -> bool:
    """Whether the training groups need an index (MOS groups, or a held-out split) rather than serving as stored."""
    return val_fraction > 0 or any(judgments.kind_of(g) == "mos" for g in groups)


def training_set(
    f: h5py.File, groups: list[str], val_fraction: float, seed: int, pairs_per_ref: int | None
) -> TrainingSet:
    """The training items of `groups` (validated already) and what `val_fraction` holds out of them."""
    if not needs_index(groups, val_fraction):
        return TrainingSet(None)
    where = f.filename
    parts: list[Items] = []
    result = TrainingSet(None)
    assigned: dict[bytes, bool] = {}  # a reference's side, across groups
    for gid, g in enumerate(groups):
        kind = judgments.kind_of(g)
        target = judgments.read(f, g, judgments.TARGET[kind])
        digests = reference_digests(f, g) if val_fraction > 0 or kind == "mos" else []
        rows, held = np.arange(len(target)), None
        if val_fraction > 0:
            rows, held = split_by_reference(g, digests, val_fraction, seed, assigned, where)
            result.source[heldout_name(g)] = g
        if kind == "2afc":
            whole = stored(g, judgments.image_keys(kind), "judge", target, gid)
            parts.append(whole.take(rows))
            if held is not None:
                result.heldout[heldout_name(g)] = whole.take(held)
            continue
        std = judgments.read(f, g, "std") if "std" in f[g] else None
        triplets = mos_triplets(
            g, rows, reference_ids(digests), target, std, judgments.higher_is_better(f, g), pairs_per_ref, seed, gid
        )
        if not len(triplets):
            raise ConfigError(
                f"{where}: group {g}: no two of its {'training ' if held is not None else ''}distorted images "
                "share a reference image, so it gives no 2AFC pairs to train on"
            )
        parts.append(triplets)
        if held is not None:
            check_mos_heldout(g, target[held], val_fraction, where)
            result.heldout[heldout_name(g)] = stored(g, judgments.image_keys(kind), "mos", target, gid).take(held)
    result.train = concat(parts)
    return result
