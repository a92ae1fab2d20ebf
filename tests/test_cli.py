"""The command line as a user runs it: configs, run folders, resume, W&B offline, one-line errors."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import training_args

from lpips_lightning.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
DATAMODULES = sorted(p.name for p in (ROOT / "datamodules").glob("*.yaml"))
OVERLAYS = {"ddp.yaml", "debug.yaml"}


def _fit_args(tmp_path, data, *extra):
    return ["fit", *training_args(tmp_path / "runs", data, *extra)]


def _metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_parses(config, capsys):
    args = ["fit", "--config", str(ROOT / "configs" / config)]
    if config in OVERLAYS:
        args = ["fit", "--config", str(ROOT / "configs/lin_alex.yaml"), *args[1:]]
    if config != "demo.yaml":
        args += ["--data", str(ROOT / "datamodules/demo.yaml")]
    with pytest.raises(SystemExit) as done:
        main([*args, "--print_config"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "model:" in out and "data:" in out and "path:" in out


@pytest.mark.parametrize("datamodule", DATAMODULES)
def test_every_datamodule_yaml_parses_and_is_commented(datamodule, capsys):
    text = (ROOT / "datamodules" / datamodule).read_text()
    fields = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert all("#" in ln for ln in fields), f"uncommented field in {datamodule}"
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--config",
                str(ROOT / "configs/lin_alex.yaml"),
                "--data",
                str(ROOT / "datamodules" / datamodule),
                "--print_config",
            ]
        )
    assert "batch_size: 50" in capsys.readouterr().out


def test_configs_are_commented():
    for config in CONFIGS:
        lines = [ln for ln in (ROOT / "configs" / config).read_text().splitlines() if ln and not ln.startswith("#")]
        assert all("#" in ln or ln.rstrip().endswith(":") for ln in lines), config


def _error(capsys, args) -> str:
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_errors_before_training_are_one_line(bapps_h5, tmp_path, capsys, monkeypatch):
    err = _error(capsys, _fit_args(tmp_path, tmp_path / "gone.h5"))
    assert "gone.h5: no such judgments file" in err
    (tmp_path / "notjudgments.h5").write_text("x")
    assert "not a readable judgments file" in _error(capsys, _fit_args(tmp_path, tmp_path / "notjudgments.h5"))
    err = _error(capsys, _fit_args(tmp_path, bapps_h5, "--data.train", "[2afc/train/nope]"))
    assert "no group matches '2afc/train/nope'; the file has: 2afc/train/trad" in err
    err = _error(capsys, _fit_args(tmp_path, bapps_h5, "--model.backbone", "resnet"))
    assert "unknown backbone 'resnet'; choose one of: alex, vgg, squeeze" in err
    err = _error(capsys, _fit_args(tmp_path, bapps_h5, "--model.variant", "fine"))
    assert "unknown variant 'fine'" in err
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    monkeypatch.setattr("torch.hub.download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    err = _error(capsys, _fit_args(tmp_path, bapps_h5, "--model.pretrained", "true"))
    assert "alexnet-owt-7be5be79.pth is missing" in err and "backbone_weights=PATH" in err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*/*.ckpt"))


@pytest.mark.parametrize("faster", [True, False])
def test_resume_ends_with_the_same_weights(bapps_h5, tmp_path, monkeypatch, faster):
    """Exact to the bit. The CPU's prepacked backbone is chosen by timing at a run's start (equal
    taps up to rounding): a resumed run keeps the choice its checkpoint records, whatever the
    timing says then (here: the opposite)."""
    from lpips_lightning import steps

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(steps, "runs_faster", lambda *a: faster)
    assert main(_fit_args(tmp_path, bapps_h5, "--trainer.max_epochs", "3", "--run_name", "straight")) == 0
    assert main(_fit_args(tmp_path, bapps_h5, "--trainer.max_epochs", "2", "--run_name", "cut")) == 0
    monkeypatch.setattr(steps, "runs_faster", lambda *a: not faster)
    assert main(_fit_args(tmp_path, bapps_h5, "--trainer.max_epochs", "3", "--ckpt_path", "last")) == 0
    a = torch.load(tmp_path / "runs/straight/last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "runs/cut/last.ckpt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)
    assert any(k.startswith("lpips.heads") for k in a["state_dict"])
    assert a["lpips_lightning_prepacked"] is b["lpips_lightning_prepacked"] is faster


def test_deterministic_runs_take_the_plain_backbone_without_timing(bapps_h5, tmp_path, monkeypatch):
    from lpips_lightning import steps

    def timed(*args):
        raise AssertionError("a deterministic run must not choose its backbone by timing")

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(steps, "runs_faster", timed)
    args = ["--trainer.max_epochs", "1", "--trainer.deterministic", "true", "--run_name", "d"]
    try:
        assert main(_fit_args(tmp_path, bapps_h5, *args)) == 0
    finally:  # Lightning turns torch's global switch on and leaves it on: later tests would see it
        torch.use_deterministic_algorithms(False)
    assert torch.load(tmp_path / "runs/d/last.ckpt", weights_only=True)["lpips_lightning_prepacked"] is False


def test_fit_leaves_a_complete_run_folder_and_w_and_b_offline(bapps_h5, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(_fit_args(tmp_path, bapps_h5, "--trainer.max_epochs", "2", "--run_name", "r1")) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs/r1"
    assert "W&B runs offline" in out and "wandb sync" in out
    assert "best val/2afc/mean:" in out and f"run folder: {run}" in out and "val/2afc/cnn" in out
    assert f"last checkpoint: {run / 'last.ckpt'}" in out  # shown as the run folder is (absolute here)
    assert (run / "config.yaml").is_file() and (run / "last.ckpt").is_file()
    assert list(run.glob("best-epoch*.ckpt"))
    assert (run / "val_subsets.png").stat().st_size > 1000
    rows = _metrics(run)
    assert any(r.get("val/2afc/mean") for r in rows) and any(r.get("val/jnd_map/cnn") for r in rows)
    assert list((run / "wandb").glob("offline-run-*"))
    charts = list(run.glob("wandb/offline-run-*/files/media/images/val/subsets_chart_*.png"))
    assert len(charts) == 2  # one per epoch in W&B; the file in the run folder shows the latest
    # the checkpoint loads with weights_only=True
    ckpt = torch.load(run / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["variant"] == "lin"


@pytest.mark.parametrize("overlay", [["--config", str(ROOT / "configs/debug.yaml")], ["--trainer.fast_dev_run", "2"]])
def test_fast_dev_run_writes_nothing(bapps_h5, tmp_path, capsys, monkeypatch, overlay):
    """A quick check (the debug overlay, or fast_dev_run alone with loggers on) leaves no run folder or runs_dir."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(_fit_args(tmp_path, bapps_h5, *overlay)) == 0
    out = capsys.readouterr().out
    assert "no files written" in out and "run folder:" not in out and "val/2afc/mean" in out
    assert not (tmp_path / "runs").exists()
    # nested folders that the run made go too
    assert main(_fit_args(tmp_path, bapps_h5, *overlay, "--runs_dir", str(tmp_path / "a/b/c"))) == 0
    assert not (tmp_path / "a").exists()
    # a runs_dir that was there already stays, and so do its runs
    (tmp_path / "runs/old").mkdir(parents=True)
    assert main(_fit_args(tmp_path, bapps_h5, *overlay)) == 0
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["old"]


