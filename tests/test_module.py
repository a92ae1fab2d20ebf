"""LPIPSModule: variants, clamping, learning, precision, resume."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from conftest import cpu_trainer

from lpips_lightning.datamodules import JudgmentsDataModule
from lpips_lightning.errors import ConfigError, TrainingError
from lpips_lightning.module import LPIPSModule


def _trainer(tmp_path, **kw):
    return cpu_trainer(tmp_path, **kw)


def _dm(path, **kw):
    return JudgmentsDataModule(str(path), val=["2afc/val/*", "jnd/val/*"], batch_size=4, **kw)


@pytest.mark.parametrize(
    ("variant", "backbone"),
    [("lin", "alex"), ("lin", "vgg"), ("lin", "squeeze"), ("tune", "alex"), ("tune", "squeeze"), ("scratch", "alex")],
)
def test_fast_dev_run_each_variant(imagenet_cache, bapps_h5, tmp_path, variant, backbone):
    model = LPIPSModule(variant=variant, backbone=backbone)
    before = {k: v.clone() for k, v in model.lpips.net.state_dict().items()}
    heads_before = [h.weight.clone() for h in model.lpips.heads]
    _trainer(tmp_path, fast_dev_run=2).fit(model, _dm(bapps_h5))
    changed = any(not torch.equal(before[k], v) for k, v in model.lpips.net.state_dict().items())
    assert changed == (variant != "lin"), "lin must leave the backbone alone; tune/scratch must train it"
    assert all(not torch.equal(a, h.weight) for a, h in zip(heads_before, model.lpips.heads))
    assert all((h.weight >= 0).all() for h in model.lpips.heads)
    assert "val/2afc/cnn" in model.scores["val"] and "val/jnd_map/cnn" in model.scores["val"]


def test_lin_runs_no_backward_through_the_backbone(bapps_h5):
    model = LPIPSModule(variant="lin", pretrained=False)
    dm = _dm(bapps_h5)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    model.lpips.net.requires_grad_(True)  # even if asked to, lin must not differentiate the backbone
    d0, d1 = model.triplet_distances(batch)
    model.rank_head(d0, d1, batch["judge"]).backward()
    assert all(p.grad is None for p in model.lpips.net.parameters())
    assert all(h.weight.grad is not None and torch.isfinite(h.weight.grad).all() for h in model.lpips.heads)


def test_unknown_choices_list_valid_ones():
    with pytest.raises(ConfigError, match="unknown variant 'fine'; choose one of: lin, tune, scratch"):
        LPIPSModule(variant="fine")
    with pytest.raises(ConfigError, match="unknown loss 'l1'; choose one of: bce_rank, hinge"):
        LPIPSModule(loss="l1", pretrained=False)
    with pytest.raises(ConfigError, match="'scratch' trains a random backbone"):
        LPIPSModule(variant="scratch", pretrained=True)


def test_nan_loss_stops_naming_the_step(bapps_h5, tmp_path):
    model = LPIPSModule(variant="lin", pretrained=False)
    real = model.rank_head.forward
    calls = {"n": 0}

    def poisoned(d0, d1, judge):
        calls["n"] += 1
        loss = real(d0, d1, judge)
        return loss * float("nan") if calls["n"] == 2 else loss

    model.rank_head.forward = poisoned
    with pytest.raises(TrainingError, match="NaN or infinite at step 1"):
        _trainer(tmp_path, limit_train_batches=3).fit(model, _dm(bapps_h5))


def _poison_loss_at_call(model: LPIPSModule, call: int) -> None:
    """The ranking head's `call`-th forward (counted from 1) returns NaN."""
    real = model.rank_head.forward
    calls = {"n": 0}

    def poisoned(d0, d1, judge):
        calls["n"] += 1
        loss = real(d0, d1, judge)
        return loss * float("nan") if calls["n"] == call else loss

    model.rank_head.forward = poisoned


def test_nan_stops_the_run_before_a_mid_epoch_validation_saves_it(bapps_h5, tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint

    model = LPIPSModule(variant="lin", pretrained=False)
    _poison_loss_at_call(model, 2)
    saves = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)  # saves when validation ends
    trainer = _trainer(tmp_path, val_check_interval=2, enable_checkpointing=True, callbacks=[saves])
    with pytest.raises(TrainingError, match="NaN or infinite at step 1 "):
        trainer.fit(model, _dm(bapps_h5))
    assert not list((tmp_path / "ckpt").glob("*.ckpt"))  # validation never ran: nothing saved


def _one_epoch_checkpoint(bapps_h5, tmp_path) -> str:
    torch.manual_seed(0)
    model = LPIPSModule(variant="lin", pretrained=False)
    trainer = _trainer(tmp_path)
    trainer.fit(model, _dm(bapps_h5))
    assert model.global_step == 3
    trainer.save_checkpoint(tmp_path / "one.ckpt")
    return str(tmp_path / "one.ckpt")


