"""A resumed run continues the run: its step count, its schedule, its NaN watch, older checkpoints' counts."""

from __future__ import annotations

import pytest
import torch
from conftest import cpu_trainer, poison_loss_at_call

from lpips_lightning.data.datamodule import JudgmentsDataModule
from lpips_lightning.errors import TrainingError
from lpips_lightning.train.module import LPIPSModule

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _dm(path):
    return JudgmentsDataModule(str(path), val=["2afc/val/*", "jnd/val/*"], batch_size=4)


@pytest.fixture(scope="module")
def one_epoch(module_bapps_h5, tmp_path_factory) -> str:
    """A checkpoint after one epoch of lin (3 steps), shared by the tests of this module."""
    root = tmp_path_factory.mktemp("one_epoch")
    torch.manual_seed(0)
    model = LPIPSModule(variant="lin", pretrained=False)
    trainer = cpu_trainer(root)
    trainer.fit(model, _dm(module_bapps_h5))
    assert model.global_step == 3
    trainer.save_checkpoint(root / "one.ckpt")
    return str(root / "one.ckpt")


def test_nan_after_a_resume_names_the_runs_step(module_bapps_h5, one_epoch, tmp_path):
    model = LPIPSModule(variant="lin", pretrained=False)
    poison_loss_at_call(model, 1)  # the first step after the resume: the run's step 3
    with pytest.raises(TrainingError, match="NaN or infinite at step 3 "):
        cpu_trainer(tmp_path, max_epochs=2).fit(model, _dm(module_bapps_h5), ckpt_path=one_epoch)


def test_resume_with_max_steps_steps_the_schedule_once_per_epoch(module_bapps_h5, one_epoch, tmp_path):
    model = LPIPSModule(variant="lin", pretrained=False, epochs_constant=0, epochs_decay=4)
    trainer = cpu_trainer(tmp_path, max_epochs=-1, max_steps=6)
    trainer.fit(model, _dm(module_bapps_h5), ckpt_path=one_epoch)
    assert model.global_step == 6
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 2  # two finished epochs, each stepped once


def test_checkpoints_of_automatic_optimisation_resume_at_their_step(module_bapps_h5, one_epoch, tmp_path):
    """Before training took its own steps, checkpoints counted them under automatic optimisation."""
    state = torch.load(one_epoch, weights_only=True)
    loops = state["loops"]["fit_loop"]
    manual = loops["epoch_loop.manual_optimization.optim_step_progress"]
    loops["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]["step"] = {
        k: dict(v) for k, v in manual.items()
    }
    for counts in manual.values():
        counts.update(ready=0, completed=0)
    torch.save(state, tmp_path / "old.ckpt")
    model = LPIPSModule(variant="lin", pretrained=False)
    cpu_trainer(tmp_path, max_epochs=2).fit(model, _dm(module_bapps_h5), ckpt_path=str(tmp_path / "old.ckpt"))
    assert model.global_step == 6
