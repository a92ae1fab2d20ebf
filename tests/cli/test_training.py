"""fit / validate / test as a user runs them: run folders, resume, W&B offline, quick checks, signals, DDP.

The tests that train are slow; most share one finished run (`trained_run` in conftest).
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import default_sigint, make_bapps, snapshot, training_args

from lpips_lightning.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
slow = pytest.mark.slow


@pytest.fixture
def no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


def _fit(runs: Path, data: Path, *extra: str) -> list[str]:
    return ["fit", *training_args(runs, data, *extra)]


def _rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


# --- a finished run --------------------------------------------------------------------------------
@slow
def test_fit_leaves_a_complete_run_folder_and_w_and_b_offline(trained_run, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_DIR")  # W&B's files then go inside the run folder
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(_fit(tmp_path / "runs", trained_run["data"], "--trainer.max_epochs", "2", "--run_name", "r1")) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs/r1"
    assert "W&B runs offline" in out and "wandb sync" in out
    assert "best val/2afc/mean:" in out and f"run folder: {run}" in out and "val/2afc/cnn" in out
    assert f"last checkpoint: {run / 'last.ckpt'}" in out  # shown as the run folder is (absolute here)
    assert (run / "config.yaml").is_file() and (run / "last.ckpt").is_file()
    assert list(run.glob("best-epoch*.ckpt"))
    assert (run / "val_subsets.png").stat().st_size > 1000
    rows = _rows(run / "metrics.csv")
    assert any(r.get("val/2afc/mean") for r in rows) and any(r.get("val/jnd_map/cnn") for r in rows)
    run_id = (run / "wandb-run-id").read_text().strip()
    assert f"wandb sync {run}/wandb/offline-run-*-{run_id}" in out
    assert [p.name.rsplit("-", 1)[1] for p in (run / "wandb").glob("offline-run-*")] == [run_id]
    charts = list(run.glob("wandb/offline-run-*/files/media/images/val/subsets_chart_*.png"))
    assert len(charts) == 2  # one per epoch in W&B; the file in the run folder shows the latest
    ckpt = torch.load(run / "last.ckpt", weights_only=True)  # loads with weights_only=True
    assert ckpt["hyper_parameters"]["variant"] == "lin"


@slow
@pytest.mark.parametrize("command", ["validate", "test"])
def test_evaluating_a_run_writes_a_new_folder_inside_it(trained_run, command, no_wandb):
    run = trained_run["run"]
    before = snapshot(run)
    extra = ["--data.test", "[2afc/val/*, jnd/val/*]"] if command == "test" else []
    args = training_args(trained_run["runs"], trained_run["data"], "--ckpt_path", "last", "--run_name", "r1", *extra)
    assert main([command, *args]) == 0
    after = snapshot(run)
    changed = {k for k in before if after.get(k) != before[k]}
    assert not changed, changed  # metrics.csv, config.yaml, chart and checkpoints untouched
    new = sorted({str(Path(k).parent) for k in after if k not in before})
    assert len(new) == 1 and Path(new[0]).parent == run and Path(new[0]).name.startswith(f"{command}-")
    assert _rows(Path(new[0]) / "metrics.csv")


@slow
def test_resumed_run_keeps_its_earlier_log_rows(tmp_path, trained_run, no_wandb):
    runs = tmp_path / "runs"
    args = _fit(runs, trained_run["data"], "--run_name", "cut")
    assert main([*args, "--trainer.max_epochs", "2"]) == 0
    first = _rows(runs / "cut/metrics.csv")
    config = (runs / "cut/config.yaml").read_text()
    assert main([*args, "--trainer.max_epochs", "3", "--ckpt_path", "last"]) == 0
    rows = _rows(runs / "cut/metrics.csv")
    epochs = sorted({int(r["epoch"]) for r in rows if r.get("val/2afc/mean")})
    assert epochs == [0, 1, 2], epochs  # the epochs before the interruption are still there
    assert [r["val/2afc/mean"] for r in rows[: len(first)] if r.get("val/2afc/mean")] == [
        r["val/2afc/mean"] for r in first if r.get("val/2afc/mean")
    ]
    assert (runs / "cut/config.yaml").read_text() == config
    assert list((runs / "cut").glob("config-resumed-*.yaml"))


@slow
def test_two_fits_in_the_same_second_get_two_folders(tmp_path, trained_run, monkeypatch, no_wandb):
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20260101-000000")
    runs = tmp_path / "runs"
    for _ in range(2):
        assert main(_fit(runs, trained_run["data"], "--trainer.max_epochs", "1")) == 0
    assert sorted(p.name for p in runs.iterdir()) == ["lin_alex-20260101-000000", "lin_alex-20260101-000000-2"]


# --- resuming, to the bit ----------------------------------------------------------------------------
@slow
@pytest.mark.parametrize("faster", [True, False])
def test_resume_ends_with_the_same_weights(trained_run, tmp_path, monkeypatch, faster, no_wandb):
    """Exact to the bit. The CPU's prepacked backbone is chosen by timing at a run's start (equal
    taps up to rounding): a resumed run keeps the choice its checkpoint records, whatever the
    timing says then (here: the opposite)."""
    from lpips_lightning.backbones import fast

    data = trained_run["data"]
    monkeypatch.setattr(fast, "runs_faster", lambda *a: faster)
    assert main(_fit(tmp_path, data, "--trainer.max_epochs", "3", "--run_name", "straight")) == 0
    assert main(_fit(tmp_path, data, "--trainer.max_epochs", "2", "--run_name", "cut")) == 0
    monkeypatch.setattr(fast, "runs_faster", lambda *a: not faster)
    assert main(_fit(tmp_path, data, "--trainer.max_epochs", "3", "--ckpt_path", "last")) == 0
    a = torch.load(tmp_path / "straight/last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "cut/last.ckpt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)
    assert any(k.startswith("lpips.heads") for k in a["state_dict"])
    assert a["lpips_lightning_prepacked"] is b["lpips_lightning_prepacked"] is faster


@slow
def test_a_run_resumed_where_the_cpu_choice_does_not_arise_records_none(trained_run, tmp_path, monkeypatch, no_wandb):
    """An fp32 CPU run chose the prepacked copy; resumed in bf16-mixed (a bf16 copy instead), its
    checkpoints no longer claim the prepacked one."""
    from lpips_lightning.backbones import fast

    monkeypatch.setattr(fast, "runs_faster", lambda *a: True)
    assert main(_fit(tmp_path, trained_run["data"], "--trainer.max_epochs", "1", "--run_name", "p")) == 0
    assert torch.load(tmp_path / "p/last.ckpt", weights_only=True)["lpips_lightning_prepacked"] is True
    args = ["--trainer.max_epochs", "2", "--ckpt_path", "last", "--run_name", "p", "--trainer.precision", "bf16-mixed"]
    assert main(_fit(tmp_path, trained_run["data"], *args)) == 0
    assert "lpips_lightning_prepacked" not in torch.load(tmp_path / "p/last.ckpt", weights_only=True)


@slow
def test_deterministic_runs_take_the_plain_backbone_without_timing(trained_run, tmp_path, monkeypatch, no_wandb):
    from lpips_lightning.backbones import fast

    def timed(*args):
        raise AssertionError("a deterministic run must not choose its backbone by timing")

    monkeypatch.setattr(fast, "runs_faster", timed)
    args = ["--trainer.max_epochs", "1", "--trainer.deterministic", "true", "--run_name", "d"]
    try:
        assert main(_fit(tmp_path, trained_run["data"], *args)) == 0
    finally:  # Lightning turns torch's global switch on and leaves it on: later tests would see it
        torch.use_deterministic_algorithms(False)
    assert torch.load(tmp_path / "d/last.ckpt", weights_only=True)["lpips_lightning_prepacked"] is False


# --- quick checks --------------------------------------------------------------------------------
@slow
@pytest.mark.parametrize("overlay", [["--config", str(ROOT / "configs/debug.yaml")], ["--trainer.fast_dev_run", "2"]])
def test_fast_dev_run_writes_nothing(trained_run, tmp_path, capsys, monkeypatch, overlay):
    """A quick check (the debug overlay, or fast_dev_run alone with loggers on) leaves no run folder or runs_dir."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    data = trained_run["data"]
    assert main(_fit(tmp_path / "runs", data, *overlay)) == 0
    out = capsys.readouterr().out
    assert "no files written" in out and "run folder:" not in out and "val/2afc/mean" in out
    assert not (tmp_path / "runs").exists()
    # nested folders that the run made go too
    assert main(_fit(tmp_path / "runs", data, *overlay, "--runs_dir", str(tmp_path / "a/b/c"))) == 0
    assert not (tmp_path / "a").exists()
    # a runs_dir that was there already stays, and so do its runs
    (tmp_path / "runs/old").mkdir(parents=True)
    assert main(_fit(tmp_path / "runs", data, *overlay)) == 0
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["old"]


