"""The demo judgments: deterministic, shaped as a judgments file, with simulated disagreement."""

from __future__ import annotations

import h5py
import numpy as np

from lpips_lightning.data.demo import build_demo


def test_demo_is_deterministic_and_shaped(tmp_path):
    a = build_demo(tmp_path / "a.h5", seed=3, n_train=40, n_val=20, n_jnd=10)
    b = build_demo(tmp_path / "b.h5", seed=3, n_train=40, n_val=20, n_jnd=10)
    c = build_demo(tmp_path / "c.h5", seed=4, n_train=40, n_val=20, n_jnd=10)
    with h5py.File(a) as fa, h5py.File(b) as fb, h5py.File(c) as fc:
        for g in ("2afc/train/mixed", "2afc/val/mixed", "2afc/val/same_kind"):
            for k in ("ref", "p0", "p1", "judge"):
                np.testing.assert_array_equal(fa[g][k][()], fb[g][k][()])
            assert not np.array_equal(fa[g]["ref"][()], fc[g]["ref"][()])
        judge = fa["2afc/val/mixed/judge"][()]
        assert set(np.round(judge * 5).astype(int)) <= set(range(6)) and 0 < judge.mean() < 1
        assert len(set(judge.tolist())) > 2  # fractional, with disagreement
        assert fa["jnd/val/traditional/p0"].shape == (10, 3, 64, 64)
        assert fa["2afc/val/mixed"].attrs["simulated"]
