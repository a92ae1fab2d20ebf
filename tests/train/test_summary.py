"""The fit summary tells real validations only, with their own epoch; the best checkpoint follows the data.

Lightning's sanity check (two batches before the first step) is not a validation of the run: a
fit that ends before its first validation says "no validation ran" instead of showing the
sanity check's scores. Tiny CLI fits (3 batches an epoch, random alex): slow, but seconds each.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import training_args

from lpips_lightning.cli.main import main

slow = pytest.mark.slow


@pytest.fixture(autouse=True)
def no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


def _fit(runs: Path, data: Path, capsys, *extra: str) -> tuple[str, Path]:
    """Run a tiny fit named r (12 training items, batch 4); its summary (after the banner) and its folder."""
    assert main(["fit", *training_args(runs, data, "--run_name", "r", *extra)]) == 0
    out = capsys.readouterr().out
    assert "=== lpips-lightning: fit finished ===" in out
    return out.split("=== lpips-lightning: fit finished ===", 1)[1], runs / "r"


def _validations(run: Path) -> list[dict]:
    """The validation rows of the run's metrics.csv (none when nothing was logged)."""
    if not (run / "metrics.csv").exists():
        return []
    with open(run / "metrics.csv") as fh:
        return [r for r in csv.DictReader(fh) if r.get("val/2afc/mean") or r.get("val/jnd_map/mean")]


def _printed_scores(summary: str) -> dict[str, float]:
    lines = summary.split("last validation", 1)[1].splitlines()[1:]
    return {ln.split()[0]: float(ln.split()[1]) for ln in lines if ln.startswith("  ")}


@slow
@pytest.mark.parametrize(
    ("extra", "why"),
    [
        # stops before the epoch's end, where validation would run
        (["--trainer.max_steps", "1"], "--trainer.max_steps 1 ended the fit before the end of an epoch"),
        (["--trainer.max_epochs", "0"], "no training step ran"),
        (["--trainer.limit_train_batches", "0"], "no training step ran"),
        (["--trainer.limit_val_batches", "0"], "validation is off"),
    ],
    ids=["max_steps-shorter-than-an-epoch", "max_epochs-0", "limit_train_batches-0", "limit_val_batches-0"],
)
def test_a_fit_without_a_validation_says_why(module_bapps_h5, tmp_path, capsys, extra, why):
    summary, run = _fit(tmp_path, module_bapps_h5, capsys, "--trainer.max_epochs", "1", *extra)
    assert f"no validation ran: {why}" in summary and "so there is no best checkpoint" in summary
    assert "last validation" not in summary and "val/2afc/cnn" not in summary  # not the sanity check's scores
    assert "best val/" not in summary and not list(run.glob("best-*.ckpt"))
    assert not _validations(run)


@slow
def test_the_last_validation_is_shown_with_its_own_epoch(module_bapps_h5, tmp_path, capsys):
    summary, run = _fit(
        tmp_path, module_bapps_h5, capsys, "--trainer.max_epochs", "3", "--trainer.check_val_every_n_epoch", "2"
    )
    (row,) = _validations(run)  # epochs 0, 1, 2 trained; validated after epoch 1 only
    assert row["epoch"] == "1"
    assert "last validation (after epoch 1):" in summary
    printed = _printed_scores(summary)
    assert set(printed) == {"val/2afc/cnn", "val/jnd_map/cnn", "val/2afc/mean", "val/jnd_map/mean"}
    for key, value in printed.items():
        assert value == pytest.approx(float(row[key]), abs=5e-5)  # that validation's scores, not another's


@slow
def test_a_validation_inside_an_epoch_shows_its_step(module_bapps_h5, tmp_path, capsys):
    summary, run = _fit(
        tmp_path, module_bapps_h5, capsys, "--trainer.max_epochs", "1", "--trainer.val_check_interval", "2"
    )
    assert len(_validations(run)) == 1  # after batch 2 of 3; the epoch's end is not a multiple of 2
    assert "last validation (in epoch 0, at step 2):" in summary


@slow
def test_validation_on_jnd_groups_only_keeps_the_best_by_jnd_map(module_bapps_h5, tmp_path, capsys):
    summary, run = _fit(tmp_path, module_bapps_h5, capsys, "--trainer.max_epochs", "2", "--data.val", "[jnd/val/*]")
    (best,) = run.glob("best-*.ckpt")
    rows = _validations(run)
    top = max(rows, key=lambda r: float(r["val/jnd_map/mean"]))
    assert best.name == f"best-epoch{int(top['epoch']):02d}-jndmap{float(top['val/jnd_map/mean']):.4f}.ckpt"
    assert f"best val/jnd_map/mean: {float(top['val/jnd_map/mean']):.4f}" in summary
    assert f"best checkpoint: {best}" in summary and (run / "last.ckpt").is_file()
    assert "last validation (after epoch 1):" in summary and "val/2afc" not in summary
