"""What the data module must know of the model arrives as its own options, linked at parse time (never asked)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import cpu_trainer, parsed_trainer_options
from jsonargparse import Namespace

from lpips_lightning.cli.main import main
from lpips_lightning.cli.training import LPIPSCLI
from lpips_lightning.data.datamodule import JudgmentsDataModule
from lpips_lightning.errors import ConfigError
from lpips_lightning.train import links
from lpips_lightning.train.module import LPIPSModule

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[2]


def test_steps_per_batch_follows_the_model_and_the_trainer(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cuda = dict(accelerator="gpu", devices=1)
    assert links.steps_per_batch(True, "auto", parsed_trainer_options()) == 64  # the feature cache, anywhere
    assert links.steps_per_batch(False, "auto", parsed_trainer_options(**cuda, precision="bf16-mixed")) == 8
    assert links.steps_per_batch(False, True, parsed_trainer_options()) == 8  # auto: the one GPU there is
    assert links.steps_per_batch(False, False, parsed_trainer_options(**cuda)) == 1
    assert links.steps_per_batch(False, "auto", parsed_trainer_options(accelerator="gpu", devices=2)) == 1  # DDP
    assert links.steps_per_batch(False, "auto", parsed_trainer_options(**cuda, num_nodes=2)) == 1
    assert links.steps_per_batch(False, "auto", parsed_trainer_options(**cuda, precision="16-mixed")) == 1
    assert links.steps_per_batch(False, "auto", parsed_trainer_options(accelerator="cpu")) == 1
    checkpoint = Namespace(class_path="ModelCheckpoint", init_args=Namespace(every_n_train_steps=100))
    for counted in (
        dict(limit_train_batches=2.0),  # as jsonargparse parses 2: Lightning takes 2 batches
        dict(fast_dev_run=3),
        dict(val_check_interval=100),
        dict(overfit_batches=4),
        dict(callbacks=[checkpoint]),
    ):
        assert links.steps_per_batch(True, "auto", parsed_trainer_options(**counted)) == 1, counted
    assert links.steps_per_batch(True, "auto", parsed_trainer_options(limit_train_batches=0.5)) == 64  # a fraction
    assert links.index_only(True) and not links.index_only(False)


class Parsed(Exception):
    """Raised where `fit` would make its Trainer: the data module it built is the argument."""


def _linked_data(monkeypatch, *args: str) -> JudgmentsDataModule:
    def stop(self, **kwargs):
        raise Parsed(self.datamodule)

    monkeypatch.setattr(LPIPSCLI, "instantiate_trainer", stop)
    with pytest.raises(Parsed) as parsed:
        main(["fit", "--config", str(ROOT / "configs/demo.yaml"), *args])
    return parsed.value.args[0]


def test_fit_links_what_the_data_module_is_told(monkeypatch):
    """jsonargparse leaves link targets out of --print_config; the run's hparams.yaml records them."""
    data = _linked_data(monkeypatch)
    assert data.index_only is False and data.steps_per_batch == 1  # the demo trains on the CPU
    data = _linked_data(monkeypatch, "--model.feature_cache", "true")
    assert data.index_only is True and data.steps_per_batch == 64
    assert data.hparams["steps_per_batch"] == 64  # logged with the run's hyperparameters
    data = _linked_data(monkeypatch, "--model.feature_cache", "true", "--config", str(ROOT / "configs/debug.yaml"))
    assert data.steps_per_batch == 1  # fast_dev_run counts batches


@pytest.mark.slow
def test_integer_batch_limits_keep_one_step_per_batch(bapps_h5, tmp_path):
    """The feature cache takes 64 minibatches per batch, except where the run counts batches itself."""
    per_batch = links.steps_per_batch(True, "auto", parsed_trainer_options(limit_train_batches=2))
    assert per_batch == 1
    model = LPIPSModule(variant="lin", pretrained=False, feature_cache=True)
    data = JudgmentsDataModule(str(bapps_h5), batch_size=4, index_only=True, steps_per_batch=per_batch)
    cpu_trainer(tmp_path, max_epochs=2, limit_train_batches=2).fit(model, data)
    assert model.global_step == 4


def test_a_hand_built_pair_that_does_not_fit_is_refused_in_one_line(bapps_h5, tmp_path):
    model = LPIPSModule(variant="lin", pretrained=False, feature_cache=True)
    with pytest.raises(ConfigError, match="^data.index_only false with model.feature_cache true: "):
        cpu_trainer(tmp_path).fit(model, JudgmentsDataModule(str(bapps_h5), batch_size=4))
    data = JudgmentsDataModule(str(bapps_h5), batch_size=4, index_only=True, steps_per_batch=64)
    with pytest.raises(ConfigError, match="^data.steps_per_batch 64: the trainer counts batches"):
        cpu_trainer(tmp_path, limit_train_batches=2).fit(model, data)
