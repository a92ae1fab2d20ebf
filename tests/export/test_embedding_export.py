"""Embedding metrics as files: safetensors, TorchScript and ONNX give the checkpoint's distances; .pth refuses."""

from __future__ import annotations

import h5py
import pytest
import torch
from conftest import assert_refused, cpu_trainer

from lpips_lightning import load
from lpips_lightning.cli.main import main
from lpips_lightning.data.datamodule import JudgmentsDataModule
from lpips_lightning.export.write import export
from lpips_lightning.images import load_image
from lpips_lightning.model.embedding import EmbeddingDistance
from lpips_lightning.train.module import LPIPSModule

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = {"img_size": 32, "depth": 1, "embed_dim": 48, "num_heads": 2}


@pytest.fixture(scope="module")
def checkpoint(module_bapps_h5, tmp_path_factory):
    """An ensemble (tiny ViT with LoRA + a CLIP-normalised tiny ViT), MLP head, one epoch of hinge: its .ckpt."""
    root = tmp_path_factory.mktemp("embedding_ckpt")
    torch.manual_seed(0)
    model = LPIPSModule(
        variant="tune", distance="embedding", pretrained=False, lora_rank=2, head="mlp", loss="hinge",
        backbone=["timm:vit_tiny_patch16_224", "timm:vit_base_patch16_clip_224.openai"], features=["cls", "cls_pool"],
        backbone_args=TINY, channels_last=False,
    )  # fmt: skip
    trainer = cpu_trainer(root)
    trainer.fit(model, JudgmentsDataModule(str(module_bapps_h5), val=["2afc/val/*"], batch_size=4))
    trainer.save_checkpoint(root / "e.ckpt")
    return root / "e.ckpt"


def _pair(h=40, w=36):
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, 256, (2, 3, h, w), generator=g, dtype=torch.uint8), torch.randint(
        0, 256, (2, 3, h, w), generator=g, dtype=torch.uint8
    )


def test_load_of_the_checkpoint_is_the_trained_embedding_metric(checkpoint):
    model = load(checkpoint)
    assert isinstance(model, EmbeddingDistance) and not model.training and model.net.lora_rank == 0
    assert model.head is not None and model.backbone_name.count("+") == 1


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".onnx"])
def test_each_export_gives_the_checkpoints_distances(checkpoint, tmp_path, suffix):
    out = tmp_path / f"m{suffix}"
    export(checkpoint, out)
    want = load(checkpoint)
    got = load(out)
    for h, w in ((40, 36), (64, 64)):
        x0, x1 = _pair(h, w)
        with torch.no_grad():
            expected = want(x0, x1)
            torch.testing.assert_close(got(x0, x1).float(), expected, rtol=1e-4, atol=1e-5)
        assert expected.abs().min() > 1e-4


def test_the_lpips_pth_format_refuses_an_embedding_metric_in_one_line(checkpoint, tmp_path, capfd):
    line = assert_refused(["export", str(checkpoint), str(tmp_path / "m.pth")], capfd, tmp_path)
    assert "describes LPIPS metrics only, not an embedding metric" in line


def test_distance_takes_an_embedding_model(checkpoint, pngs, capsys):
    assert main(["distance", str(pngs[0]), str(pngs[1]), "--model", str(checkpoint)]) == 0
    value = float(capsys.readouterr().out.strip())
    a, b = (torch.from_numpy(load_image(p)).permute(2, 0, 1)[None] for p in pngs)
    with torch.no_grad():
        assert value == pytest.approx(load(checkpoint)(a, b).item(), abs=1e-6)


def test_evaluate_scores_an_embedding_checkpoint(checkpoint, module_bapps_h5, capsys):
    assert main(["evaluate", str(checkpoint), "--data", str(module_bapps_h5), "--groups", "2afc/val/*"]) == 0
    row = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("2afc/val/cnn"))
    with h5py.File(module_bapps_h5, "r") as f:
        ref, p0, p1, judge = (torch.from_numpy(f["2afc/val/cnn"][k][()]) for k in ("ref", "p0", "p1", "judge"))
    model = load(checkpoint)
    with torch.no_grad():
        d0, d1 = model(ref, p0), model(ref, p1)
    by_hand = ((d0 < d1) * (1 - judge) + (d1 < d0) * judge + (d0 == d1) * 0.5).float().mean() * 100
    assert float(row.split()[-1]) == pytest.approx(by_hand.item(), abs=0.01)
