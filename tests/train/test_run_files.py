"""A training run's files are never lost or mixed up: one process per run, whole checkpoints, a kept log.

- a resume holds the run's claim as a new run does: a second one at once is refused in one line;
- a checkpoint is written beside its target and renamed: a full disk never cuts a good one;
- a resume into a folder that cannot be written is refused before anything, and the CSV log is
  rewritten beside and renamed.
"""

from __future__ import annotations

import csv
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import assert_refused, cpu_trainer, training_args
from pytorch_lightning.plugins.io import AsyncCheckpointIO, TorchCheckpointIO

from lpips_lightning.cli.main import main
from lpips_lightning.errors import ConfigError, OutputError
from lpips_lightning.train.checkpoint_io import AtomicCheckpointIO, use_atomic_checkpoints
from lpips_lightning.train.claims import CLAIM, claim_pid, take_claim
from lpips_lightning.train.loggers import ResumableCSVLogger
from lpips_lightning.train.module import LPIPSModule

ROOT = Path(__file__).resolve().parents[2]
METRICS = "epoch,step,train/loss,val/2afc/mean\n,2,0.7,\n0,2,,0.6\n,5,0.6,\n1,5,,0.65\n,7,0.5,\n"


@pytest.fixture
def no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture
def sleeper():
    """A live process that is not this one (killed and reaped when the test ends)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".stale-" in p.name)


def _finished_run(runs: Path, name: str = "R1") -> Path:
    """A run folder as a finished fit leaves it (config, log, last.ckpt of configs/lin_alex.yaml's model)."""
    folder = runs / name
    folder.mkdir(parents=True)
    options = yaml.safe_load((ROOT / "configs/lin_alex.yaml").read_text())["model"]
    model = LPIPSModule(**{**options, "pretrained": False})
    ckpt = {"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict(), "epoch": 1, "global_step": 5}
    torch.save(ckpt, folder / "last.ckpt")
    (folder / "config.yaml").write_text("model:\n  variant: lin\n")
    (folder / "metrics.csv").write_text(METRICS)
    return folder


def _resume(runs: Path, data: Path, *extra: str) -> list[str]:
    return ["fit", *training_args(runs, data, "--ckpt_path", "last", "--run_name", "R1", *extra)]


# --- one process per run ---------------------------------------------------------------------------
@pytest.mark.parametrize("holder", ["this process", "another process"])
def test_a_second_resume_at_once_is_refused_touching_nothing(tmp_path, bapps_h5, capfd, sleeper, holder):
    run = _finished_run(tmp_path / "runs")
    pid = os.getpid() if holder == "this process" else sleeper.pid
    (run / CLAIM).write_text(f"{pid}\n")  # the first resume holds the run
    err = assert_refused(_resume(tmp_path / "runs", bapps_h5), capfd, tmp_path / "runs")
    assert f"in use by process {pid}" in err and str(run) in err and "--run_name R1" in err
    assert (run / "metrics.csv").read_text() == METRICS


def test_a_claim_is_taken_once_and_a_dead_processs_claim_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    take_claim(folder)
    assert claim_pid(folder / CLAIM) == os.getpid()
    with pytest.raises(ConfigError, match=f"in use by process {os.getpid()}"):  # held while this process lives
        take_claim(folder)
    (folder / CLAIM).write_text(f"{_dead_pid()}\n")  # a run killed (SIGKILL) while it held the folder
    take_claim(folder)
    assert claim_pid(folder / CLAIM) == os.getpid()
    (folder / CLAIM).write_text("")  # cut by a power loss before its pid was written: no live holder
    take_claim(folder)
    assert claim_pid(folder / CLAIM) == os.getpid()
    assert sorted(p.name for p in folder.iterdir()) == [CLAIM]  # no temporary or stale claim left


def test_a_folder_where_the_claim_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    folder.mkdir()

    def refused(self, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_text", refused)
    with pytest.raises(OutputError, match=r"run folder .*run: cannot claim it for this run \(Permission denied\)"):
        take_claim(folder)
    assert list(folder.iterdir()) == []


# --- a full disk never cuts a checkpoint ---------------------------------------------------------------
class FullDisk:
    """A file on a disk that fills after `room` bytes: torch's writer then raises a RuntimeError over the OSError."""

    def __init__(self, fh, room: int) -> None:
        self.fh, self.room = fh, room

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            self.fh.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


def _fill_disk_after(monkeypatch, n_bytes: int) -> None:
    """`torch.save` writes `n_bytes` of its file, then the disk is full."""
    real = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, fh, *a, **k: real(obj, FullDisk(fh, n_bytes), *a, **k))


def test_a_full_disk_keeps_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    io, target = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"w": torch.arange(1000.0), "epoch": 0}, target)
    good = target.read_bytes()
    with monkeypatch.context() as m:
        _fill_disk_after(m, 100)
        with pytest.raises(OutputError) as raised:
            io.save_checkpoint({"w": torch.zeros(1000), "epoch": 1}, target)
    message = str(raised.value)
    assert "\n" not in message and str(target) in message and "disk full" in message
    assert "previous checkpoint there is kept" in message and f"--run_name {tmp_path.name}" in message
    assert target.read_bytes() == good
    assert _temps(tmp_path) == []
    assert torch.load(target, weights_only=True)["epoch"] == 0


