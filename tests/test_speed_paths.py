"""The fast paths give the same results as the plain one: feature cache, on-device data, compile."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from conftest import assert_cache_matches_full, cpu_trainer

from lpips_lightning.datamodules import JudgmentsDataModule
from lpips_lightning.errors import ConfigError
from lpips_lightning.module import LPIPSModule
from lpips_lightning.steps import Steps


def _setup(path, module, **kw):
    trainer = cpu_trainer(**kw)
    dm = JudgmentsDataModule(str(path), batch_size=5)
    trainer.strategy.connect(module)
    trainer._data_connector.attach_datamodule(module, datamodule=dm)
    dm.trainer = trainer
    dm.setup("fit")
    module.trainer = trainer
    module.steps = Steps(module)
    return trainer, dm


def test_feature_cache_gives_the_same_distances_and_gradients(bapps_h5):
    torch.manual_seed(0)
    model = LPIPSModule(variant="lin", pretrained=False, dropout=False, feature_cache=True)
    with torch.no_grad():
        for h in model.lpips.heads:
            h.weight.uniform_(0, 1)
    trainer, dm = _setup(bapps_h5, model)
    model.steps.build_cache(chunk=5)  # chunks smaller than the data: stitched in order
    dataset = dm.datasets["train"][0]
    assert dataset.index_only and "ref" not in dataset.__getitems__([0, 1])
    index = torch.tensor([3, 0, 7, 11])
    assert_cache_matches_full(model, dataset, index)


def test_feature_cache_trains_through_lightning(bapps_h5, tmp_path):
    model = LPIPSModule(variant="lin", pretrained=False, feature_cache=True)
    before = [h.weight.clone() for h in model.lpips.heads]
    trainer = cpu_trainer(tmp_path, max_epochs=2)
    trainer.fit(model, JudgmentsDataModule(str(bapps_h5), batch_size=4))
    assert model.steps.cache_shape == (2, 12, sum(model.lpips.net.channels))
    assert model.steps.cache is None  # released at fit end
    assert any(not torch.equal(a, h.weight) for a, h in zip(before, model.lpips.heads))
    assert all((h.weight >= 0).all() for h in model.lpips.heads)
    assert "val/2afc/cnn" in model.scores["val"]


def test_feature_cache_needs_lin():
    with pytest.raises(ConfigError, match="feature_cache needs a frozen backbone"):
        LPIPSModule(variant="tune", pretrained=False, feature_cache=True)


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


def test_unknown_compile_mode():
    with pytest.raises(ConfigError, match="unknown compile 'fast'"):
        LPIPSModule(variant="lin", pretrained=False, compile="fast")


@pytest.mark.slow
def test_compiled_step_matches_eager(bapps_h5, tmp_path):
    states = {}
    for compile in (False, True):
        torch.manual_seed(0)
        model = LPIPSModule(variant="tune", pretrained=False, dropout=False, compile=compile)
        trainer = cpu_trainer(tmp_path)
        trainer.fit(model, JudgmentsDataModule(str(bapps_h5), batch_size=4))
        states[compile] = model.state_dict()
    for key, value in states[False].items():
        torch.testing.assert_close(states[True][key], value, rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("variant", "backbone", "args"),
    [
        ("lin", "torchvision:resnet18", None),  # a frozen backbone with batch norm: kept in eval mode
        ("tune", "timm:vit_tiny_patch16_224", dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)),
    ],
)
def test_compiled_step_matches_eager_for_other_backbones(bapps_h5, tmp_path, variant, backbone, args):
    pytest.importorskip("timm")
    states = {}
    for compile in (False, True):
        torch.manual_seed(0)
        model = LPIPSModule(
            variant=variant, backbone=backbone, backbone_args=args, pretrained=False, dropout=False, compile=compile
        )
        trainer = cpu_trainer(tmp_path)
        trainer.fit(model, JudgmentsDataModule(str(bapps_h5), batch_size=4))
        states[compile] = model.state_dict()
    for key, value in states[False].items():
        torch.testing.assert_close(states[True][key], value, rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.slow
def test_bf16_run_matches_fp32_on_the_demo(tmp_path, monkeypatch):
    """Mixed precision must not change results: validation 2AFC within 0.5 points of fp32."""
    from pathlib import Path

    from lpips_lightning.cli.main import main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    config = Path(__file__).resolve().parents[1] / "configs/demo.yaml"
    scores = {}
    for precision in ("32", "bf16-mixed"):
        args = [
            "fit",
            "--config",
            str(config),
            "--trainer.precision",
            precision,
            "--trainer.max_epochs",
            "2",
            "--runs_dir",
            str(tmp_path),
            "--run_name",
            precision,
            "--trainer.enable_progress_bar",
            "false",
        ]
        assert main(args) == 0
        import csv

        with open(tmp_path / precision / "metrics.csv") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("val/2afc/mean")]
        scores[precision] = float(rows[-1]["val/2afc/mean"])
    assert abs(scores["32"] - scores["bf16-mixed"]) <= 0.005, scores


# --- the step machinery (lpips_lightning.steps) ---------------------------------------------------
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
    lean, d0, d1 = Steps(model).loss(ref, p0, p1, judge)
    plain_d0, plain_d1 = model.lpips(ref, p0), model.lpips(ref, p1)  # 1x1 conv heads over whole maps
    plain = model.rank_head(plain_d0, plain_d1, judge)
    torch.testing.assert_close(d0, plain_d0, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(d1, plain_d1, rtol=1e-5, atol=1e-8)
    for a, b in zip(torch.autograd.grad(lean, params), torch.autograd.grad(plain, params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-8)


def test_bf16_copy_of_the_frozen_backbone_stays_out_of_the_weights(bapps_h5, tmp_path):
    model = LPIPSModule(variant="lin", pretrained=False)
    cpu_trainer(tmp_path, precision="bf16-mixed", limit_train_batches=2).fit(
        model, JudgmentsDataModule(str(bapps_h5), batch_size=4)
    )
    assert model.steps.frozen_dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 for v in model.state_dict().values() if v.is_floating_point())
    assert not any("frozen" in k for k in model.state_dict())


def test_runs_that_cannot_be_captured_say_why():
    from lpips_lightning.steps import capture_refusal

    assert "DDP" in capture_refusal(2, "bf16-mixed")
    assert "16-mixed" in capture_refusal(1, "16-mixed")
    assert capture_refusal(1, "bf16-mixed") is None and capture_refusal(1, "32-true") is None


def test_capture_true_on_a_cpu_says_it_trains_eagerly(bapps_h5, tmp_path, caplog):
    import logging

    model = LPIPSModule(variant="lin", pretrained=False, capture=True)
    with caplog.at_level(logging.INFO):
        cpu_trainer(tmp_path, limit_train_batches=1).fit(model, JudgmentsDataModule(str(bapps_h5), batch_size=4))
    assert "CUDA graphs need a CUDA device" in caplog.text
    assert not model.steps.capture and model.steps.replays == 0


def test_unknown_capture_choice():
    with pytest.raises(ConfigError, match="capture"):
        LPIPSModule(variant="lin", pretrained=False, capture="sometimes")


class BatchSizes(pl.Callback):
    """The size of every training batch Lightning hands the module."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append(len(batch["judge"]))