def test_nan_after_a_resume_names_the_runs_step(bapps_h5, tmp_path):
    ckpt = _one_epoch_checkpoint(bapps_h5, tmp_path)
    model = LPIPSModule(variant="lin", pretrained=False)
    _poison_loss_at_call(model, 1)  # the first step after the resume: the run's step 3
    with pytest.raises(TrainingError, match="NaN or infinite at step 3 "):
        _trainer(tmp_path, max_epochs=2).fit(model, _dm(bapps_h5), ckpt_path=ckpt)


def test_resume_with_max_steps_steps_the_schedule_once_per_epoch(bapps_h5, tmp_path):
    ckpt = _one_epoch_checkpoint(bapps_h5, tmp_path)
    model = LPIPSModule(variant="lin", pretrained=False, epochs_constant=0, epochs_decay=4)
    trainer = _trainer(tmp_path, max_epochs=-1, max_steps=6)
    trainer.fit(model, _dm(bapps_h5), ckpt_path=ckpt)
    assert model.global_step == 6
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 2  # two finished epochs, each stepped once


def test_checkpoints_of_automatic_optimisation_resume_at_their_step(bapps_h5, tmp_path):
    """Before training took its own steps, checkpoints counted them under automatic optimisation."""
    ckpt = _one_epoch_checkpoint(bapps_h5, tmp_path)
    state = torch.load(ckpt, weights_only=True)
    loops = state["loops"]["fit_loop"]
    manual = loops["epoch_loop.manual_optimization.optim_step_progress"]
    loops["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]["step"] = {
        k: dict(v) for k, v in manual.items()
    }
    for counts in manual.values():
        counts.update(ready=0, completed=0)
    torch.save(state, tmp_path / "old.ckpt")
    model = LPIPSModule(variant="lin", pretrained=False)
    _trainer(tmp_path, max_epochs=2).fit(model, _dm(bapps_h5), ckpt_path=str(tmp_path / "old.ckpt"))
    assert model.global_step == 6


def test_integer_batch_limits_keep_one_step_per_batch(bapps_h5, tmp_path):
    """The feature cache takes 64 minibatches per batch, except where the run counts batches itself."""
    model = LPIPSModule(variant="lin", pretrained=False, feature_cache=True)
    _trainer(tmp_path, max_epochs=2, limit_train_batches=2).fit(model, _dm(bapps_h5))
    assert model.global_step == 4


def test_hinge_loss_trains(bapps_h5, tmp_path):
    model = LPIPSModule(variant="lin", pretrained=False, loss="hinge")
    _trainer(tmp_path, fast_dev_run=2).fit(model, _dm(bapps_h5))
    assert all((h.weight >= 0).all() for h in model.lpips.heads)


def test_bf16_mixed_on_cpu(bapps_h5, tmp_path):
    model = LPIPSModule(variant="tune", pretrained=False)
    _trainer(tmp_path, fast_dev_run=2, precision="bf16-mixed").fit(model, _dm(bapps_h5))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert 0.0 <= model.scores["val"]["val/2afc/mean"] <= 1.0


def test_lr_schedule_matches_the_original(bapps_h5, tmp_path):
    model = LPIPSModule(variant="lin", pretrained=False, epochs_constant=2, epochs_decay=2)
    seen = []

    class Record(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    _trainer(tmp_path, max_epochs=4, limit_train_batches=1, limit_val_batches=0, callbacks=[Record()]).fit(
        model, _dm(bapps_h5)
    )
    assert seen == pytest.approx([1e-4, 1e-4, 1e-4, 0.5e-4])


def test_loss_falls_on_a_tiny_learnable_set(tmp_path):
    """Heads over a random backbone learn the demo's simulated judgments: the epoch loss falls."""
    from lpips_lightning.datamodules.demo import build_demo

    data = build_demo(tmp_path / "tiny.h5", seed=1, n_train=300, n_val=50, n_jnd=20)
    torch.manual_seed(0)
    model = LPIPSModule(variant="lin", pretrained=False, lr=1e-2, dropout=False)
    losses, batch_losses = [], []

    class EpochLoss(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            batch_losses.append(float(trainer.callback_metrics["train/loss"]))  # logged every step here

        def on_train_epoch_end(self, trainer, pl_module):
            losses.append(sum(batch_losses) / len(batch_losses))
            batch_losses.clear()

    dm = JudgmentsDataModule(str(data), val=["2afc/val/*"], batch_size=25)
    _trainer(tmp_path, max_epochs=6, limit_val_batches=0, log_every_n_steps=1, callbacks=[EpochLoss()]).fit(model, dm)
    assert len(losses) == 6
    assert losses[-1] < losses[0] - 0.02, losses
