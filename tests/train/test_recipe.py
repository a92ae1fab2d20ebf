"""The recipe's options: refused in one line naming the valid choices; the original's learning-rate schedule."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
from conftest import cpu_trainer

from lpips_lightning.data.datamodule import JudgmentsDataModule
from lpips_lightning.errors import ConfigError
from lpips_lightning.train.module import LPIPSModule
from lpips_lightning.train.recipe import lr_factor

pytestmark = pytest.mark.usefixtures("one_thread")


def test_unknown_choices_list_valid_ones():
    with pytest.raises(ConfigError, match="unknown variant 'fine'; choose one of: lin, tune, scratch"):
        LPIPSModule(variant="fine")
    with pytest.raises(ConfigError, match="unknown loss 'l1'; choose one of: bce_rank, hinge"):
        LPIPSModule(loss="l1", pretrained=False)
    with pytest.raises(ConfigError, match="'scratch' trains a random backbone"):
        LPIPSModule(variant="scratch", pretrained=True)
    with pytest.raises(ConfigError, match="feature_cache needs a frozen backbone"):
        LPIPSModule(variant="tune", pretrained=False, feature_cache=True)
    with pytest.raises(ConfigError, match="unknown compile 'fast'"):
        LPIPSModule(variant="lin", pretrained=False, compile="fast")
    with pytest.raises(ConfigError, match="capture"):
        LPIPSModule(variant="lin", pretrained=False, capture="sometimes")


def test_lr_factor_is_the_originals_schedule():
    assert [round(lr_factor(e, 5, 5), 6) for e in range(10)] == [1.0] * 6 + [0.8, 0.6, 0.4, 0.2]
    assert lr_factor(7, 5, 0) == 1.0


@pytest.mark.slow
def test_lr_schedule_matches_the_original(bapps_h5, tmp_path):
    model = LPIPSModule(variant="lin", pretrained=False, epochs_constant=2, epochs_decay=2)
    seen = []

    class Record(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = cpu_trainer(tmp_path, max_epochs=4, limit_train_batches=1, limit_val_batches=0, callbacks=[Record()])
    trainer.fit(model, JudgmentsDataModule(str(bapps_h5), batch_size=4))
    assert seen == pytest.approx([1e-4, 1e-4, 1e-4, 0.5e-4])
