"""Batches of several optimizer steps: logs on the optimizer-step axis, Lightning's settings given back."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import pytorch_lightning as pl
from conftest import cpu_trainer
from pytorch_lightning.loggers import CSVLogger

from lpips_lightning.data import judgments
from lpips_lightning.data.datamodule import JudgmentsDataModule
from lpips_lightning.train.module import LPIPSModule

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> dict[str, tuple[dict[str, list[int]], int]]:
    """{plain, cached}: ({column: [steps with a value]} of metrics.csv, log_every_n_steps after fit).

    A 2-epoch CPU fit on 80 triplets in minibatches of 1, logging every 30 steps; the feature
    cache takes 64 minibatches per batch.
    """
    path = tmp_path_factory.mktemp("logged")
    data = path / "d.h5"
    rng = np.random.default_rng(0)
    with judgments.write(data) as w:
        for name, n in (("2afc/train/t", 80), ("2afc/val/t", 4)):
            arrays = {k: rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8) for k in ("ref", "p0", "p1")}
            w.fill(w.create_group(name, n, (32, 32)), 0, {**arrays, "judge": rng.random(n).astype(np.float32)})
    out = {}
    for name, cache in (("plain", False), ("cached", True)):
        root = path / name
        trainer = cpu_trainer(root, max_epochs=2, logger=CSVLogger(root, name="", version=""), log_every_n_steps=30)
        dm = JudgmentsDataModule(str(data), batch_size=1, index_only=cache, steps_per_batch=64 if cache else 1)
        trainer.fit(LPIPSModule(variant="lin", pretrained=False, feature_cache=cache), dm)
        with open(root / "metrics.csv") as fh:
            rows = list(csv.DictReader(fh))
        columns = {c: [int(r["step"]) for r in rows if r[c]] for c in ("train/loss", "val/2afc/mean", "train/2afc")}
        out[name] = columns, trainer.log_every_n_steps
    return out


def test_batches_of_many_steps_log_on_the_optimizer_step_axis(logged):
    """The feature cache takes 64 minibatch steps per batch; the logs still count optimizer steps."""
    (plain, plain_every), (cached, cached_every) = logged["plain"], logged["cached"]
    assert plain_every == cached_every == 30  # the Trainer's setting is given back after fit
    assert plain["train/loss"] == [29, 59, 89, 119, 149]
    # batches 0-63 and 64-79 of epoch 0, 80-143 and 144-159 of epoch 1: a batch logs when it crosses 30, 60, 90...
    assert cached["train/loss"] == [63, 143, 159]
    assert cached["val/2afc/mean"] == plain["val/2afc/mean"] == [79, 159]
    assert cached["train/2afc"] == plain["train/2afc"] == [79, 159]


def test_a_failed_fit_does_not_leave_its_logging_switch_on_the_trainer(bapps_h5, tmp_path):
    class Boom(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            raise RuntimeError("boom")

    trainer = cpu_trainer(tmp_path, max_epochs=1, log_every_n_steps=30, callbacks=[Boom()])
    dm = JudgmentsDataModule(str(bapps_h5), batch_size=1, index_only=True, steps_per_batch=64)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(LPIPSModule(variant="lin", pretrained=False, feature_cache=True), dm)
    assert trainer.log_every_n_steps in (0, 1)  # the per-batch switch, left by the failed fit
    trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, Boom)]
    model = LPIPSModule(variant="lin", pretrained=False, feature_cache=True)
    trainer.fit(model, dm)
    assert model.cadence.log_every is None and trainer.log_every_n_steps == 30  # the user's value, not the switch's
