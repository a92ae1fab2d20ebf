"""MOS groups in the judgments file: written, validated, served; files without them open as before."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from conftest import random_group, write_judgments

from lpips_lightning.data import group_checks, judgments
from lpips_lightning.data.dataset import JudgmentsDataset
from lpips_lightning.errors import JudgmentsError


def _mos(**change) -> dict[str, np.ndarray]:
    arrays = random_group("mos", n=5, size=16)
    arrays["std"] = np.full(5, 0.5, np.float32)
    arrays.update(change)
    return arrays


def test_a_mos_group_is_written_validated_and_served(tmp_path):
    path = write_judgments(
        tmp_path / "j.h5", {"mos/test/kadid": _mos(higher_is_better=False), "2afc/val/x": random_group("2afc")}
    )
    with judgments.open_file(path) as f:
        assert judgments.groups(f) == {"2afc/val/x": "2afc", "mos/test/kadid": "mos"}
        assert group_checks.resolve(f, ["mos/*/*"]) == ["mos/test/kadid"]
        assert judgments.higher_is_better(f, "mos/test/kadid") is False
        expected = f["mos/test/kadid/mos"][:]
    batch = JudgmentsDataset(str(path), ["mos/test/kadid"]).__getitems__([0, 4])
    assert set(batch) >= {"ref", "dist", "mos"}
    assert batch["dist"].dtype == torch.uint8
    assert np.allclose(batch["mos"].numpy(), expected[[0, 4]])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mos": np.array([1, np.nan, 2, 3, 4], np.float32)}, "mos[1] = nan is not a finite number"),
        ({"mos": np.full(5, 3.0, np.float32)}, "every mos is 3.0"),
        ({"std": np.array([0.1, -1, 0, 0, 0], np.float32)}, "std[1] = -1.0 is not a finite number >= 0"),
    ],
)
def test_bad_scores_are_refused_in_one_line(tmp_path, change, message):
    path = write_judgments(tmp_path / "j.h5", {"mos/test/x": _mos(**change)})
    with (
        judgments.open_file(path) as f,
        pytest.raises(JudgmentsError, match=message.replace("[", r"\[").replace("]", r"\]")),
    ):
        group_checks.validate_group(f, "mos/test/x")


def test_too_few_scores_and_a_missing_direction_are_refused(tmp_path):
    arrays = random_group("mos", n=2, size=16)
    path = write_judgments(tmp_path / "j.h5", {"mos/test/few": arrays, "mos/test/dir": _mos()})
    with h5py.File(path, "a") as f:
        del f["mos/test/dir"].attrs["higher_is_better"]
    with judgments.open_file(path) as f:
        with pytest.raises(JudgmentsError, match="2 score\\(s\\); a rank correlation needs at least 3"):
            group_checks.validate_group(f, "mos/test/few")
        with pytest.raises(
            JudgmentsError, match="higher_is_better must be True \\(MOS\\) or False \\(DMOS\\), found none"
        ):
            group_checks.validate_group(f, "mos/test/dir")


def test_std_belongs_to_mos_groups_only(tmp_path):
    with judgments.write(tmp_path / "j.h5") as w, pytest.raises(JudgmentsError, match="std belongs to MOS groups only"):
        w.create_group("2afc/val/x", 3, (8, 8), std=True)
