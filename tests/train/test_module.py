"""LPIPSModule: what each variant trains, the heads' clamp, losses, precision, learning, per-subset scores."""

from __future__ import annotations

import os

import pytest
import pytorch_lightning as pl
import torch
from conftest import cpu_trainer

from lpips_lightning.data.datamodule import JudgmentsDataModule
from lpips_lightning.train.module import LPIPSModule
from lpips_lightning.train.scoring import subset_names

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def all_threads():
    """The demo's 64x64 batches of 50 are not tiny: the threads the machine has."""
    before = torch.get_num_threads()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    yield
    torch.set_num_threads(before)


def _dm(path, **kw):
    return JudgmentsDataModule(str(path), val=["2afc/val/*", "jnd/val/*"], batch_size=4, **kw)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("variant", "backbone"),
    [("lin", "alex"), ("lin", "vgg"), ("lin", "squeeze"), ("tune", "alex"), ("tune", "squeeze"), ("scratch", "alex")],
)
def test_fast_dev_run_each_variant(imagenet_cache, bapps_h5, tmp_path, variant, backbone):
    model = LPIPSModule(variant=variant, backbone=backbone)
    before = {k: v.clone() for k, v in model.lpips.net.state_dict().items()}
    heads_before = [h.weight.clone() for h in model.lpips.heads]
    cpu_trainer(tmp_path, fast_dev_run=2).fit(model, _dm(bapps_h5))
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


@pytest.mark.slow
def test_hinge_loss_trains(bapps_h5, tmp_path):
    model = LPIPSModule(variant="lin", pretrained=False, loss="hinge")
    cpu_trainer(tmp_path, fast_dev_run=2).fit(model, _dm(bapps_h5))
    assert all((h.weight >= 0).all() for h in model.lpips.heads)


@pytest.mark.slow
def test_bf16_mixed_on_cpu(bapps_h5, tmp_path):
    model = LPIPSModule(variant="tune", pretrained=False)
    cpu_trainer(tmp_path, fast_dev_run=2, precision="bf16-mixed").fit(model, _dm(bapps_h5))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert 0.0 <= model.scores["val"]["val/2afc/mean"] <= 1.0


@pytest.mark.slow
def test_loss_falls_on_a_tiny_learnable_set(tmp_path):
    """Heads over a random backbone learn the demo's simulated judgments: the epoch loss falls."""
    from lpips_lightning.data.demo import build_demo

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
    trainer = cpu_trainer(tmp_path, max_epochs=6, limit_val_batches=0, log_every_n_steps=1, callbacks=[EpochLoss()])
    trainer.fit(model, dm)
    assert len(losses) == 6
    assert losses[-1] < losses[0] - 0.02, losses


@pytest.mark.slow
def test_bf16_run_matches_fp32_on_the_demo(tmp_path, monkeypatch, all_threads):
    """Mixed precision must not change results: validation 2AFC within 0.5 points of fp32 (one epoch of the demo)."""
    import csv
    from pathlib import Path

    from lpips_lightning.cli.main import main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    config = Path(__file__).resolve().parents[2] / "configs/demo.yaml"
    scores = {}
    for precision in ("32", "bf16-mixed"):
        args = ["fit", "--config", str(config), "--trainer.precision", precision, "--trainer.max_epochs", "1"]
        args += ["--runs_dir", str(tmp_path), "--run_name", precision, "--trainer.enable_progress_bar", "false"]
        assert main(args) == 0
        with open(tmp_path / precision / "metrics.csv") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("val/2afc/mean")]
        scores[precision] = float(rows[-1]["val/2afc/mean"])
    assert abs(scores["32"] - scores["bf16-mixed"]) <= 0.005, scores


def test_subset_names_are_short_unless_they_repeat():
    groups = ["2afc/val/cnn", "2afc/test/cnn", "2afc/val/trad", "jnd/val/cnn"]
    assert subset_names(groups) == ["val_cnn", "test_cnn", "trad", "cnn"]


def test_the_module_trains_its_metric_in_training_mode():
    """LPIPS comes back in eval mode (as the lpips package's); the module's copy must train (dropout on)."""
    assert LPIPSModule(variant="lin", pretrained=False).lpips.training
