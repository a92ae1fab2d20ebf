"""Side by side in one run: the original's training loop (lpips.Trainer) vs lpips-lightning's fit.

The original (richzhang/PerceptualSimilarity's Trainer, shipped in the `lpips` package) is timed
two ways: its step alone, fed already-decoded float batches (no loader), and with ``--full-loop``
its whole loop as its train.py runs it: a BAPPS-like folder of 64x64 PNG triplets read by the
original's loader (per item: PIL open, RGB, Resize(64), ToTensor, Normalize to [-1, 1], the
judgment from its .npy; a shuffling DataLoader with `--threads` workers, the original's nThreads),
written here after the original's `data/dataset/twoafc_dataset.py` because the `lpips` wheel does
not ship it. lpips-lightning trains on the same triplets, packed once (pack time printed apart).
Both use random backbones (no download).

    python bench/vs_original.py --variant lin --backbone alex --batch 50 --steps 40
    python bench/vs_original.py --full-loop --threads 2       # the original's PNG loader, 2 threads
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from throughput import run_one, write_random_judgments  # noqa: E402


class OriginalTwoAFC(torch.utils.data.Dataset):
    """The original's 2AFC loader: PNGs decoded, resized and normalised per item, every epoch."""

    def __init__(self, root: Path, load_size: int = 64) -> None:
        import torchvision.transforms as T

        self.paths = {k: sorted(str(p) for p in (root / k).iterdir()) for k in ("ref", "p0", "p1", "judge")}
        self.transform = T.Compose([T.Resize(load_size), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])

    def __len__(self) -> int:
        return len(self.paths["p0"])

    def __getitem__(self, i: int) -> dict:
        import numpy as np
        from PIL import Image

        item = {k: self.transform(Image.open(self.paths[k][i]).convert("RGB")) for k in ("p0", "p1", "ref")}
        item["judge"] = torch.FloatTensor(np.load(self.paths["judge"][i]).reshape((1, 1, 1)))
        return item


def original_full_loop_rate(
    root: Path, variant: str, backbone: str, batch: int, steps: int, warmup: int, threads: int
) -> float:
    """The original's train.py loop: its loader (`threads` workers, shuffled) into Trainer steps."""
    from lpips.trainer import Trainer

    trainer = Trainer()
    trainer.initialize(
        model="lpips", net=backbone, use_gpu=False, is_train=True, pnet_rand=True, pnet_tune=variant != "lin"
    )
    loader = torch.utils.data.DataLoader(OriginalTwoAFC(root), batch_size=batch, shuffle=True, num_workers=threads)
    done, start = 0, None
    while done < warmup + steps:
        for data in loader:
            if done == warmup:
                start = time.perf_counter()
            trainer.set_input(data)
            trainer.optimize_parameters()
            done += 1
            if done == warmup + steps:
                break
    return steps * batch / (time.perf_counter() - start)


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
    p.add_argument("--full-loop", action="store_true", help="the original with its PNG loader (see above)")
    p.add_argument("--threads", type=int, default=2, help="the original's loader workers (--full-loop)")
    p.add_argument("--repeat", type=int, default=1, help="alternate the runs this many times; medians are compared")
    p.add_argument(
        "--precision",
        nargs="+",
        default=["32"],
        choices=["32", "bf16-mixed"],
        help="lpips-lightning's precision(s); the original trains in fp32",
    )
    args = p.parse_args()
    n = args.batch * (args.steps + args.warmup + 2)
    timed = (args.variant, args.backbone, args.batch, args.steps, args.warmup)
    originals, ours = [], {precision: [] for precision in args.precision}
    with tempfile.TemporaryDirectory() as tmp:
        if args.full_loop:
            from pack_speed import make_tree

            from lpips_lightning.pack.pack import pack

            make_tree(Path(tmp) / "bapps", n, 64)
            start = time.perf_counter()
            pack(Path(tmp) / "bapps", Path(tmp) / "b.h5", size=64, workers=os.cpu_count(), progress=False)
            packed = time.perf_counter() - start
            data = Path(tmp) / "b.h5"
            label = f"original train.py loop (its PNG loader, {args.threads} threads)"
        else:
            data = write_random_judgments(Path(tmp) / "b.h5", n)
            label = "original lpips.Trainer step (decoded tensors, no loader)"
        for _ in range(args.repeat):  # alternating, so that a busy spell of a shared machine hits both
            if args.full_loop:
                originals.append(original_full_loop_rate(Path(tmp) / "bapps/2afc/train/bench", *timed, args.threads))
            else:
                originals.append(original_rate(*timed))
            val = [] if args.full_loop else None  # the packed tree has training triplets only: no validation groups
            for precision in args.precision:
                rate = run_one(data, *timed, "cpu", precision, False, False, "auto", 0, val=val)
                ours[precision].append(rate["rate"])
    print(
        f"{time.strftime('%Y-%m-%d')} cpu x{torch.get_num_threads()} {args.variant}-{args.backbone} batch {args.batch}"
    )
    print(f"{label}: triplets/s={statistics.median(originals):.0f} (runs: {', '.join(f'{r:.0f}' for r in originals)})")
    for precision, rates in ours.items():
        print(
            f"lpips-lightning fit, precision {precision} (JudgmentsDataModule, Lightning): "
            f"triplets/s={statistics.median(rates):.0f} (runs: {', '.join(f'{r:.0f}' for r in rates)})"
        )
    if args.full_loop:
        print(f"(lpips-lightning packed the {n:,} triplets once beforehand in {packed:.1f} s)")
    for precision, rates in ours.items():
        pairs = ", ".join(f"{b / a:.2f}" for a, b in zip(originals, rates))
        ratio = statistics.median(rates) / statistics.median(originals)
        print(f"ratio of medians, precision {precision}: {ratio:.2f}x (each round: {pairs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
