"""The NaN watch: training values read back in batches, a NaN loss still stops the run naming its step."""

from __future__ import annotations

import pytest
import torch
from conftest import cpu_trainer, poison_loss_at_call

from lpips_lightning.data.datamodule import JudgmentsDataModule
from lpips_lightning.errors import TrainingError
from lpips_lightning.train.module import LPIPSModule
from lpips_lightning.train.tally import CHECK_EVERY, Tally

pytestmark = pytest.mark.usefixtures("one_thread")


def _dm(path):
    return JudgmentsDataModule(str(path), val=["2afc/val/*", "jnd/val/*"], batch_size=4)


def test_tally_reads_back_the_first_nan_step_and_the_means():
    tally = Tally(first_step=10)
    judge = torch.tensor([0.0, 1.0])
    tally.add(torch.tensor([1.0, 3.0]), torch.tensor([0.1, 0.9]), torch.tensor([0.2, 0.1]), judge)
    assert not tally.due() and tally.read() is None and tally.loss_mean() == 2.0
    tally.add(torch.tensor([float("nan")] * CHECK_EVERY), torch.zeros(2), torch.zeros(2), judge)
    assert tally.due() and tally.read() == 12  # the third step recorded, counted from step 10
    with pytest.raises(TrainingError, match="weights became NaN or infinite by step 4 "):
        tally.check(epoch=0, trained=[torch.tensor([float("inf")])], step=5)


@pytest.mark.slow
def test_nan_loss_stops_naming_the_step(bapps_h5, tmp_path):
    model = LPIPSModule(variant="lin", pretrained=False)
    poison_loss_at_call(model, 2)
    with pytest.raises(TrainingError, match="NaN or infinite at step 1"):
        cpu_trainer(tmp_path, limit_train_batches=3).fit(model, _dm(bapps_h5))


@pytest.mark.slow
def test_nan_stops_the_run_before_a_mid_epoch_validation_saves_it(bapps_h5, tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint

    model = LPIPSModule(variant="lin", pretrained=False)
    poison_loss_at_call(model, 2)
    saves = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)  # saves when validation ends
    trainer = cpu_trainer(tmp_path, val_check_interval=2, enable_checkpointing=True, callbacks=[saves])
    with pytest.raises(TrainingError, match="NaN or infinite at step 1 "):
        trainer.fit(model, _dm(bapps_h5))
    assert not list((tmp_path / "ckpt").glob("*.ckpt"))  # validation never ran: nothing saved
