"""Any backbone: torchvision and timm models and custom modules train, export and load like the classic three.

Random weights, offline, tiny images (32x32) and tiny models where the family allows. Every test
here trains (a Trainer.fit) or exports, so all are slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_cache_matches_full, assert_refused, cpu_trainer, feature_cache_steps, make_bapps
from torch import nn

from lpips_lightning import load
from lpips_lightning.data.datamodule import JudgmentsDataModule
from lpips_lightning.errors import ConfigError
from lpips_lightning.export import export
from lpips_lightning.model.checkpoint import model_from_checkpoint, read_checkpoint
from lpips_lightning.pack.pack import pack
from lpips_lightning.train.module import LPIPSModule

pytest.importorskip("timm")
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

LATENT = "lpips_lightning.examples.latent_encoder.LatentEncoder"
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)
FAMILIES = {
    "resnet18": dict(backbone="torchvision:resnet18"),
    "convnext_tiny": dict(backbone="torchvision:convnext_tiny"),
    "vit": dict(backbone="timm:vit_tiny_patch16_224", backbone_args=TINY_VIT),
    "custom": dict(backbone={"class_path": LATENT, "init_args": {"widths": [8, 16], "encoder_width": 8}}),
}
EXPORTS = (".safetensors", ".pt", ".onnx")
# ONNX takes 10-15 s an export here: one per family is enough (convnext: the torchvision ops that ResNet lacks)
SKIP_EXPORT = {("resnet18", ".onnx")}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("backbones")
    make_bapps(root / "b", n=8)
    return pack(root / "b", root / "d.h5", size=32, workers=1, progress=False)


def _pair(n=3, h=40, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g) for _ in range(2))


class Exports(dict):
    """{suffix: export of the checkpoint}, each written on first use."""

    def __init__(self, ckpt: Path) -> None:
        super().__init__()
        self.ckpt = ckpt

    def __missing__(self, suffix: str) -> Path:
        out = self.ckpt.with_suffix(suffix)
        export(self.ckpt, out)
        self[suffix] = out
        return out


@pytest.fixture(scope="module", params=list(FAMILIES))
def trained(request, data, tmp_path_factory):
    """(family, checkpoint, the trained metric in eval mode, {suffix: export}) after a lin step."""
    family = request.param
    torch.manual_seed(0)
    model = LPIPSModule(variant="lin", pretrained=False, **FAMILIES[family])
    backbone_before = {k: v.clone() for k, v in model.lpips.net.state_dict().items()}
    heads_before = [h.weight.clone() for h in model.lpips.heads]
    trainer = cpu_trainer(fast_dev_run=1)
    trainer.fit(model, JudgmentsDataModule(str(data), batch_size=4))
    # lin trained the heads, left the backbone (batch-norm statistics included) alone, and validated
    assert all(not torch.equal(a, h.weight) for a, h in zip(heads_before, model.lpips.heads))
    assert all(torch.equal(backbone_before[k], v) for k, v in model.lpips.net.state_dict().items())
    assert "val/2afc/cnn" in model.scores["val"]
    with torch.no_grad():  # clearly non-trivial heads
        for h in model.lpips.heads:
            h.weight.uniform_(0.1, 1.0)
    root = tmp_path_factory.mktemp(family)
    ckpt = root / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    return family, ckpt, model.lpips.eval(), Exports(ckpt)


@pytest.mark.parametrize(
    ("trained", "suffix"),
    [(f, s) for f in FAMILIES for s in (".ckpt", *EXPORTS) if (f, s) not in SKIP_EXPORT],
    indirect=["trained"],
)
def test_every_export_gives_the_module_distances(trained, suffix):
    family, ckpt, metric, files = trained
    loaded = load(ckpt if suffix == ".ckpt" else files[suffix])
    assert not loaded.training and loaded.backbone_name == metric.backbone_name
    assert loaded.min_size == max(metric.min_size, 2 if suffix == ".onnx" else 0)  # torch.export: sizes >= 2
    # every export takes any size, but the TorchScript trace of a ViT that pads images to whole patches
    fixed = family == "vit" and suffix == ".pt"
    assert getattr(loaded, "fixed_size", None) == ((64, 64) if fixed else None)
    if fixed:
        with pytest.raises(
            ConfigError, match="^images of 40x48 pixels: this export of backbone .* takes 64x64 images only"
        ):
            loaded(*_pair())
    small = max(20, metric.min_size)  # the deepest maps are 1x1 here (ResNet, ConvNeXt)
    for h, w in ((64, 64),) if fixed else ((40, 48), (64, 64), (77, 61), (small, small + 4)):
        u0, u1 = _pair(h=h, w=w)
        with torch.no_grad():
            expected = metric(u0, u1)
            got = loaded(u0, u1).flatten()
            got_normalized = loaded(u0.float() / 255, u1.float() / 255, normalize=True).flatten()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got_normalized, expected, rtol=1e-5, atol=1e-6)


def test_load_rebuilds_the_backbone_from_the_metadata(trained):
    family, ckpt, metric, files = trained
    from safetensors import safe_open

    with safe_open(str(files[".safetensors"]), "pt") as f:
        meta = f.metadata()
    spec = json.loads(meta["backbone_spec"])
    assert spec == metric.backbone_spec and meta["backbone"] == metric.backbone_name
    rebuilt = load(files[".safetensors"])
    assert rebuilt.backbone_spec == metric.backbone_spec and rebuilt.net.channels == metric.net.channels
    own = metric.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in rebuilt.state_dict().items()) and set(own) == set(
        rebuilt.state_dict()
    )
    # the checkpoint keeps the resolved spec (default taps filled in) and plain hyperparameters
    hp, _, info = read_checkpoint(ckpt)
    assert info["backbone"] == metric.backbone_spec
    assert _plain(hp), hp


def _plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


@pytest.mark.parametrize("trained", ["resnet18"], indirect=True)
def test_lpips_pth_export_is_refused_in_one_line(trained, tmp_path, capfd):
    family, ckpt, metric, files = trained
    line = assert_refused(["export", str(ckpt), str(tmp_path / "m.pth")], capfd, tmp_path)
    assert "describes alex, vgg and squeeze only, not backbone torchvision:resnet18" in line
    assert ".safetensors" in line


@pytest.mark.parametrize("trained", ["vit", "custom"], indirect=True)
def test_distance_and_evaluate_take_any_backbone(trained, tmp_path, capsys, data):
    family, ckpt, metric, files = trained
    import numpy as np
    from PIL import Image

    from lpips_lightning.cli.main import main

    rng = np.random.default_rng(0)
    pngs = []
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
        pngs.append(str(tmp_path / f"{name}.png"))
    images = [torch.from_numpy(np.asarray(Image.open(p).convert("RGB"))).permute(2, 0, 1)[None] for p in pngs]
    with torch.no_grad():
        expected = metric(*images).item()
    model_files = [files[".pt" if (family, ".onnx") in SKIP_EXPORT else ".onnx"]]
    for model_file in [*model_files, files[".pt"]] if family == "custom" else model_files:
        assert main(["distance", *pngs, "--model", str(model_file)]) == 0
        assert float(capsys.readouterr().out) == pytest.approx(expected, abs=2e-6)
    out = tmp_path / "ev"
    assert main(["evaluate", str(files[".safetensors"]), "--data", str(data), "--out", str(out), "--quiet"]) == 0
    assert "2afc/val/cnn" in capsys.readouterr().out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_feature_cache_matches_the_full_path(family, data):
    torch.manual_seed(0)
    model = LPIPSModule(variant="lin", pretrained=False, dropout=False, feature_cache=True, **FAMILIES[family])
    with torch.no_grad():
        for h in model.lpips.heads:
            h.weight.uniform_(0, 1)
    dm = feature_cache_steps(data, model)
    cache = model.steps.build_cache(chunk=3)
    assert cache.shape == (2, 8, sum(model.lpips.net.channels))
    dataset = dm.datasets["train"][0]
    index = torch.tensor([3, 0, 7])
    assert_cache_matches_full(model, dataset, index)


# --- LoRA, instances, fixed-size exports --------------------------------------------------------------------
def test_lora_tunes_adapters_only_and_exports_merged(data, tmp_path):
    torch.manual_seed(0)
    model = LPIPSModule(
        variant="tune", backbone="timm:vit_tiny_patch16_224", backbone_args=TINY_VIT, pretrained=False, lora_rank=4
    )
    trainable = {n for n, p in model.lpips.net.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_a", "lora_b")) for n in trainable)
    assert any(".qkv." in n for n in trainable) and any(".proj." in n for n in trainable)
    frozen = {k: v.clone() for k, v in model.lpips.net.state_dict().items() if not k.endswith(("lora_a", "lora_b"))}
    trainer = cpu_trainer(fast_dev_run=2)
    trainer.fit(model, JudgmentsDataModule(str(data), batch_size=4))
    state = model.lpips.net.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items()), "LoRA must leave the base weights alone"
    assert any(not torch.equal(state[k], torch.zeros_like(state[k])) for k in state if k.endswith("lora_b"))
    trainer.save_checkpoint(tmp_path / "lora.ckpt")
    export(tmp_path / "lora.ckpt", tmp_path / "lora.safetensors")
    exported = load(tmp_path / "lora.safetensors")
    assert not any("lora" in k for k in exported.state_dict())
    u0, u1 = _pair()
    with torch.no_grad():
        torch.testing.assert_close(exported(u0, u1), model.lpips.eval()(u0, u1), rtol=1e-5, atol=1e-6)


class TinyConv(nn.Module):
    """A module with default init args only: an instance is rebuilt from its class path."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)

    def forward(self, x):
        return [self.conv(x)]