def test_a_first_checkpoint_on_a_full_disk_and_other_write_errors(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    with monkeypatch.context() as m:
        _fill_disk_after(m, 10)
        with pytest.raises(OutputError, match="disk full .*no checkpoint was written; free some space and start"):
            io.save_checkpoint({"w": torch.zeros(3)}, tmp_path / "best.ckpt")
    assert list(tmp_path.iterdir()) == []

    def denied(obj, fh, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(torch, "save", denied)
    with pytest.raises(OutputError, match=r"cannot save checkpoint .*best.ckpt: Permission denied; no checkpoint"):
        io.save_checkpoint({"w": torch.zeros(3)}, tmp_path / "best.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_is_written_whole_and_a_killed_saves_temp_is_removed(tmp_path):
    target = tmp_path / "sub" / "last.ckpt"
    target.parent.mkdir()
    stale = target.with_name(f".last.ckpt.tmp-{_dead_pid()}")
    stale.write_bytes(b"half a checkpoint")
    AtomicCheckpointIO().save_checkpoint({"w": torch.arange(5.0)}, target)
    torch.testing.assert_close(torch.load(target, weights_only=True)["w"], torch.arange(5.0))
    assert not stale.exists() and _temps(target.parent) == []


class MyCheckpointIO(TorchCheckpointIO):
    """A user's own checkpoint IO."""


def test_the_trainer_saves_atomically_unless_the_user_chose_a_checkpoint_io(tmp_path):
    trainer = cpu_trainer(tmp_path)
    use_atomic_checkpoints(trainer)
    assert type(trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    for own in (MyCheckpointIO(), AsyncCheckpointIO()):
        trainer = cpu_trainer(tmp_path, plugins=[own])
        use_atomic_checkpoints(trainer)
        assert trainer.strategy.checkpoint_io is own


# --- a resume into a folder that cannot be written ------------------------------------------------------
def test_a_resume_into_a_read_only_run_folder_is_refused_first(tmp_path, bapps_h5, capfd, monkeypatch):
    run = _finished_run(tmp_path / "runs")
    real = os.access

    def read_only(path, mode, *a, **k):  # tests run as root, for whom every folder is writable
        if Path(path) == run and mode & os.W_OK:
            return False
        return real(path, mode, *a, **k)

    monkeypatch.setattr(os, "access", read_only)
    err = assert_refused(_resume(tmp_path / "runs", bapps_h5), capfd, tmp_path / "runs")
    assert f"run folder {run} is not writable" in err and "chmod u+w" in err
    assert (run / "metrics.csv").read_text() == METRICS


def test_a_resume_into_a_folder_where_writes_fail_is_one_line(tmp_path, bapps_h5, capfd, monkeypatch):
    run = _finished_run(tmp_path / "runs")
    real = Path.write_text

    def failing(self, *a, **k):  # a folder writable by its mode on a file system that refuses writes
        if self.parent == run:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", failing)
    err = assert_refused(_resume(tmp_path / "runs", bapps_h5), capfd, tmp_path / "runs")
    assert "Read-only file system" in err and str(run) in err
    assert (run / "metrics.csv").read_text() == METRICS


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_resumed_log_is_written_beside_and_renamed(tmp_path, monkeypatch):
    (tmp_path / "metrics.csv").write_text(METRICS)
    logger = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="", keep_until_step=5)
    with monkeypatch.context() as m:

        def full(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        m.setattr(os, "fsync", full)
        with pytest.raises(OutputError) as raised:
            _ = logger.experiment
    message = str(raised.value)
    assert "\n" not in message and "metrics.csv" in message and "No space left on device" in message
    assert (tmp_path / "metrics.csv").read_text() == METRICS  # the log as it was, not deleted by Lightning
    assert _temps(tmp_path) == []
    experiment = logger.experiment  # space again: the log is cut where the checkpoint was saved
    assert [(r["epoch"], r["step"]) for r in _rows(tmp_path / "metrics.csv")] == [("", "2"), ("0", "2"), ("1", "5")]
    assert experiment.metrics_keys == ["epoch", "step", "train/loss", "val/2afc/mean"]
    assert _temps(tmp_path) == []


# --- through a real fit (slow) ---------------------------------------------------------------------------
@pytest.mark.slow
def test_a_resume_after_its_holder_died_trains_on_saving_atomically(trained_run, tmp_path, monkeypatch, no_wandb):
    """The claim of a killed fit is taken over; the resumed run's checkpoints go through `AtomicCheckpointIO`."""
    assert not (trained_run["run"] / CLAIM).exists()  # a finished fit gives its claim up
    runs = tmp_path / "runs"
    run = runs / "R1"
    shutil.copytree(trained_run["run"], run)
    before = _rows(run / "metrics.csv")
    (run / CLAIM).write_text(f"{_dead_pid()}\n")
    saved = []
    real = AtomicCheckpointIO.save_checkpoint

    def counted(self, checkpoint, path, storage_options=None):
        saved.append(Path(path).name)
        return real(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", counted)
    assert main(_resume(runs, trained_run["data"], "--trainer.max_epochs", "3")) == 0
    assert "last.ckpt" in saved
    assert torch.load(run / "last.ckpt", weights_only=True)["epoch"] == 2
    rows = _rows(run / "metrics.csv")
    epochs = [int(r["epoch"]) for r in rows if r.get("val/2afc/mean")]
    assert epochs == [0, 1, 2]  # each epoch once
    scores = [r["val/2afc/mean"] for r in rows if r.get("val/2afc/mean")]
    assert scores[:2] == [r["val/2afc/mean"] for r in before if r.get("val/2afc/mean")]  # the earlier rows kept
    assert not (run / CLAIM).exists() and _temps(run) == []


@pytest.mark.slow
def test_a_full_disk_during_a_fit_is_one_line_and_keeps_last_ckpt(trained_run, tmp_path, monkeypatch, capfd, no_wandb):
    runs = tmp_path / "runs"
    run = runs / "full"
    real = torch.save
    kept = {}

    def save(obj, f, *a, **k):
        name = getattr(f, "name", "")
        if ".last.ckpt.tmp-" in str(name) and (run / "last.ckpt").is_file():  # the second epoch's last.ckpt
            kept["bytes"] = (run / "last.ckpt").read_bytes()
            f = FullDisk(f, 100_000)
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    argv = ["fit", *training_args(runs, trained_run["data"], "--trainer.max_epochs", "2", "--run_name", "full")]
    capfd.readouterr()
    assert main(argv) == 2
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "disk full" in lines[0], err
    assert str(run / "last.ckpt") in lines[0]
    assert (run / "last.ckpt").read_bytes() == kept["bytes"]  # the first epoch's, whole
    monkeypatch.setattr(torch, "save", real)
    assert torch.load(run / "last.ckpt", weights_only=True)["epoch"] == 0
    assert _temps(run) == [] and not (run / CLAIM).exists()