def test_train_py_runs_the_same_cli():
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "fit" in result.stdout and "distance" in result.stdout


@pytest.mark.slow
def test_ddp_two_processes_validate_like_one(tmp_path):
    """A 2-process CPU DDP (gloo) fit runs quietly; its checkpoint validates identically on 1 and 2 processes.

    The JND group has tied distances (identical pairs, distance exactly 0) with different
    answers: 2 processes gather them in another order than 1 process reads them.
    """
    import h5py
    from conftest import make_bapps

    from lpips_lightning.pack import pack

    make_bapps(tmp_path / "b", n=13)  # odd: DistributedSampler would pad with a repeat
    data = pack(tmp_path / "b", tmp_path / "d.h5", size=32, workers=1, progress=False)
    with h5py.File(data, "r+") as f:
        g = f["jnd/val/cnn"]
        g["p1"][:6] = g["p0"][:6]
        g["same"][:6] = [1.0, 0.0, 0.0, 1.0, 0.0, 0.5]
    env = dict(os.environ, WANDB_MODE="offline")
    cli = [sys.executable, "-m", "lpips_lightning.cli"]

    def run(*args):
        result = subprocess.run([*cli, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    base = _fit_args(tmp_path, data, "--data.batch_size", "3", "--trainer.max_epochs", "1")
    fitted = run(*base, "--trainer.devices", "2", "--trainer.strategy", "ddp")
    for noise in ("It is recommended to use `self.log", "Grad strides do not match"):
        assert noise not in fitted.stderr, noise
    assert fitted.stdout.count("W&B runs offline") == 1  # rank 0 only
    (run_dir,) = (tmp_path / "runs").iterdir()  # both processes used one folder
    ckpt = run_dir / "last.ckpt"
    assert ckpt.is_file()
    env["WANDB_MODE"] = "disabled"
    scores = {}
    for devices in ("1", "2"):
        args = [a if a != "fit" else "validate" for a in base]
        run(
            *args,
            "--trainer.devices",
            devices,
            "--trainer.strategy",
            "ddp" if devices == "2" else "auto",
            "--ckpt_path",
            str(ckpt),
            "--run_name",
            f"val{devices}",
        )
        rows = _metrics(tmp_path / f"runs/val{devices}")
        scores[devices] = {k: float(v) for r in rows for k, v in r.items() if k.startswith("val/") and v}
    assert scores["1"] and scores["1"] == scores["2"]


@pytest.mark.slow
def test_demo_reaches_its_score(tmp_path, monkeypatch, capsys):
    """The README's main job: the demo config trains to a validation 2AFC of at least 0.75."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    args = [
        "fit",
        "--config",
        str(ROOT / "configs/demo.yaml"),
        "--runs_dir",
        str(tmp_path / "runs"),
        "--run_name",
        "demo",
        "--trainer.enable_progress_bar",
        "false",
    ]
    assert main(args) == 0
    best = max(float(r["val/2afc/mean"]) for r in _metrics(tmp_path / "runs/demo") if r.get("val/2afc/mean"))
    assert best >= 0.75, best


def test_distance_command(imagenet_cache, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from lpips_lightning import LPIPS

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    assert main(["distance", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--backbone", "squeeze"]) == 0
    printed = float(capsys.readouterr().out.strip())
    x0, x1 = (torch.from_numpy(v).permute(2, 0, 1)[None] for v in (a, b))
    expected = LPIPS("squeeze").eval()(x0, x1).item()
    assert printed == pytest.approx(expected, rel=1e-5)

    Image.fromarray(a[:32]).save(tmp_path / "small.png")
    err = _error(capsys, ["distance", str(tmp_path / "a.png"), str(tmp_path / "small.png")])
    assert "pass --resize N" in err
    assert main(["distance", str(tmp_path / "a.png"), str(tmp_path / "small.png"), "--resize", "32"]) == 0
    assert float(capsys.readouterr().out) > 0
    assert "nope.png: no such image file" in _error(
        capsys, ["distance", str(tmp_path / "nope.png"), str(tmp_path / "a.png")]
    )
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert "bad.png: image does not decode" in _error(
        capsys, ["distance", str(tmp_path / "bad.png"), str(tmp_path / "a.png")]
    )


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "distance", "pack", "demo-data", "export", "evaluate"):
        assert f"  {command}" in out


def test_a_frozen_torchvision_backbone_trains_without_lightnings_eval_mode_warning(bapps_h5, tmp_path, recwarn):
    """A frozen backbone is in eval mode on purpose: Lightning's warning about it is noise on every lin run."""
    args = _fit_args(
        tmp_path, bapps_h5, "--model.backbone", "torchvision:resnet18", "--config", str(ROOT / "configs/debug.yaml")
    )
    assert main(args) == 0
    assert not [w for w in recwarn if "eval mode" in str(w.message)]


def test_a_run_resumed_where_the_cpu_choice_does_not_arise_records_none(bapps_h5, tmp_path, monkeypatch):
    """An fp32 CPU run chose the prepacked copy; resumed in bf16-mixed (a bf16 copy instead), its
    checkpoints no longer claim the prepacked one."""
    from lpips_lightning import steps

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(steps, "runs_faster", lambda *a: True)
    assert main(_fit_args(tmp_path, bapps_h5, "--trainer.max_epochs", "1", "--run_name", "p")) == 0
    assert torch.load(tmp_path / "runs/p/last.ckpt", weights_only=True)["lpips_lightning_prepacked"] is True
    args = ["--trainer.max_epochs", "2", "--ckpt_path", "last", "--run_name", "p", "--trainer.precision", "bf16-mixed"]
    assert main(_fit_args(tmp_path, bapps_h5, *args)) == 0
    assert "lpips_lightning_prepacked" not in torch.load(tmp_path / "runs/p/last.ckpt", weights_only=True)