def test_chunks_of_minibatches_train_as_single_steps_do(bapps_h5, tmp_path, monkeypatch):
    """Several minibatches per Lightning batch (the captured step's chunks, run eagerly here): the same weights."""
    weights, real_start = {}, Steps.start
    for per_call in (1, 2):

        def start(self, k=per_call):
            real_start(self)
            self.per_call = k

        monkeypatch.setattr(Steps, "start", start)
        torch.manual_seed(0)
        model = LPIPSModule(variant="tune", pretrained=False)  # dropout on: the same draws in the same order
        sizes = BatchSizes()
        data = JudgmentsDataModule(str(bapps_h5), batch_size=5)
        cpu_trainer(tmp_path, max_epochs=2, callbacks=[sizes]).fit(model, data)
        assert sizes.seen == ([5, 5, 2] if per_call == 1 else [10, 2]) * 2
        assert model.global_step == 2 * 3  # 12 items in minibatches of 5, 5, 2: a shorter last one
        weights[per_call] = model.state_dict()
    for key, value in weights[1].items():
        torch.testing.assert_close(weights[2][key], value, rtol=1e-6, atol=1e-8, msg=key)


def test_max_steps_is_exact_when_a_batch_holds_many_steps(bapps_h5, tmp_path):
    """The feature cache runs 64 minibatches per batch (the captured step 8): a run still stops at max_steps."""
    model = LPIPSModule(variant="lin", pretrained=False, feature_cache=True)
    cpu_trainer(tmp_path, max_epochs=3, max_steps=5).fit(model, JudgmentsDataModule(str(bapps_h5), batch_size=4))
    assert model.global_step == 5  # 3 minibatches an epoch: 3, then 2 of the second epoch's 3


