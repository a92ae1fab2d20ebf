"""A run's W&B logger (`train.loggers`): its files in the run folder or under $WANDB_DIR, and a resume continues it."""

from __future__ import annotations

import pytest
import wandb
from pytorch_lightning.loggers import WandbLogger

from lpips_lightning.errors import OutputError
from lpips_lightning.train.loggers import make_loggers, wandb_folders, wandb_run_id


def _wandb(loggers: list) -> WandbLogger:
    (logger,) = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    return logger


@pytest.mark.parametrize("wandb_dir", [True, False])
def test_the_run_folder_names_its_w_and_b_run_and_a_resume_continues_it(tmp_path, monkeypatch, wandb_dir):
    monkeypatch.setenv("WANDB_MODE", "offline")
    if wandb_dir:
        monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    else:
        monkeypatch.delenv("WANDB_DIR")
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    loggers = make_loggers(run_dir, "r1", "p")
    logger = _wandb(loggers)
    logger.log_metrics({"x": 1.0}, step=0)
    run_id = wandb_run_id(run_dir)
    assert run_id and logger.version == run_id == logger.experiment.id
    assert wandb.run is not None and wandb.run.id == run_id
    root = tmp_path / "elsewhere" if wandb_dir else run_dir
    (folder,) = wandb_folders(run_dir)
    assert folder.parent == root / "wandb" and folder.name.endswith(f"-{run_id}")
    assert (run_dir / "wandb").exists() is not wandb_dir  # under $WANDB_DIR when set, nothing in the run folder
    resumed = _wandb(make_loggers(run_dir, "r1", "p", resume_step=3))  # the open run ends first: not taken over
    assert wandb.run is None
    assert resumed.version == run_id and wandb_run_id(run_dir) == run_id
    fresh = tmp_path / "runs" / "r2"
    fresh.mkdir()
    assert _wandb(make_loggers(fresh, "r2", "p")).version != run_id


def test_a_damaged_w_and_b_id_is_one_line_naming_the_file(tmp_path):
    (tmp_path / "wandb-run-id").write_text("bad id/../x*\n")
    with pytest.raises(OutputError, match=r"wandb-run-id: 'bad id/../x\*' is not a W&B run id"):
        wandb_run_id(tmp_path)
    (tmp_path / "wandb-run-id").write_text("")
    with pytest.raises(OutputError, match="is not a W&B run id"):  # not silently a new W&B run
        wandb_run_id(tmp_path)


def test_a_w_and_b_run_the_user_opened_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    mine = wandb.init(project="mine")
    try:
        (tmp_path / "r").mkdir()
        make_loggers(tmp_path / "r", "r", "p")
        mine.log({"x": 1.0})  # still open: a finished run would refuse this
    finally:
        mine.finish()
