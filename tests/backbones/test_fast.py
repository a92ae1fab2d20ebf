"""A frozen backbone's fast copy: the oneDNN-prepacked CPU copy and the bf16 copy train and score as the plain one."""

from __future__ import annotations

import time

import pytest
import pytorch_lightning as pl
import torch
from conftest import cpu_trainer

from lpips_lightning.backbones import fast
from lpips_lightning.backbones.fast import FrozenCopy, prepacked_copy, runs_faster
from lpips_lightning.data.datamodule import JudgmentsDataModule
from lpips_lightning.model.lpips import LPIPS
from lpips_lightning.train.module import LPIPSModule

pytestmark = pytest.mark.usefixtures("one_thread")


def _fit_heads(path, root, prepack: bool, monkeypatch, **module_args) -> tuple[LPIPSModule, list[torch.Tensor]]:
    """Heads after a short fp32 CPU fit, with or without the oneDNN-prepacked frozen backbone."""
    if prepack:  # whatever the timing on a busy machine says: the copy is compared, not timed
        monkeypatch.setattr(fast, "runs_faster", lambda *a: True)
    else:
        monkeypatch.setattr(fast, "prepacked_copy", lambda net, x, timed=True: net)
    pl.seed_everything(0)
    model = LPIPSModule(variant="lin", pretrained=False, **module_args)
    cpu_trainer(root, limit_train_batches=3).fit(model, JudgmentsDataModule(str(path), batch_size=4))
    monkeypatch.undo()
    return model, [h.weight.detach().clone() for h in model.lpips.heads]


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["alex", "squeeze", "torchvision:resnet18"])  # resnet: batch norms folded
def test_prepacked_frozen_backbone_trains_the_same_heads(bapps_h5, tmp_path, monkeypatch, backbone):
    prepacked, fast_heads = _fit_heads(bapps_h5, tmp_path / "fast", True, monkeypatch, backbone=backbone)
    plain, plain_heads = _fit_heads(bapps_h5, tmp_path / "plain", False, monkeypatch, backbone=backbone)
    assert prepacked.frozen.prepacked and not plain.frozen.prepacked
    assert prepacked.frozen.dtype == torch.float32
    for a, b in zip(fast_heads, plain_heads):  # oneDNN's blocked convolutions round a little differently
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert not any(k.startswith("steps") or "frozen" in k for k in prepacked.state_dict())


def test_prepacked_copy_keeps_the_network_where_it_would_compute_differently(monkeypatch):
    from torch.fx.experimental import optimization

    net = LPIPS(pretrained=False, heads=None).net
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    timed = []
    monkeypatch.setattr(fast, "runs_faster", lambda fast, plain, x: timed.append(fast) or True)
    assert prepacked_copy(net, x) is not net and len(timed) == 1  # AlexNet traces and computes the same
    assert prepacked_copy(net, x.double()) is net  # float32 only
    monkeypatch.setattr(fast, "runs_faster", lambda *a: False)
    assert prepacked_copy(net, x) is net  # a copy that is not faster is not kept
    monkeypatch.setattr(fast, "runs_faster", lambda *a: True)

    class Off(torch.nn.Module):  # a "fast" copy whose first tap is off by 0.1 %
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            taps = self.module(x)
            return [taps[0] * 1.001, *taps[1:]]

    monkeypatch.setattr(optimization, "optimize_for_inference", Off)
    assert prepacked_copy(net, x) is net

    def fails(module):
        raise RuntimeError("symbolically traced variables cannot be used as inputs to control flow")

    monkeypatch.setattr(optimization, "optimize_for_inference", fails)
    assert prepacked_copy(net, x) is net


def test_frozen_copy_records_its_choice(monkeypatch):
    net = LPIPS(pretrained=False, heads=None).net
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    monkeypatch.setattr(fast, "runs_faster", lambda *a: True)
    copied = FrozenCopy(net)
    assert copied.network(x)[0] is not net and copied.prepacked
    copied.release()
    assert copied.prepacked  # the record stays
    assert FrozenCopy(net, prepack=False).network(x)[0] is net  # a resumed run's choice is kept
    compiled = FrozenCopy(net, compiled=True)
    assert compiled.network(x)[0] is net and compiled.prepack is None  # the compiler takes the plain one
    with torch.autocast("cpu", torch.bfloat16):
        bf16 = FrozenCopy(net)
        copy, y = bf16.network(x)
    assert copy is not net and y.dtype == torch.bfloat16 and bf16.prepack is None


def test_runs_faster_compares_times():
    quick, slow = (lambda x: x), (lambda x: time.sleep(0.01))
    assert runs_faster(quick, slow, None) and not runs_faster(slow, quick, None)
    assert not runs_faster(quick, quick, None, margin=0.0)


@pytest.mark.slow
def test_bf16_copy_of_the_frozen_backbone_stays_out_of_the_weights(bapps_h5, tmp_path):
    model = LPIPSModule(variant="lin", pretrained=False)
    cpu_trainer(tmp_path, precision="bf16-mixed", limit_train_batches=2).fit(
        model, JudgmentsDataModule(str(bapps_h5), batch_size=4)
    )
    assert model.frozen.dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 for v in model.state_dict().values() if v.is_floating_point())
    assert not any("frozen" in k for k in model.state_dict())


@pytest.mark.slow
def test_validation_during_fit_runs_the_fast_frozen_copy_and_scores_the_same(bapps_h5, tmp_path, monkeypatch):
    passes = []
    original = FrozenCopy.network
    model = LPIPSModule(variant="lin", pretrained=False)

    def counted(self, x):
        net, x = original(self, x)
        passes.append((model.training, net is not self.net))
        return net, x

    monkeypatch.setattr(FrozenCopy, "network", counted)
    monkeypatch.setattr(fast, "runs_faster", lambda *a: True)
    dm = JudgmentsDataModule(str(bapps_h5), batch_size=4)
    trainer = cpu_trainer(tmp_path, limit_train_batches=2)
    trainer.fit(model, dm)
    during_fit = dict(model.scores["val"])
    # validation (training False) ran the oneDNN-prepacked copy too, the one the steps made
    assert (False, True) in passes and (True, True) in passes and model.frozen.prepacked
    passes.clear()
    trainer.validate(model, dm, verbose=False)  # outside fit: the plain backbone, no copy
    assert not passes
    assert set(model.scores["val"]) == set(during_fit)
    for key, value in during_fit.items():
        assert model.scores["val"][key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.slow
def test_compiled_cpu_step_after_a_sanity_check_takes_the_plain_backbone(bapps_h5, tmp_path, monkeypatch):
    """The sanity check's validation runs first: a prepacked copy made there must not reach the compiler."""
    compiled = []
    monkeypatch.setattr(fast, "runs_faster", lambda *a: True)
    # what reaches the compiler is the point, not compiling it (test_steps compiles the step)
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None: compiled.append(fn) or fn)
    model = LPIPSModule(variant="lin", pretrained=False, compile=True)
    trainer = cpu_trainer(tmp_path, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=1)
    trainer.fit(model, JudgmentsDataModule(str(bapps_h5), batch_size=4))
    assert compiled and not model.frozen.prepacked and trainer.global_step == 2
