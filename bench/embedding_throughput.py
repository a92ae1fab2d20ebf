"""Training throughput of an embedding metric (DreamSim-style: one ViT, LoRA, hinge) vs a plain Lightning loop.

Both train on the same random triplets, side by side in one process: `LPIPSModule` with
``distance: embedding`` (``tune``, ``lora_rank``, ``hinge``) through `Trainer.fit` and the real
`JudgmentsDataModule` (uint8 in memory, or on the GPU), against a plain DreamSim-style
LightningModule: the same timm ViT with the same LoRA adapters, three separate forward passes
(ref, p0, p1) per step, fp32, automatic optimisation, and a DataLoader that decodes the three PNG
files of each triplet per step and resizes them (PIL, bicubic) to the model's size, as DreamSim's
loader does. Each run prints ``triplets/s=<number>``; the last line is the ratio.

    python bench/embedding_throughput.py                      # CPU: a tiny ViT (vit_tiny, 2 blocks, 64 px)
    python bench/embedding_throughput.py --device cuda --model vit_base_patch16_224.dino --img-size 224 \\
        --depth 12 --source-size 256 --precision bf16-mixed   # the issue's GPU comparison (ViT-B/16)

Random weights (speed does not depend on them); nothing downloads.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from throughput import Timer, batches, quiet_trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lpips_lightning.backbones.lora import add_adapters, lora_targets  # noqa: E402
from lpips_lightning.data import judgments  # noqa: E402
from lpips_lightning.data.datamodule import JudgmentsDataModule  # noqa: E402
from lpips_lightning.train.module import LPIPSModule  # noqa: E402

KEYS = ("ref", "p0", "p1")


def write_triplets(folder: Path, n: int, size: int, seed: int = 0) -> Path:
    """`n` random triplets, once as PNG files (the plain loop's) and once as a judgments file (ours)."""
    rng = np.random.default_rng(seed)
    arrays = {k: rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8) for k in KEYS}
    judge = rng.random(n).astype(np.float32)
    for k in KEYS:
        (folder / k).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(arrays[k][i].transpose(1, 2, 0)).save(folder / k / f"{i:06d}.png")
    np.save(folder / "judge.npy", judge)
    with judgments.write(folder / "t.h5", overwrite=True) as w:
        for group, count in (("2afc/train/random", n), ("2afc/val/random", 8)):
            g = w.create_group(group, count, (size, size), "bench: random")
            w.fill(g, 0, {**{k: v[:count] for k, v in arrays.items()}, "judge": judge[:count]})
    return folder


class PngTriplets(torch.utils.data.Dataset):
    """DreamSim's loader: each triplet's three PNG files decoded and resized (bicubic) at every step."""

    def __init__(self, folder: Path, size: int) -> None:
        self.folder, self.size = folder, size
        self.judge = np.load(folder / "judge.npy")

    def __len__(self) -> int:
        return len(self.judge)

    def __getitem__(self, i: int) -> dict:
        out = {}
        for k in KEYS:
            img = Image.open(self.folder / k / f"{i:06d}.png").convert("RGB")
            img = img.resize((self.size, self.size), Image.BICUBIC)
            out[k] = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255  # ToTensor
        out["judge"] = torch.tensor(self.judge[i])
        return out


class PlainDreamSim(pl.LightningModule):
    """DreamSim's training step, plainly: three embeddings, 1 - cos, hinge loss, Adam on the LoRA adapters."""

    def __init__(self, model: str, args: dict, lora_rank: int, margin: float = 0.05, lr: float = 3e-4) -> None:
        super().__init__()
        self.model = timm.create_model(model, pretrained=False, num_classes=0, **args)
        self.model.requires_grad_(False)
        add_adapters(self.model, lora_targets(self.model), lora_rank)
        cfg = self.model.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1))
        self.margin, self.lr = margin, lr

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features((x - self.mean) / self.std)[:, 0]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        ref, e0, e1 = (self.embed(batch[k]) for k in KEYS)
        d0, d1 = 1 - F.cosine_similarity(ref, e0), 1 - F.cosine_similarity(ref, e1)
        target = 2 * batch["judge"] - 1  # judge 1: p1 is closer (d1 < d0)
        return torch.clamp(self.margin - (d0 - d1) * target, min=0).mean()

    def configure_optimizers(self):
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr)


def ours(folder: Path, a, args: dict) -> float:
    torch.manual_seed(0)
    model = LPIPSModule(
        variant="tune", distance="embedding", backbone=f"timm:{a.model}", backbone_args=args, pretrained=False,
        lora_rank=a.lora_rank, loss="hinge", features="cls", lr=3e-4, channels_last=False,
    )  # fmt: skip
    dm = JudgmentsDataModule(
        str(folder / "t.h5"), train=["2afc/train/*"], val=["2afc/val/*"], batch_size=a.batch, in_memory=True,
        **batches(False, model.hparams.capture, a.device, a.precision),
    )  # fmt: skip
    timer = Timer(a.warmup, a.steps, a.batch)
    quiet_trainer(a.device, a.precision, max_epochs=10_000, callbacks=[timer]).fit(model, dm)
    return timer.rate or float("nan")


def plain(folder: Path, a, args: dict) -> float:
    torch.manual_seed(0)
    model = PlainDreamSim(a.model, args, a.lora_rank)
    loader = torch.utils.data.DataLoader(
        PngTriplets(folder, a.img_size), batch_size=a.batch, shuffle=True, num_workers=a.workers,
        persistent_workers=a.workers > 0,
    )  # fmt: skip
    timer = Timer(a.warmup, a.steps, a.batch)
    quiet_trainer(a.device, "32", max_epochs=10_000, callbacks=[timer]).fit(model, loader)
    return timer.rate or float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_tiny_patch16_224", help="a timm ViT")
    p.add_argument("--img-size", type=int, default=64, help="the model's input size (DreamSim: 224)")
    p.add_argument("--depth", type=int, default=2, help="transformer blocks (ViT-B/16: 12)")
    p.add_argument("--source-size", type=int, default=64, help="the stored images' size")
    p.add_argument("--n", type=int, default=512, help="training triplets")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--workers", type=int, default=0, help="the plain loop's loader processes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="32", help="ours (the plain loop: fp32, as DreamSim trains)")
    a = p.parse_args(argv)
    args = {"img_size": a.img_size, "depth": a.depth}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_triplets(Path(tmp), a.n, a.source_size)
        base = plain(folder, a, args)
        what = f"{a.model} depth={a.depth} {a.img_size}px batch={a.batch}"
        print(f"plain DreamSim-style loop {what} fp32 triplets/s={base:.1f}")
        rate = ours(folder, a, args)
        print(f"lpips-lightning {what} {a.precision} triplets/s={rate:.1f}")
    print(f"ratio ours / plain = {rate / base:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