def _fit_heads(path, root, prepack: bool, monkeypatch, **module_args) -> tuple[LPIPSModule, list[torch.Tensor]]:
    """Heads after a short fp32 CPU fit, with or without the oneDNN-prepacked frozen backbone."""
    from lpips_lightning import steps

    if prepack:  # whatever the timing on a busy machine says: the copy is compared, not timed
        monkeypatch.setattr(steps, "runs_faster", lambda *a: True)
    else:
        monkeypatch.setattr(steps, "prepacked_copy", lambda net, x, timed=True: net)
    pl.seed_everything(0)
    model = LPIPSModule(variant="lin", pretrained=False, **module_args)
    cpu_trainer(root, limit_train_batches=3).fit(model, JudgmentsDataModule(str(path), batch_size=4))
    monkeypatch.undo()
    return model, [h.weight.detach().clone() for h in model.lpips.heads]


@pytest.mark.parametrize("backbone", ["alex", "squeeze", "torchvision:resnet18"])  # resnet: batch norms folded
def test_prepacked_frozen_backbone_trains_the_same_heads(bapps_h5, tmp_path, monkeypatch, backbone):
    fast, fast_heads = _fit_heads(bapps_h5, tmp_path / "fast", True, monkeypatch, backbone=backbone)
    plain, plain_heads = _fit_heads(bapps_h5, tmp_path / "plain", False, monkeypatch, backbone=backbone)
    assert fast.steps.prepacked and not plain.steps.prepacked
    assert fast.steps.frozen_dtype == torch.float32
    for a, b in zip(fast_heads, plain_heads):  # oneDNN's blocked convolutions round a little differently
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert not any(k.startswith("steps") or "frozen" in k for k in fast.state_dict())


def test_prepacked_copy_keeps_the_network_where_it_would_compute_differently(monkeypatch):
    from torch.fx.experimental import optimization

    from lpips_lightning import steps
    from lpips_lightning.lpips import LPIPS
    from lpips_lightning.steps import prepacked_copy

    net = LPIPS(pretrained=False, heads=None).net
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    timed = []
    monkeypatch.setattr(steps, "runs_faster", lambda fast, plain, x: timed.append(fast) or True)
    assert prepacked_copy(net, x) is not net and len(timed) == 1  # AlexNet traces and computes the same
    assert prepacked_copy(net, x.double()) is net  # float32 only
    monkeypatch.setattr(steps, "runs_faster", lambda *a: False)
    assert prepacked_copy(net, x) is net  # a copy that is not faster is not kept
    monkeypatch.setattr(steps, "runs_faster", lambda *a: True)

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


