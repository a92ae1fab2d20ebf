"""Embedding metrics trained as users train them: fit from the CLI (hinge, LoRA), resumed exactly; refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import assert_refused

from lpips_lightning.cli.main import main
from lpips_lightning.errors import ConfigError
from lpips_lightning.model.checkpoint import model_from_checkpoint
from lpips_lightning.train.module import LPIPSModule

ROOT = Path(__file__).resolve().parents[2]
TINY_VIT = ["--model.backbone", "timm:vit_tiny_patch16_224", "--model.backbone_args", "{img_size: 32, depth: 2}"]
pytestmark = pytest.mark.usefixtures("one_thread")


def fit_args(runs: Path, data: Path, *extra: str) -> list[str]:
    """A tiny CPU fit of configs/embedding_dino_vitb16.yaml (LoRA, hinge) on a 2-block ViT at 32x32."""
    return [
        "fit", "--config", str(ROOT / "configs/embedding_dino_vitb16.yaml"), *TINY_VIT,
        "--model.pretrained", "false", "--model.lora_rank", "2",
        "--data.path", str(data), "--data.val", "[2afc/val/*, jnd/val/*]", "--data.batch_size", "4",
        "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--runs_dir", str(runs), *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_a_lora_hinge_fit_from_the_cli_resumes_exactly(module_bapps_h5, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    data = module_bapps_h5
    assert main(fit_args(tmp_path, data, "--trainer.max_epochs", "2", "--run_name", "straight")) == 0
    assert main(fit_args(tmp_path, data, "--trainer.max_epochs", "1", "--run_name", "cut")) == 0
    assert main(fit_args(tmp_path, data, "--trainer.max_epochs", "2", "--run_name", "cut", "--ckpt_path", "last")) == 0
    a = torch.load(tmp_path / "straight/last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "cut/last.ckpt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 1 and a["hyper_parameters"]["distance"] == "embedding"
    lora = [k for k in a["state_dict"] if k.endswith("lora_b")]
    assert lora and any(a["state_dict"][k].abs().sum() > 0 for k in lora)  # the adapters trained
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)
    model, hp, _ = model_from_checkpoint(tmp_path / "straight/last.ckpt")
    assert not model.training and model.net.lora_rank == 0  # adapters merged
    x0, x1 = torch.rand(2, 2, 3, 40, 36) * 2 - 1
    trained = LPIPSModule(**{k: v for k, v in hp.items() if not k.startswith("_")})
    trained.load_state_dict(a["state_dict"])
    with torch.no_grad():
        torch.testing.assert_close(model(x0, x1), trained.lpips.eval()(x0, x1), rtol=1e-5, atol=1e-6)


def _module(**options):
    base = dict(distance="embedding", backbone="timm:vit_tiny_patch16_224", pretrained=False,
                backbone_args={"img_size": 32, "depth": 1})  # fmt: skip
    return LPIPSModule(**{**base, **options})


def test_the_module_trains_lora_adapters_or_the_head_only():
    tuned = _module(variant="tune", lora_rank=2, loss="hinge")
    trainable = [n for n, p in tuned.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("rank_head") for n in trainable)
    lin = _module(variant="lin", head="mlp", features="cls_pool")
    trainable = {n.split(".")[1] for n, p in lin.named_parameters() if p.requires_grad and n.startswith("lpips.")}
    assert trainable == {"head"} and lin.lpips.dim == 2 * 192


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(variant="lin"), "variant 'lin' with distance: embedding trains a head"),
        (dict(variant="tune", head="mlp"), "head: mlp with variant 'tune' and no lora_rank"),
        (dict(variant="lin", head="mlp", feature_cache=True), "feature_cache caches LPIPS"),
        (dict(variant="tune", features=["cls", "cls"]), "features: 2 features for 1 backbone"),
        (dict(variant="tune", backbone_weights=["a.pt", "b.pt"]), "backbone_weights: 2 weight files for 1 backbone"),
        (dict(variant="tune", backbone="timm:resnet18", backbone_args=None), "features cls: backbone timm:resnet18"),
        (dict(variant="tune", head="mlp", lora_rank=2, distance="lpips"), "head applies to distance: embedding"),
        (dict(variant="tune", distance="cosine"), "unknown distance 'cosine'"),
    ],
)
def test_embedding_options_that_do_not_fit_are_refused_in_one_line(options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as err:
        _module(**options)
    assert "\n" not in str(err.value)


def test_a_backbone_list_without_distance_embedding_is_refused_by_the_cli(module_bapps_h5, tmp_path, capfd):
    argv = [
        "fit", "--config", str(ROOT / "configs/lin_alex.yaml"), "--model.backbone", "[alex, vgg]",
        "--data.path", str(module_bapps_h5), "--trainer.accelerator", "cpu", "--runs_dir", str(tmp_path / "runs"),
    ]  # fmt: skip
    line = assert_refused(argv, capfd, tmp_path)
    assert "backbone: a list (an ensemble) needs distance: embedding" in line
