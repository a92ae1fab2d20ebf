"""val_fraction: a validation split held out of the training groups by reference image, seeded, its own subset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_group, write_judgments
from test_mos_training import PER_REF, all_items, mos_group

from lpips_lightning.data.datamodule import JudgmentsDataModule
from lpips_lightning.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def shared_refs(refs: int = 10, per_ref: int = 2, size: int = 16, seed: int = 0) -> dict:
    """A 2AFC group of `refs` reference images, each in `per_ref` triplets (stored as a CSV packs them: repeated)."""
    arrays = random_group("2afc", n=refs * per_ref, size=size, seed=seed)
    arrays["ref"] = arrays["ref"][np.arange(refs * per_ref) % refs]
    return arrays


def triplets(batch: dict) -> list[bytes]:
    return [b"".join(batch[k][i].numpy().tobytes() for k in ("ref", "p0", "p1")) for i in range(len(batch["judge"]))]


def served(dm: JudgmentsDataModule, stage: str, i: int = 0) -> dict:
    ds = dm.datasets[stage][i]
    return ds.__getitems__(list(range(len(ds))))


def test_a_2afc_group_is_split_by_reference_into_training_and_its_own_val_subset(tmp_path):
    arrays = shared_refs()
    path = write_judgments(tmp_path / "j.h5", {"2afc/train/mine": arrays})
    dm = JudgmentsDataModule(str(path), train=["2afc/train/mine"], val_fraction=0.25, split_seed=0, batch_size=3)
    dm.setup("fit")
    assert dm.groups("val") == ["2afc/val/mine_heldout"]
    assert dm.image_sizes()["2afc/val/mine_heldout"] == (16, 16)
    train, val = served(dm, "train"), served(dm, "val")
    assert len(val["judge"]) == 6  # round(0.25 x 20) = 5, reached with whole references of two triplets each
    assert sorted(triplets(train) + triplets(val)) == sorted(
        triplets({k: torch.from_numpy(v) for k, v in arrays.items()})
    )
    train_refs = {r.numpy().tobytes() for r in train["ref"]}
    assert not train_refs & {r.numpy().tobytes() for r in val["ref"]}  # no reference on both sides
    assert (val["group"] == 0).all() and len(dm.val_dataloader()) == 1
    # seeded: the same seed the same split, another seed another one
    again = JudgmentsDataModule(str(path), train=["2afc/train/mine"], val_fraction=0.25, split_seed=0)
    again.setup("fit")
    assert triplets(served(again, "val")) == triplets(val)
    other = JudgmentsDataModule(str(path), train=["2afc/train/mine"], val_fraction=0.25, split_seed=5)
    other.setup("fit")
    assert triplets(served(other, "val")) != triplets(val)


def test_a_mos_group_holds_out_mos_items_and_pairs_only_the_rest(tmp_path):
    arrays = mos_group(refs=6)
    path = write_judgments(tmp_path / "j.h5", {"mos/train/k": arrays, "2afc/val/v": random_group("2afc", size=16)})
    dm = JudgmentsDataModule(str(path), train=["mos/train/k"], val_fraction=0.3, in_memory=True)
    dm.setup("fit")
    assert dm.groups("val") == ["2afc/val/v", "mos/val/k_heldout"]  # val groups and the held-out subset: both
    val = served(dm, "val", 1)
    assert {"ref", "dist", "mos"} <= set(val) and "judge" not in val
    assert len(val["mos"]) == 2 * PER_REF  # 0.3 x 24 items = 7, reached with two references of four
    assert dm.higher_is_better("mos/val/k_heldout") is True
    held = {d.numpy().tobytes() for d in val["dist"]}
    train = all_items(dm)
    assert len(train["judge"]) == 4 * 6  # the four training references' pairs
    assert not held & {x.numpy().tobytes() for k in ("p0", "p1") for x in train[k]}
    pool = dm.datasets["train"][0].images["p0"]  # in memory: the training rows only, the held-out ones left out
    assert not held & {x.numpy().tobytes() for x in pool} and len(pool) < 2 * len(arrays["mos"])
    assert not {r.numpy().tobytes() for r in val["ref"]} & {r.numpy().tobytes() for r in train["ref"]}


def test_held_out_items_serve_index_only_and_lazily_as_in_memory(tmp_path):
    path = write_judgments(tmp_path / "j.h5", {"2afc/train/mine": shared_refs(), "mos/train/k": mos_group()})
    seen = {}
    for memory in (False, True):
        dm = JudgmentsDataModule(str(path), train=["2afc/train/*", "mos/train/*"], val_fraction=0.2, in_memory=memory)
        dm.setup("fit")
        seen[memory] = [served(dm, "train"), *(served(dm, "val", i) for i in range(2))]
    for a, b in zip(*seen.values()):
        for k in a:
            torch.testing.assert_close(a[k], b[k])
    dm = JudgmentsDataModule(
        str(path), train=["2afc/train/*"], val_fraction=0.2, index_only=True, batch_size=2, steps_per_batch=3
    )
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert set(batches[0]) == {"judge", "group", "index"} and sum(len(b["index"]) for b in batches) == 16


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5, "half"])
def test_a_fraction_outside_zero_one_is_refused_naming_the_option(tmp_path, value):
    path = write_judgments(tmp_path / "j.h5", {"2afc/train/mine": shared_refs()})
    with pytest.raises(ConfigError, match=r"^val_fraction must be .*in \[0, 1\)"):
        JudgmentsDataModule(str(path), val_fraction=value)


def test_splits_that_leave_a_side_empty_or_clash_are_refused(tmp_path):
    one_ref = shared_refs(refs=1, per_ref=4)
    path = write_judgments(tmp_path / "j.h5", {"2afc/train/one": one_ref, "2afc/train/mine": shared_refs()})
    with pytest.raises(ConfigError, match=r"val_fraction 0.1 leaves no training item of 2afc/train/one"):
        JudgmentsDataModule(str(path), train=["2afc/train/one"], val_fraction=0.1)
    clash = write_judgments(
        tmp_path / "c.h5", {"2afc/train/mine": shared_refs(), "2afc/val/mine_heldout": random_group("2afc", size=16)}
    )
    with pytest.raises(ConfigError, match="2afc/val/mine_heldout, which the file already holds"):
        JudgmentsDataModule(str(clash), train=["2afc/train/mine"], val_fraction=0.1)
    pairs = {k: v[:12] if isinstance(v, np.ndarray) else v for k, v in mos_group(refs=6).items()}  # 2 per reference
    few = write_judgments(tmp_path / "m.h5", {"mos/train/k": pairs})
    with pytest.raises(
        ConfigError,
        match=r"0.05 holds out too little of mos/t.*: 2 score\(s\); a rank correlation needs at least 3; change",
    ):
        JudgmentsDataModule(str(few), train=["mos/train/k"], val_fraction=0.05)
    small = mos_group(refs=3)
    small["ref"][:] = small["ref"][0]  # one reference: held out whole, nothing left to train on
    one = write_judgments(tmp_path / "o.h5", {"mos/train/k": small})
    with pytest.raises(ConfigError, match="leaves no training item of mos/train/k"):
        JudgmentsDataModule(str(one), train=["mos/train/k"], val_fraction=0.05)
