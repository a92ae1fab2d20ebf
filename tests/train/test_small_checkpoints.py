"""A lin checkpoint names its frozen backbone by its weights file (name, sha256) instead of storing it.

One lin-squeeze fit (squeeze: the smallest classic weights file) on random "ImageNet" weights in
a TORCH_HOME of this module's own, whose file the tests may replace or remove.
"""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest
import torch
from conftest import cpu_trainer, write_fake_imagenet

from lpips_lightning import load
from lpips_lightning.backbones.classic import cache_file
from lpips_lightning.data.datamodule import JudgmentsDataModule
from lpips_lightning.errors import WeightsError
from lpips_lightning.export import export
from lpips_lightning.model.backbone_file import BACKBONE_WEIGHTS_KEY
from lpips_lightning.model.checkpoint import CHECKPOINT_BACKBONE_KEY
from lpips_lightning.train.module import LPIPSModule

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A TORCH_HOME holding random squeeze weights, set for this module's tests."""
    root = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(root))
        write_fake_imagenet(root, names=("squeeze",))
        yield root


def _fit(model, h5, root, ckpt_path=None, **options):
    trainer = cpu_trainer(root, **options)
    trainer.fit(model, JudgmentsDataModule(str(h5), val=["2afc/val/*"], batch_size=4), ckpt_path=ckpt_path)
    return trainer


@pytest.fixture(scope="module")
def small(home, module_bapps_h5, tmp_path_factory):
    """(checkpoint path, the module that wrote it) of a one-epoch lin-squeeze fit."""
    root = tmp_path_factory.mktemp("small")
    torch.manual_seed(0)
    model = LPIPSModule(variant="lin", backbone="squeeze", dropout=False)
    trainer = _fit(model, module_bapps_h5, root)
    trainer.save_checkpoint(root / "lin.ckpt")
    return root / "lin.ckpt", model


def _pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1


def test_lin_checkpoint_holds_heads_and_the_file_record_not_the_backbone(small):
    path, model = small
    ckpt = torch.load(path, weights_only=True)
    assert not [k for k in ckpt["state_dict"] if k.startswith("lpips.net.")]
    assert len([k for k in ckpt["state_dict"] if k.startswith("lpips.heads.")]) == len(model.lpips.heads)
    record = ckpt[BACKBONE_WEIGHTS_KEY]
    weights = cache_file("squeeze")
    assert record["how"] == "pretrained" and record["file"] == weights.name
    assert record["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert path.stat().st_size < 100_000  # kilobytes: the backbone's tensors alone are 2.9 MB
    assert sum(v.numel() * v.element_size() for v in model.lpips.net.state_dict().values()) > 2_000_000


def test_load_rebuilds_the_backbone_and_gives_the_trained_distances(small):
    path, model = small
    x0, x1 = _pair()
    with torch.no_grad():
        torch.testing.assert_close(load(path)(x0, x1), model.lpips.eval()(x0, x1))


def test_exports_of_a_small_checkpoint_hold_the_backbone(small, tmp_path):
    path, model = small
    out = tmp_path / "m.safetensors"
    export(path, out)
    moved = tmp_path / "away"
    shutil.move(str(cache_file("squeeze")), moved)  # the export needs no weights file
    try:
        x0, x1 = _pair(1)
        with torch.no_grad():
            torch.testing.assert_close(load(out)(x0, x1), model.lpips.eval()(x0, x1))
    finally:
        shutil.move(str(moved), cache_file("squeeze"))


def test_a_different_weights_file_is_refused_in_one_line(small, home):
    path, _ = small
    target = cache_file("squeeze")
    original = target.read_bytes()
    try:
        target.unlink()
        write_fake_imagenet(home, names=("squeeze",), seed=1)
        with pytest.raises(WeightsError, match=r"trained from squeezenet1_1-.*sha256 .*a different file") as err:
            load(path)
        assert "\n" not in str(err.value)
    finally:
        target.write_bytes(original)


def test_a_missing_backbone_weights_file_is_refused_in_one_line(home, module_bapps_h5, tmp_path):
    weights = tmp_path / "squeeze.pth"
    shutil.copy(cache_file("squeeze"), weights)
    model = LPIPSModule(variant="lin", backbone="squeeze", backbone_weights=str(weights))
    trainer = _fit(model, module_bapps_h5, tmp_path, max_steps=1, limit_val_batches=0)
    trainer.save_checkpoint(tmp_path / "own.ckpt")
    record = torch.load(tmp_path / "own.ckpt", weights_only=True)[BACKBONE_WEIGHTS_KEY]
    assert record["how"] == "backbone_weights" and record["path"] == str(weights.resolve())
    os.remove(weights)
    with pytest.raises(WeightsError, match=rf"rebuilt from squeeze.pth .*which is missing: no file {weights}"):
        load(tmp_path / "own.ckpt")


def test_resuming_refuses_a_module_over_another_backbone_file(small, tmp_path):
    path, _ = small
    ckpt = torch.load(path, weights_only=True)
    model = LPIPSModule(variant="lin", backbone="squeeze", pretrained=False)  # random: no file
    with pytest.raises(WeightsError, match="this model's backbone comes from no weights file"):
        model.on_load_checkpoint(ckpt)
    same = LPIPSModule(variant="lin", backbone="squeeze")
    same.on_load_checkpoint(ckpt)  # the same file: the backbone's tensors are filled in
    same.load_state_dict(ckpt["state_dict"])
    assert set(ckpt["state_dict"]) == set(same.state_dict())


def test_tune_and_random_backbones_keep_their_tensors(home):
    for model in (LPIPSModule(variant="tune", backbone="squeeze"), LPIPSModule(variant="lin", pretrained=False)):
        checkpoint = {"state_dict": model.state_dict()}
        model.on_save_checkpoint(checkpoint)
        assert BACKBONE_WEIGHTS_KEY not in checkpoint and CHECKPOINT_BACKBONE_KEY in checkpoint
        assert any(k.startswith("lpips.net.") for k in checkpoint["state_dict"])


@pytest.mark.slow
def test_a_fit_resumes_from_a_small_checkpoint(small, module_bapps_h5, tmp_path):
    path, first = small
    torch.manual_seed(1)  # other random heads: equal to the first fit's only when restored
    model = LPIPSModule(variant="lin", backbone="squeeze", dropout=False)
    _fit(model, module_bapps_h5, tmp_path, str(path), max_epochs=1, limit_val_batches=0)
    assert model.global_step == first.global_step  # the finished epoch: nothing more to train
    for key, value in first.state_dict().items():  # heads from the checkpoint, the backbone from its file
        torch.testing.assert_close(model.state_dict()[key], value)


def test_a_weights_file_neither_cached_nor_downloadable_is_refused_in_one_line(small, tmp_path, monkeypatch):
    path, _ = small
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(WeightsError, match=r"rebuilt from squeezenet1_1-.*missing: .* could not be downloaded") as err:
        load(path)
    assert "pretrained=False" not in str(err.value)  # not the advice for building a new model
