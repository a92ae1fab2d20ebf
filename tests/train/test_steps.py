"""The step engine: the lean computation, batches of several steps, the feature cache, on-device data, compile.

Every fast path reaches the plain path's distances, gradients and weights.
"""

from __future__ import annotations

import logging

import pytest
import pytorch_lightning as pl
import torch
from conftest import assert_cache_matches_full, cpu_trainer, feature_cache_steps

from lpips_lightning.data.datamodule import JudgmentsDataModule
from lpips_lightning.train.module import LPIPSModule
from lpips_lightning.train.steps import Steps, capture_refusal

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("variant", ["lin", "tune"])
def test_lean_training_loss_equals_the_plain_lpips_computation(variant):
    """Both taps' differences at once and the spatial mean before the heads: the same loss and gradients."""
    torch.manual_seed(0)
    model = LPIPSModule(variant=variant, pretrained=False, dropout=False)
    model.configure_model()
    with torch.no_grad():
        for h in model.lpips.heads:
            h.weight.uniform_(0, 1)
    model.train()
    ref, p0, p1 = (torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8) for _ in range(3))
    judge = torch.rand(3)
    params = [p for p in model.parameters() if p.requires_grad]
    lean, d0, d1 = Steps(model.lpips, model.rank_head, model.backbone_pass).loss(ref, p0, p1, judge)
    plain_d0, plain_d1 = model.lpips(ref, p0), model.lpips(ref, p1)  # 1x1 conv heads over whole maps
    plain = model.rank_head(plain_d0, plain_d1, judge)
    torch.testing.assert_close(d0, plain_d0, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(d1, plain_d1, rtol=1e-5, atol=1e-8)
    for a, b in zip(torch.autograd.grad(lean, params), torch.autograd.grad(plain, params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-8)


def test_feature_cache_gives_the_same_distances_and_gradients(bapps_h5):
    torch.manual_seed(0)
    model = LPIPSModule(variant="lin", pretrained=False, dropout=False, feature_cache=True)
    with torch.no_grad():
        for h in model.lpips.heads:
            h.weight.uniform_(0, 1)
    dm = feature_cache_steps(bapps_h5, model)
    model.steps.build_cache(chunk=5)  # chunks smaller than the data: stitched in order
    dataset = dm.datasets["train"][0]
    assert dataset.index_only and "ref" not in dataset.__getitems__([0, 1])
    index = torch.tensor([3, 0, 7, 11])
    assert_cache_matches_full(model, dataset, index)


@pytest.mark.slow
def test_feature_cache_trains_through_lightning(bapps_h5, tmp_path):
    model = LPIPSModule(variant="lin", pretrained=False, feature_cache=True)
    before = [h.weight.clone() for h in model.lpips.heads]
    trainer = cpu_trainer(tmp_path, max_epochs=2)
    trainer.fit(model, JudgmentsDataModule(str(bapps_h5), batch_size=4, index_only=True, steps_per_batch=64))
    assert model.steps.cache_shape == (2, 12, sum(model.lpips.net.channels))
    assert model.steps.cache is None  # released at fit end
    assert any(not torch.equal(a, h.weight) for a, h in zip(before, model.lpips.heads))
    assert all((h.weight >= 0).all() for h in model.lpips.heads)
    assert "val/2afc/cnn" in model.scores["val"]


@pytest.mark.slow
def test_on_device_store_gives_the_same_training_as_the_loader(bapps_h5, tmp_path):
    weights = {}
    for on_device in (False, True):
        torch.manual_seed(0)
        model = LPIPSModule(variant="tune", pretrained=False, dropout=False)
        dm = JudgmentsDataModule(str(bapps_h5), batch_size=4, on_device=on_device)
        trainer = cpu_trainer(tmp_path, max_epochs=2)
        trainer.fit(model, dm)
        assert dm.datasets["train"][0].index_only == on_device
        weights[on_device] = model.state_dict()
    for key, value in weights[False].items():
        torch.testing.assert_close(weights[True][key], value, msg=key)


class BatchSizes(pl.Callback):
    """The size of every training batch Lightning hands the module."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append(len(batch["judge"]))


@pytest.mark.slow
def test_batches_of_several_minibatches_train_as_single_steps_do(bapps_h5, tmp_path):
    """Several minibatches per Lightning batch (the captured step's batches, run eagerly here): the same weights."""
    weights = {}
    for per_call in (1, 2):
        torch.manual_seed(0)
        model = LPIPSModule(variant="tune", pretrained=False)  # dropout on: the same draws in the same order
        sizes = BatchSizes()
        data = JudgmentsDataModule(str(bapps_h5), batch_size=5, steps_per_batch=per_call)
        cpu_trainer(tmp_path, max_epochs=2, callbacks=[sizes]).fit(model, data)
        assert sizes.seen == ([5, 5, 2] if per_call == 1 else [10, 2]) * 2
        assert model.global_step == 2 * 3  # 12 items in minibatches of 5, 5, 2: a shorter last one
        weights[per_call] = model.state_dict()
    for key, value in weights[1].items():
        torch.testing.assert_close(weights[2][key], value, rtol=1e-6, atol=1e-8, msg=key)


@pytest.mark.slow
def test_max_steps_is_exact_when_a_batch_holds_many_steps(bapps_h5, tmp_path):
    """The feature cache runs 64 minibatches per batch (the captured step 8): a run still stops at max_steps."""
    model = LPIPSModule(variant="lin", pretrained=False, feature_cache=True)
    data = JudgmentsDataModule(str(bapps_h5), batch_size=4, index_only=True, steps_per_batch=64)
    cpu_trainer(tmp_path, max_epochs=3, max_steps=5).fit(model, data)
    assert model.global_step == 5  # 3 minibatches an epoch: 3, then 2 of the second epoch's 3


def test_runs_that_cannot_be_captured_say_why():
    assert "DDP" in capture_refusal(2, "bf16-mixed")
    assert "16-mixed" in capture_refusal(1, "16-mixed")
    assert capture_refusal(1, "bf16-mixed") is None and capture_refusal(1, "32-true") is None


@pytest.mark.slow
def test_capture_true_on_a_cpu_says_it_trains_eagerly(bapps_h5, tmp_path, caplog):
    model = LPIPSModule(variant="lin", pretrained=False, capture=True)
    with caplog.at_level(logging.INFO):
        cpu_trainer(tmp_path, limit_train_batches=1).fit(model, JudgmentsDataModule(str(bapps_h5), batch_size=4))
    assert "CUDA graphs need a CUDA device" in caplog.text
    assert not model.steps.capture and model.steps.replays == 0


def _compiled_and_eager_states(path, root, **model_args) -> dict[bool, dict]:
    states = {}
    for compile in (False, True):
        torch.manual_seed(0)
        model = LPIPSModule(pretrained=False, dropout=False, compile=compile, **model_args)
        cpu_trainer(root, max_epochs=1, limit_train_batches=2, limit_val_batches=0).fit(
            model, JudgmentsDataModule(str(path), batch_size=4)
        )
        states[compile] = model.state_dict()
    return states


@pytest.mark.slow
@pytest.mark.parametrize(
    ("variant", "backbone", "args"),
    [
        ("tune", "alex", None),
        ("lin", "torchvision:resnet18", None),  # a frozen backbone with batch norm: kept in eval mode
        ("tune", "timm:vit_tiny_patch16_224", dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)),
    ],
)
def test_compiled_step_matches_eager(bapps_h5, tmp_path, variant, backbone, args):
    if backbone.startswith("timm:"):
        pytest.importorskip("timm")
    states = _compiled_and_eager_states(bapps_h5, tmp_path, variant=variant, backbone=backbone, backbone_args=args)
    for key, value in states[False].items():
        torch.testing.assert_close(states[True][key], value, rtol=1e-4, atol=1e-6, msg=key)