def test_an_instance_trains_and_its_checkpoint_loads_with_weights_only(data, tmp_path):
    model = LPIPSModule(variant="scratch", backbone=TinyConv())
    assert model.hparams["backbone"] == {"class_path": "test_any_backbone.TinyConv", "init_args": {}}
    trainer = cpu_trainer(fast_dev_run=1)
    trainer.fit(model, JudgmentsDataModule(str(data), batch_size=4))
    trainer.save_checkpoint(tmp_path / "i.ckpt")
    torch.load(tmp_path / "i.ckpt", weights_only=True)  # plain values only
    rebuilt, hp, _ = model_from_checkpoint(tmp_path / "i.ckpt", trust_code=True)
    u0, u1 = _pair(h=8, w=8)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(u0, u1), model.lpips.eval()(u0, u1))


class SizeBound(nn.Module):
    """Computes in Python from the input size: a trace fixes the size, ONNX cannot stay dynamic."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        k = int(x.shape[-1]) // 8
        return [F.avg_pool2d(self.conv(x), k)]


def test_exports_of_a_size_bound_backbone_are_fixed_and_say_so(data, tmp_path):
    model = LPIPSModule(variant="scratch", backbone={"class_path": "test_any_backbone.SizeBound"})
    trainer = cpu_trainer(fast_dev_run=1)
    trainer.fit(model, JudgmentsDataModule(str(data), batch_size=4))
    trainer.save_checkpoint(tmp_path / "s.ckpt")
    metric = model.lpips.eval()
    for suffix in (".pt", ".onnx"):
        export(tmp_path / "s.ckpt", tmp_path / f"s{suffix}", trust_code=True)
        loaded = load(tmp_path / f"s{suffix}")
        assert loaded.fixed_size == (64, 64)
        u0, u1 = _pair(h=64, w=64)
        with torch.no_grad():
            torch.testing.assert_close(loaded(u0, u1).flatten(), metric(u0, u1), rtol=1e-5, atol=1e-6)
        with pytest.raises(ConfigError, match="images of 40x48 pixels: this export of backbone .* takes 64x64") as err:
            loaded(*_pair())
        assert "\n" not in str(err.value)