@slow
def test_a_frozen_torchvision_backbone_trains_without_lightnings_eval_mode_warning(trained_run, tmp_path, recwarn):
    """A frozen backbone is in eval mode on purpose: Lightning's warning about it is noise on every lin run."""
    debug = ["--config", str(ROOT / "configs/debug.yaml")]
    assert main(_fit(tmp_path, trained_run["data"], "--model.backbone", "torchvision:resnet18", *debug)) == 0
    assert not [w for w in recwarn if "eval mode" in str(w.message)]


# --- signals, several processes, the demo ------------------------------------------------------------
@slow
@pytest.mark.parametrize(("sig", "status"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_stops_fit_with_its_status_and_how_to_resume(trained_run, tmp_path, sig, status):
    """Lightning exits 0 after SIGTERM and 1 after Ctrl-C; a stopped run must say so and how to resume."""
    runs = tmp_path / "runs"
    args = training_args(runs, trained_run["data"], "--trainer.max_epochs", "100000", "--run_name", "long")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lpips_lightning.cli", "fit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, WANDB_MODE="disabled"),
        preexec_fn=default_sigint,
    )
    try:
        deadline = time.time() + 300
        while not (runs / "long/last.ckpt").is_file() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(0.5)
        proc.send_signal(getattr(signal, sig))
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == status, err[-2000:]
    assert "Traceback" not in err
    assert "--ckpt_path last --run_name long" in err.strip().splitlines()[-1]
    assert (runs / "long/last.ckpt").is_file() and _rows(runs / "long/metrics.csv")


