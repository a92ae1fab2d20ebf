"""Exports round-trip against the in-memory model and the lpips package; evaluate against numpy."""

from __future__ import annotations

import json

import h5py
import lpips as lpips_pkg
import numpy as np
import pytest
import torch
from conftest import cpu_trainer
from test_metrics import numpy_2afc, numpy_voc_ap

from lpips_lightning import load
from lpips_lightning.cli.main import main
from lpips_lightning.datamodules import JudgmentsDataModule
from lpips_lightning.errors import LPIPSLightningError, WeightsError
from lpips_lightning.export import export, load_into_torchmetrics, model_from_checkpoint
from lpips_lightning.module import LPIPSModule


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, imagenet_cache):
    """Briefly trained checkpoints: lin over (fake) ImageNet alex, and tune on squeeze."""
    from conftest import make_bapps

    from lpips_lightning.pack import pack

    root = tmp_path_factory.mktemp("ckpts")
    make_bapps(root / "b", n=8)
    data = pack(root / "b", root / "d.h5", size=32, workers=1, progress=False)
    out = {}
    for variant, backbone in (("lin", "alex"), ("tune", "squeeze")):
        model = LPIPSModule(variant=variant, backbone=backbone)
        trainer = cpu_trainer(fast_dev_run=2)
        trainer.fit(model, JudgmentsDataModule(str(data), batch_size=4))
        with torch.no_grad():  # make the heads clearly non-trivial
            for h in model.lpips.heads:
                h.weight.uniform_(0.1, 1.0)
        trainer.save_checkpoint(root / f"{variant}.ckpt")
        out[variant] = (root / f"{variant}.ckpt", model.lpips.eval())
    return out


def _images(n=3, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1, torch.rand(n, 3, size, size, generator=g) * 2 - 1


@pytest.mark.parametrize("variant", ["lin", "tune"])
@pytest.mark.parametrize(("suffix", "rtol"), [(".pth", 1e-5), (".safetensors", 1e-5), (".pt", 1e-5), (".onnx", 1e-4)])
def test_round_trip_each_format(checkpoints, tmp_path, capsys, variant, suffix, rtol):
    ckpt, model = checkpoints[variant]
    out = tmp_path / f"m{suffix}"
    assert main(["export", str(ckpt), str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "load it with:" in printed
    assert not list(tmp_path.glob(".m*"))
    x0, x1 = _images(size=48 if suffix == ".onnx" else 64)
    expected = model(x0, x1)
    reloaded = load(out)
    assert not reloaded.training
    torch.testing.assert_close(reloaded(x0, x1).flatten(), expected, rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("variant", ["lin", "tune"])
def test_lpips_export_loads_in_the_lpips_package_and_torchmetrics(checkpoints, tmp_path, capsys, variant):
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    ckpt, model = checkpoints[variant]
    out = tmp_path / "m.pth"
    assert main(["export", str(ckpt), str(out)]) == 0
    with_backbone = variant == "tune"
    assert ("pnet_rand=True" in capsys.readouterr().out) == with_backbone
    state = torch.load(out, weights_only=True)
    assert any(k.startswith("net.slice") for k in state) == with_backbone
    x0, x1 = _images()
    ref = lpips_pkg.LPIPS(
        net=model.backbone_name, version="0.1", model_path=str(out), pnet_rand=with_backbone, verbose=False
    )
    torch.testing.assert_close(ref(x0, x1).flatten(), model(x0, x1), rtol=1e-5, atol=1e-8)
    tm = LearnedPerceptualImagePatchSimilarity(net_type=model.backbone_name, reduction="none")
    load_into_torchmetrics(tm, out)
    torch.testing.assert_close(tm(x0, x1), model(x0, x1), rtol=1e-4, atol=1e-8)


def test_safetensors_metadata_rebuilds_the_model(checkpoints, tmp_path):
    from safetensors import safe_open

    ckpt, _ = checkpoints["tune"]
    export(ckpt, tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["backbone"] == "squeeze" and meta["variant"] == "tune" and meta["version"] == "0.1"
    assert json.loads(meta["config"])["variant"] == "tune"
    assert "shift" not in " ".join(keys) and len(keys) == len(set(keys))


def test_exports_without_a_backbone_spec_still_load(checkpoints, tmp_path):
    """Exports of lpips-lightning 0.1.0 name a classic backbone only (no backbone_spec, no input_size)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    ckpt, model = checkpoints["tune"]
    export(ckpt, tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k not in ("backbone_spec", "input_size")}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=meta)
    x0, x1 = _images()
    torch.testing.assert_close(load(tmp_path / "old.safetensors")(x0, x1), model(x0, x1))


def test_load_lpips_pth_infers_backbone_and_refuses_mismatches(checkpoints, tmp_path):
    ckpt, model = checkpoints["lin"]
    export(ckpt, tmp_path / "m.pth")
    loaded = load(tmp_path / "m.pth")
    assert loaded.backbone_name == "alex"
    with pytest.raises(WeightsError, match="m.pth: does not fit this model"):
        load(tmp_path / "m.pth", backbone="vgg")
    bad = torch.load(tmp_path / "m.pth", weights_only=True)
    bad["lin1.model.1.weight"] = torch.zeros(1, 7, 1, 1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"channels \[64, 7, 384, 256, 256\] fit no backbone"):
        load(tmp_path / "bad.pth")


def test_bad_export_inputs_one_line_nothing_written(checkpoints, tmp_path, capsys):
    ckpt, _ = checkpoints["lin"]
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.ckpt")
    cases = [
        (["export", str(tmp_path / "other.ckpt"), str(tmp_path / "o.pth")], "other.ckpt: not a checkpoint of lpips"),
        (["export", str(tmp_path / "nope.ckpt"), str(tmp_path / "o.pth")], "nope.ckpt: no such checkpoint file"),
        (["export", str(ckpt), str(tmp_path / "o.bin")], "cannot tell the format from the extension"),
    ]
    (tmp_path / "exists.pth").write_text("keep")
    cases.append((["export", str(ckpt), str(tmp_path / "exists.pth")], "exists.pth already exists"))
    for args, message in cases:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.pth").exists() and not (tmp_path / "o.bin").exists()
    assert (tmp_path / "exists.pth").read_text() == "keep"
    assert not list(tmp_path.glob(".*tmp*"))


def test_model_from_checkpoint_needs_no_imagenet(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    ckpt, model = checkpoints["lin"]
    rebuilt, hp, _ = model_from_checkpoint(ckpt)
    x0, x1 = _images()
    torch.testing.assert_close(rebuilt(x0, x1), model(x0, x1))


def test_evaluate_matches_numpy_references(bapps_h5, checkpoints, tmp_path, capsys, imagenet_cache):
    ckpt, _ = checkpoints["lin"]
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
    from lpips_lightning import evaluate as ev
    from lpips_lightning import steps
    from lpips_lightning.lpips import LPIPS

    torch.manual_seed(0)
    model = LPIPS(backbone, pretrained=False, heads=None).eval()  # random heads: nothing in the weights
    with torch.no_grad():
        for head in model.heads or []:
            head.weight.uniform_(0, 1)
    made = []
    monkeypatch.setattr(steps, "runs_faster", lambda fast, plain, x: made.append(fast) or True)
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


def test_load_refuses_foreign_files(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"junk")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(LPIPSLightningError, match="list.pth: not a checkpoint of lpips-lightning"):
        load(tmp_path / "list.pth")
