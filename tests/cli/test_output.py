"""What the commands print: validate's scores once each, no torch.jit notice, a line before a long ONNX export."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import cpu_trainer, training_args

from lpips_lightning.cli.main import main
from lpips_lightning.data.datamodule import JudgmentsDataModule
from lpips_lightning.errors import ExportError
from lpips_lightning.export import onnx_format, torchscript_format
from lpips_lightning.model.lpips import LPIPS
from lpips_lightning.train.module import LPIPSModule

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_validate_prints_each_score_once_and_the_run_folder_records_provenance(bapps_h5, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    model = LPIPSModule(variant="lin", pretrained=False)
    trainer = cpu_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(model, JudgmentsDataModule(str(bapps_h5), val=["2afc/val/*"], batch_size=4))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    capsys.readouterr()
    runs = tmp_path / "runs"
    assert main(["validate", *training_args(runs, bapps_h5, "--ckpt_path", str(tmp_path / "m.ckpt"))]) == 0
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines() if line.startswith("val/")]
    assert [name for name, _ in lines] == ["val/2afc/cnn", "val/jnd_map/cnn", "val/2afc/mean", "val/jnd_map/mean"]
    assert "DataLoader" not in out
    (folder,) = runs.iterdir()
    record = json.loads((folder / "provenance.json").read_text())
    assert record["data"]["path"] == str(bapps_h5.resolve()) and len(record["data"]["sha256"]) == 64
    assert record["models"][0]["path"] == str((tmp_path / "m.ckpt").resolve())
    assert record["argv"][1:3] == ["validate", "--config"]


def test_torchscript_read_silences_only_the_jit_deprecation_notice(tmp_path, monkeypatch):
    def fake_load(*args, **kwargs):
        warnings.warn("`torch.jit.load` is deprecated. Please switch to `torch.export`.", FutureWarning, stacklevel=2)
        warnings.warn("something else about this file", UserWarning, stacklevel=2)
        raise RuntimeError("not a TorchScript file")

    monkeypatch.setattr(torch.jit, "load", fake_load)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ExportError, match="not a loadable TorchScript export"):
            torchscript_format.read(tmp_path / "m.pt")
    assert [str(w.message) for w in seen] == ["something else about this file"]


def test_onnx_export_says_on_stderr_that_it_takes_a_while(tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnx")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_format, "_program", full_disk)
    model = LPIPS("alex", pretrained=False, heads="random")
    with pytest.raises(OSError):
        onnx_format.write(model, {}, {}, tmp_path / "tmp.onnx", tmp_path / "m.onnx")
    captured = capsys.readouterr()
    assert captured.out == "" and "exporting m.onnx to ONNX (this takes 20-50 s)" in captured.err