@slow
def test_ddp_two_processes_validate_like_one(tmp_path):
    """A 2-process CPU DDP (gloo) fit runs quietly; its checkpoint validates identically on 1 and 2 processes.

    The JND group has tied distances (identical pairs, distance exactly 0) with different
    answers: 2 processes gather them in another order than 1 process reads them.
    """
    import h5py

    from lpips_lightning.pack.pack import pack

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

    base = _fit(tmp_path / "runs", data, "--data.batch_size", "3", "--trainer.max_epochs", "1")
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
        strategy = "ddp" if devices == "2" else "auto"
        run(*args, "--trainer.devices", devices, "--trainer.strategy", strategy, "--ckpt_path", str(ckpt),
            "--run_name", f"val{devices}")  # fmt: skip
        rows = _rows(tmp_path / f"runs/val{devices}/metrics.csv")
        scores[devices] = {k: float(v) for r in rows for k, v in r.items() if k.startswith("val/") and v}
    assert scores["1"] and scores["1"] == scores["2"]


@slow
def test_demo_reaches_its_score(tmp_path, no_wandb):
    """The README's main job: the demo config trains to a validation 2AFC of at least 0.75."""
    args = ["fit", "--config", str(ROOT / "configs/demo.yaml"), "--runs_dir", str(tmp_path / "runs"),
            "--run_name", "demo", "--trainer.enable_progress_bar", "false"]  # fmt: skip
    assert main(args) == 0
    best = max(float(r["val/2afc/mean"]) for r in _rows(tmp_path / "runs/demo/metrics.csv") if r.get("val/2afc/mean"))
    assert best >= 0.75, best


# --- what the training command relies on (no training) ----------------------------------------------
def test_wandb_reachability_uses_the_port_of_the_base_url(monkeypatch):
    from lpips_lightning.train.loggers import wandb_online as _wandb_online

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
        assert _wandb_online()
        server.close()
        assert not _wandb_online()  # nothing listens there any more
    finally:
        server.close()


