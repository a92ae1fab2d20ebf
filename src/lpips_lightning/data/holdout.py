"""A validation split held out of the training groups (`val_fraction`), by reference image, seeded.

Each training group gives its own held-out subset, named after it: ``2afc/train/mine`` ->
``2afc/val/mine_heldout`` (``mos/train/kadid`` -> ``mos/val/kadid_heldout``; a training group of
another split ``s`` -> ``<kind>/val/s_<subset>_heldout``), scored and logged as a subset of its own
(``val/2afc/mine_heldout``). Whole reference images go to one side: the group's references are
shuffled (seeded by `split_seed` and the group's name, so adding a group changes no other group's
split) and taken until their items reach ``round(val_fraction x N)`` (at least one item), so
the held-out share is that fraction to within one reference's items. A reference image found in
two training groups stays on the side the first group put it.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import numpy as np

from ..errors import ConfigError
from . import judgments

OPTION = "val_fraction"  # the CLI spells it --data.val_fraction (`cli.terms`)


def check_fraction(val_fraction: float) -> float:
    """`val_fraction` as a float in [0, 1), else one `ConfigError` naming the option."""
    try:
        value = float(val_fraction)
    except (TypeError, ValueError):
        raise ConfigError(f"{OPTION} must be a number in [0, 1), got {val_fraction!r}") from None
    if isinstance(val_fraction, bool) or not 0 <= value < 1:
        raise ConfigError(f"{OPTION} must be in [0, 1) (the share of training items held out), got {val_fraction!r}")
    return value


def heldout_name(train_group: str) -> str:
    """The held-out subset's group name: ``2afc/train/mine`` -> ``2afc/val/mine_heldout``."""
    kind, split, subset = train_group.split("/")
    return f"{kind}/val/{subset if split == 'train' else f'{split}_{subset}'}_heldout"


def heldout_names(where: str, train_groups: list[str], existing: Iterable[str]) -> dict[str, str]:
    """Each training group's held-out subset name -> the group; a name taken (in the file, or twice) is refused."""
    if not train_groups:
        raise ConfigError(f"{where}: {OPTION} holds out a share of the training groups, none chosen (data.train)")
    taken, names = set(existing), {}
    for g in train_groups:
        name = heldout_name(g)
        if name in taken or name in names:
            raise ConfigError(
                f"{where}: {OPTION} would name {g}'s held-out subset {name}, which "
                f"{'the file already holds' if name in taken else f'{names.get(name)} would take too'}: "
                "rename that group or set val_fraction 0"
            )
        names[name] = g
    return names


def split_by_reference(
    group: str,
    digests: list[bytes],
    val_fraction: float,
    seed: int,
    assigned: dict[bytes, bool],
    where: str,
) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows) of `group`'s items, whole references on one side.

    `digests`: each item's reference (`references.reference_digests`); `assigned`: the side of
    references placed by earlier groups (True: held out), updated. A split that leaves no
    training or no held-out item is one `ConfigError` naming the option.
    """
    refs = list(dict.fromkeys(digests))
    counts: dict[bytes, int] = {}
    for d in digests:
        counts[d] = counts.get(d, 0) + 1
    target = max(1, round(val_fraction * len(digests)))
    held = {r for r in refs if assigned.get(r) is True}
    count = sum(counts[r] for r in held)
    free = [r for r in refs if r not in assigned]
    rng = np.random.default_rng([seed, zlib.crc32(group.encode())])
    for k in rng.permutation(len(free)):
        if count >= target:
            break
        held.add(free[k])
        count += counts[free[k]]
    for r in refs:
        assigned.setdefault(r, r in held)
    is_held = np.array([d in held for d in digests], bool)
    items = f"{group} ({len(digests)} items, {len(refs)} reference image{'s' if len(refs) != 1 else ''})"
    if is_held.all():
        raise ConfigError(
            f"{where}: {OPTION} {val_fraction} leaves no training item of {items}: whole references are "
            "held out; lower it, or pack a validation group and set it to 0"
        )
    if not is_held.any():
        raise ConfigError(
            f"{where}: {OPTION} {val_fraction} leaves no validation item of {items}: its references "
            "were all placed on the training side by an earlier training group"
        )
    return np.flatnonzero(~is_held), np.flatnonzero(is_held)


def check_mos_heldout(group: str, scores: np.ndarray, val_fraction: float, where: str) -> None:
    """A held-out MOS subset must be scoreable: at least three scores, not all equal."""
    why = judgments.unscoreable(scores)
    if why is not None:
        raise ConfigError(
            f"{where}: {OPTION} {val_fraction} holds out too little of {group} to score ({heldout_name(group)}): "
            f"{why}; change it or split_seed"
        )
