"""`evaluate` scores any model exactly: against numpy references, and the same through the prepacked backbone."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from conftest import numpy_2afc, numpy_voc_ap

from lpips_lightning import evaluate as ev
from lpips_lightning.backbones import fast as fast_copy
from lpips_lightning.cli.main import main
from lpips_lightning.model.lpips import LPIPS

pytestmark = pytest.mark.usefixtures("one_thread")


def test_evaluate_matches_numpy_references(bapps_h5, trained, tmp_path, capsys, imagenet_cache):
    ckpt = trained["lin"][".ckpt"]
    out = tmp_path / "ev"
    code = main(
        [
            "evaluate",
            "l2",
            "ssim",
            "official:alex",
            str(ckpt),
            "--data",
            str(bapps_h5),
            "--out",
            str(out),
            "--quiet",
            "--batch-size",
            "5",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    for row in ("2afc/val/cnn", "jnd/val/cnn", "mean 2AFC %", "mean JND mAP %", "official:alex", "ssim", "lin.ckpt"):
        assert row in printed
    result = json.loads((out / "results.json").read_text())["scores"]
    with h5py.File(bapps_h5) as f:
        g = f["2afc/val/cnn"]
        ref, p0, p1 = (g[k][()].astype(np.float64) / 127.5 - 1 for k in ("ref", "p0", "p1"))
        d0, d1 = ((ref - p0) ** 2).mean(axis=(1, 2, 3)), ((ref - p1) ** 2).mean(axis=(1, 2, 3))
        expected_2afc = numpy_2afc(d0, d1, g["judge"][()].astype(np.float64))
        j = f["jnd/val/cnn"]
        d = ((j["p0"][()].astype(np.float64) - j["p1"][()]) / 127.5) ** 2
        expected_map = numpy_voc_ap(d.mean(axis=(1, 2, 3)), j["same"][()].astype(np.float64))
    assert result["l2"]["2afc/val/cnn"] == pytest.approx(expected_2afc, abs=1e-9)
    assert result["l2"]["jnd/val/cnn"] == pytest.approx(expected_map, abs=1e-9)
    for name in ("distances.csv", "2afc_by_subset.png", "jnd_precision_recall.png", "results.csv"):
        assert (out / name).stat().st_size > 200, name
    lines = (out / "distances.csv").read_text().splitlines()
    assert len(lines) == 1 + 4 * (12 + 12)  # 4 models x (val, jnd) items: training groups are not scored


@pytest.mark.parametrize("backbone", ["alex", "squeeze"])
def test_evaluate_on_the_cpu_scores_through_the_prepacked_backbone_the_same(bapps_h5, monkeypatch, backbone):
    torch.manual_seed(0)
    model = LPIPS(backbone, pretrained=False, heads=None).eval()  # random heads: nothing in the weights
    with torch.no_grad():
        for head in model.heads or []:
            head.weight.uniform_(0, 1)
    made = []
    monkeypatch.setattr(fast_copy, "runs_faster", lambda fast, plain, x: made.append(fast) or True)
    fast = ev.evaluate({"m": model}, bapps_h5, progress=False, device="cpu", batch_size=5)
    assert len(made) == 1  # one copy, made at the first batch, scores both groups (2afc/val/cnn, jnd/val/cnn)
    monkeypatch.setattr(ev, "scorer", lambda model, device: model)
    plain = ev.evaluate({"m": model}, bapps_h5, progress=False, device="cpu", batch_size=5)
    assert fast["scores"] == plain["scores"]
    for group, items in plain["items"]["m"].items():
        for key, values in items.items():
            np.testing.assert_allclose(fast["items"]["m"][group][key], values, rtol=1e-5, err_msg=f"{group} {key}")


def test_evaluate_unknown_model_is_one_line(bapps_h5, capsys):
    assert main(["evaluate", "nonsense.ckpt", "--data", str(bapps_h5)]) == 2
    assert "nonsense.ckpt: no such model file" in capsys.readouterr().err