def test_multi_process_runs_agree_on_the_folder(tmp_path, monkeypatch):
    """Processes started by torchrun/SLURM name the run by the job id, or must be given --run_name."""
    from jsonargparse import Namespace

    from lpips_lightning.errors import ConfigError
    from lpips_lightning.train.runs import RunFolder

    def config():
        return Namespace(
            runs_dir=str(tmp_path), ckpt_path=None, run_name=None, model=Namespace(variant="lin", backbone="vgg")
        )

    for var in ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "16")
    with pytest.raises(ConfigError, match="--run_name"):
        RunFolder("fit", config())
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job42")
    names = set()
    for rank in ("0", "9"):
        monkeypatch.setenv("RANK", rank)
        names.add(RunFolder("fit", config()).path)
    assert names == {tmp_path / "lin_vgg-job42"}
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.delenv("RANK")
    assert "job42" not in RunFolder("fit", config()).path.name  # one process: its own clock


def test_two_runs_started_at_once_never_share_a_named_folder(tmp_path, monkeypatch):
    """Both pass the "already holds a run" check before either creates the folder: the claim
    made when the folder is reserved lets exactly one of them have it."""
    from jsonargparse import Namespace

    from lpips_lightning.errors import ConfigError
    from lpips_lightning.train.runs import CLAIM, RunFolder

    for var in ("WORLD_SIZE", "SLURM_NTASKS", "RANK", "LOCAL_RANK", "NODE_RANK", "LPIPS_LIGHTNING_RUN_DIR"):
        monkeypatch.delenv(var, raising=False)

    def config():
        return Namespace(
            runs_dir=str(tmp_path), ckpt_path=None, run_name="dup", model=Namespace(variant="lin", backbone="alex")
        )

    first, second = RunFolder("fit", config()), RunFolder("fit", config())  # both checked: the name is free
    assert first.reserve() == tmp_path / "dup" and (tmp_path / "dup" / CLAIM).is_file()
    with pytest.raises(ConfigError, match="run folder .*dup already holds a run"):
        second.reserve()
    first.release()  # nothing but the claim was written: the name is free again
    assert not (tmp_path / "dup").exists()
    (tmp_path / "dup").mkdir()  # an empty folder of that name is still free to take
    third = RunFolder("fit", config())
    assert third.reserve() == tmp_path / "dup"
    # a run killed (SIGKILL) right after its claim: the claim of a process that is gone frees the name
    claim = tmp_path / "dup" / CLAIM
    assert claim.read_text().split() == [str(os.getpid())]
    claim.write_text("999999999\n")
    assert RunFolder("fit", config()).reserve() == tmp_path / "dup"
    with pytest.raises(ConfigError, match="already holds a run"):  # while its owner (this process) lives
        RunFolder("fit", config())


@pytest.mark.parametrize("variant", ["lin", "scratch"])
def test_gradient_strides_match_their_weights_for_ddp(variant):
    """DDP's buckets take each weight's strides: a gradient laid out otherwise makes DDP warn and copy."""
    from lpips_lightning.train.module import LPIPSModule
    from lpips_lightning.train.steps import Steps

    model = LPIPSModule(variant=variant, pretrained=False)
    model.configure_model()
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    loss, _, _ = Steps(model.lpips, model.rank_head, model.backbone_pass).loss(x, x.flip(0), x.flip(1), torch.rand(2))
    loss.backward()
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trained
    for name, p in trained:
        assert p.grad.stride() == p.stride(), name


def test_subset_chart_is_labelled_with_chance_and_jnd():
    from lpips_lightning.train.callbacks import subset_chart

    fig = subset_chart({"2afc/cnn": 0.7, "2afc/mean": 0.7, "jnd/cnn": 0.6}, "validation after epoch 3")
    (ax,) = fig.axes
    assert ax.get_xlabel() and "epoch 3" in ax.get_title()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["2afc/cnn", "2afc/mean", "jnd/cnn"]
    assert any(list(line.get_xdata()) == [0.5, 0.5] for line in ax.get_lines())  # the chance line
