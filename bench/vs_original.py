"""Side by side in one run: the original's training step (lpips.Trainer) vs lpips-lightning's fit.

The original (richzhang/PerceptualSimilarity's Trainer, shipped in the `lpips` package) is fed
already-decoded float batches, so it is timed without its PNG decoding: the ratio printed here
understates the gap of the original's real pipeline. Both use random backbones (no download).

    python bench/vs_original.py --variant lin --backbone alex --batch 50 --steps 40
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from throughput import run_one, write_random_judgments  # noqa: E402


def original_rate(variant: str, backbone: str, batch: int, steps: int, warmup: int) -> float:
    from lpips.trainer import Trainer

    trainer = Trainer()
    trainer.initialize(
        model="lpips", net=backbone, use_gpu=False, is_train=True, pnet_rand=True, pnet_tune=variant != "lin"
    )
    g = torch.Generator().manual_seed(0)
    data = {k: torch.rand(batch, 3, 64, 64, generator=g) * 2 - 1 for k in ("ref", "p0", "p1")}
    data["judge"] = torch.rand(batch, 1, 1, 1, generator=g)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        trainer.set_input(data)
        trainer.optimize_parameters()
    return steps * batch / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="lin", choices=["lin", "tune"])
    p.add_argument("--backbone", default="alex", choices=["alex", "vgg", "squeeze"])
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args()
    original = original_rate(args.variant, args.backbone, args.batch, args.steps, args.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_random_judgments(Path(tmp) / "b.h5", args.batch * (args.steps + args.warmup + 2))
        ours = run_one(
            data, args.variant, args.backbone, args.batch, args.steps, args.warmup, "cpu", "32", False, False, "auto", 0
        )["rate"]
    print(
        f"{time.strftime('%Y-%m-%d')} cpu x{torch.get_num_threads()} {args.variant}-{args.backbone} batch {args.batch}"
    )
    print(f"original lpips.Trainer step (decoded tensors, no loader): triplets/s={original:.0f}")
    print(f"lpips-lightning fit (JudgmentsDataModule, Lightning):    triplets/s={ours:.0f}")
    print(f"ratio: {ours / original:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
