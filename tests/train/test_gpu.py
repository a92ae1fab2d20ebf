"""The captured step on a CUDA device: the eager step's weights, exact resume, the NaN watch, fallbacks.

CI has no GPU: these tests skip there and run on a lent device through `bench/gpu_all.sh`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import cpu_trainer, parsed_trainer_options

from lpips_lightning.data import judgments
from lpips_lightning.data.datamodule import JudgmentsDataModule
from lpips_lightning.errors import TrainingError
from lpips_lightning.train import links
from lpips_lightning.train.module import LPIPSModule

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/gpu_all.sh)")

N_TRAIN = 600  # batch 4: 150 steps an epoch; with the feature cache chunks of 256, 256 and a partial 88


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gpu") / "random.h5"
    rng = np.random.default_rng(0)
    with judgments.write(path, overwrite=True) as w:
        for group, n in (("2afc/train/random", N_TRAIN), ("2afc/val/random", 8)):
            g = w.create_group(group, n, (32, 32), "random")
            images = {k: rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8) for k in ("ref", "p0", "p1")}
            w.fill(g, 0, {**images, "judge": rng.random(n).astype(np.float32)})
    return path


def gpu_trainer(root: Path, **overrides) -> pl.Trainer:
    """The suite's quiet trainer on the GPU: no validation, two epochs unless told otherwise."""
    return cpu_trainer(root, **{"accelerator": "cuda", "max_epochs": 2, "limit_val_batches": 0, **overrides})


def fit(data: Path, root: Path, *, on_device="auto", ckpt_path=None, trainer_args=None, **model_args) -> LPIPSModule:
    """A fit with the data module's batches as `fit` links them on one GPU (8 steps a batch, 64 with the cache)."""
    torch.manual_seed(0)
    model = LPIPSModule(pretrained=False, **model_args)
    cache = model_args.get("feature_cache", False)
    options = parsed_trainer_options(accelerator="cuda", devices=1, **(trainer_args or {}))
    per_batch = links.steps_per_batch(cache, model_args.get("capture", "auto"), options)
    dm = JudgmentsDataModule(
        str(data), val=["2afc/val/*"], batch_size=4, in_memory=True, on_device=on_device, index_only=cache,
        steps_per_batch=per_batch,
    )  # fmt: skip
    gpu_trainer(root, **(trainer_args or {})).fit(model, dm, ckpt_path=ckpt_path)
    return model


def assert_same_weights(a: LPIPSModule, b: LPIPSModule, rtol: float, atol: float) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sb[key], sa[key], rtol=rtol, atol=atol, msg=key)


@pytest.mark.parametrize(
    ("variant", "precision", "on_device", "dropout"),
    [
        ("lin", "32", "auto", False),
        ("tune", "32", "auto", False),
        ("tune", "32", False, False),  # images in the batch: static image buffers instead of the gather
        ("lin", "32", "auto", True),  # dropout's random numbers replay as the eager step draws them
        ("lin", "bf16-mixed", "auto", False),  # the frozen backbone's bf16 copy
        ("tune", "bf16-mixed", "auto", True),
    ],
)
def test_captured_step_reaches_the_eager_weights(data, tmp_path, variant, precision, on_device, dropout):
    args = dict(variant=variant, dropout=dropout, on_device=on_device, trainer_args={"precision": precision})
    eager = fit(data, tmp_path, capture=False, **args)
    captured = fit(data, tmp_path, capture=True, **args)
    assert captured.steps.capture and captured.steps.replays, "the captured path did not run"
    assert captured.global_step == eager.global_step == 2 * N_TRAIN // 4  # chunks of 8 steps, a shorter last one
    assert eager.steps.replays == 0
    tol = (1e-4, 1e-6) if precision == "32" else (2e-2, 1e-4)
    assert_same_weights(eager, captured, *tol)
    assert all((h.weight >= 0).all() for h in captured.lpips.heads)


def test_captured_feature_cache_reaches_the_eager_weights(data, tmp_path):
    eager = fit(data, tmp_path, variant="lin", feature_cache=True, capture=False)
    captured = fit(data, tmp_path, variant="lin", feature_cache=True, capture=True)
    assert captured.steps.replays and captured.global_step == eager.global_step == 2 * N_TRAIN // 4
    assert_same_weights(eager, captured, 1e-4, 1e-6)


def test_captured_run_resumes_exactly(data, tmp_path):
    """1 epoch, checkpoint, resume to 2: the weights of 2 epochs straight (dropout on: the RNG replays too)."""
    straight = fit(data, tmp_path, variant="tune", capture=True)
    first = fit(data, tmp_path, variant="tune", capture=True, trainer_args={"max_epochs": 1})
    ckpt = tmp_path / "one.ckpt"
    first.trainer.save_checkpoint(ckpt)
    resumed = fit(data, tmp_path, variant="tune", capture=True, ckpt_path=str(ckpt))
    assert resumed.global_step == straight.global_step
    assert_same_weights(straight, resumed, 1e-5, 1e-7)


def test_nan_in_a_captured_step_is_named(data, tmp_path):
    class Poison(pl.Callback):
        step = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self.step is None and trainer.global_step >= 20:  # a chunk replayed from the graph
                self.step = trainer.global_step
                with torch.no_grad():  # in place: the captured graph reads the same memory
                    pl_module.rank_head.net[0].weight.fill_(float("nan"))

    poison = Poison()
    with pytest.raises(TrainingError, match="NaN or infinite at step") as raised:
        fit(data, tmp_path, variant="lin", capture=True, trainer_args={"callbacks": [poison]})
    assert f"at step {poison.step} " in str(raised.value)


def test_16_mixed_says_it_takes_the_eager_step(data, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        model = fit(data, tmp_path, variant="tune", trainer_args={"precision": "16-mixed", "max_epochs": 1})
    assert not model.steps.capture and model.steps.replays == 0
    assert "capture: 16-mixed" in caplog.text
    assert model.global_step == N_TRAIN // 4


def test_compiled_and_captured(data, tmp_path):
    """The compiled step captured as a graph reaches the weights of the same compiled step run eagerly."""
    args = dict(variant="tune", compile=True, dropout=False, trainer_args={"max_epochs": 1})
    compiled = fit(data, tmp_path, capture=False, **args)
    both = fit(data, tmp_path, capture=True, **args)
    assert both.steps.replays and not compiled.steps.replays
    assert_same_weights(compiled, both, 1e-4, 1e-6)