def _logged_steps(path, **module_args) -> tuple[dict[str, list[int]], int]:
    """{column: [steps with a value]} of metrics.csv after a 2-epoch CPU fit (80 triplets, minibatches of 1)."""
    import csv

    import numpy as np
    from pytorch_lightning.loggers import CSVLogger

    from lpips_lightning import judgments

    data = path / "d.h5"
    if not data.exists():
        rng = np.random.default_rng(0)
        with judgments.write(data) as w:
            for name, n in (("2afc/train/t", 80), ("2afc/val/t", 4)):
                arrays = {k: rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8) for k in ("ref", "p0", "p1")}
                w.fill(w.create_group(name, n, (32, 32)), 0, {**arrays, "judge": rng.random(n).astype(np.float32)})
    root = path / ("cached" if module_args.get("feature_cache") else "plain")
    trainer = cpu_trainer(root, max_epochs=2, logger=CSVLogger(root, name="", version=""), log_every_n_steps=30)
    trainer.fit(
        LPIPSModule(variant="lin", pretrained=False, **module_args), JudgmentsDataModule(str(data), batch_size=1)
    )
    with open(root / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    columns = {c: [int(r["step"]) for r in rows if r[c]] for c in ("train/loss", "val/2afc/mean", "train/2afc")}
    return columns, trainer.log_every_n_steps


def test_batches_of_many_steps_log_on_the_optimizer_step_axis(tmp_path):
    """The feature cache takes 64 minibatch steps per batch; the logs still count optimizer steps."""
    plain, plain_every = _logged_steps(tmp_path)
    cached, cached_every = _logged_steps(tmp_path, feature_cache=True)
    assert plain_every == cached_every == 30  # the Trainer's setting is given back after fit
    assert plain["train/loss"] == [29, 59, 89, 119, 149]
    # batches 0-63 and 64-79 of epoch 0, 80-143 and 144-159 of epoch 1: a batch logs when it crosses 30, 60, 90...
    assert cached["train/loss"] == [63, 143, 159]
    assert cached["val/2afc/mean"] == plain["val/2afc/mean"] == [79, 159]
    assert cached["train/2afc"] == plain["train/2afc"] == [79, 159]


def test_validation_during_fit_runs_the_fast_frozen_copy_and_scores_the_same(bapps_h5, tmp_path, monkeypatch):
    passes = []
    original = Steps.frozen_backbone

    def counted(self, x):
        net, x = original(self, x)
        passes.append((self.module.training, net is not self.lpips.net))
        return net, x

    monkeypatch.setattr(Steps, "frozen_backbone", counted)
    monkeypatch.setattr("lpips_lightning.steps.runs_faster", lambda *a: True)
    model = LPIPSModule(variant="lin", pretrained=False)
    dm = JudgmentsDataModule(str(bapps_h5), batch_size=4)
    trainer = cpu_trainer(tmp_path, limit_train_batches=2)
    trainer.fit(model, dm)
    during_fit = dict(model.scores["val"])
    # validation (training False) ran the oneDNN-prepacked copy too, the one the steps made
    assert (False, True) in passes and (True, True) in passes and model.steps.prepacked
    monkeypatch.undo()
    trainer.validate(model, dm, verbose=False)  # outside fit: the plain backbone
    assert set(model.scores["val"]) == set(during_fit)
    for key, value in during_fit.items():
        assert model.scores["val"][key] == pytest.approx(value, abs=1e-6), key


def test_runs_faster_compares_times():
    import time

    from lpips_lightning.steps import runs_faster

    quick, slow = (lambda x: x), (lambda x: time.sleep(0.01))
    assert runs_faster(quick, slow, None) and not runs_faster(slow, quick, None)
    assert not runs_faster(quick, quick, None, margin=0.0)


def test_compiled_cpu_step_after_a_sanity_check_takes_the_plain_backbone(bapps_h5, tmp_path, monkeypatch):
    """The sanity check's validation runs first: a prepacked copy made there must not reach the compiler."""
    monkeypatch.setattr("lpips_lightning.steps.runs_faster", lambda *a: True)
    model = LPIPSModule(variant="lin", pretrained=False, compile=True)
    trainer = cpu_trainer(tmp_path, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=1)
    trainer.fit(model, JudgmentsDataModule(str(bapps_h5), batch_size=4))
    assert not model.steps.prepacked and trainer.global_step == 2


def test_a_failed_fit_does_not_leave_its_logging_switch_on_the_trainer(bapps_h5, tmp_path):
    class Boom(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            raise RuntimeError("boom")

    trainer = cpu_trainer(tmp_path, max_epochs=1, log_every_n_steps=30, callbacks=[Boom()])
    dm = JudgmentsDataModule(str(bapps_h5), batch_size=1)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(LPIPSModule(variant="lin", pretrained=False, feature_cache=True), dm)
    assert trainer.log_every_n_steps in (0, 1)  # the per-batch switch, left by the failed fit
    trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, Boom)]
    model = LPIPSModule(variant="lin", pretrained=False, feature_cache=True)
    trainer.fit(model, dm)
    assert model.steps.log_every is None and trainer.log_every_n_steps == 30  # the user's value, not the switch's
