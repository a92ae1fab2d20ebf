"""Random reads from a judgments file: triplets/s of JudgmentsDataset, lazy (from the file) and in memory.

    python bench/read_speed.py --n 20000
Goal: lazy reading at least 10k triplets/s per process.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from throughput import write_random_judgments  # noqa: E402

from lpips_lightning.data.dataset import JudgmentsDataset  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--batch", type=int, default=50)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_random_judgments(Path(tmp) / "r.h5", args.n)
        order = np.random.default_rng(0).permutation(args.n)
        for in_memory in (False, True):
            ds = JudgmentsDataset(path, ["2afc/train/random"], in_memory=in_memory)
            ds.__getitems__(order[: args.batch].tolist())
            t = time.perf_counter()
            for i in range(0, args.n, args.batch):
                ds.__getitems__(order[i : i + args.batch].tolist())
            rate = args.n / (time.perf_counter() - t)
            print(
                f"{'in memory' if in_memory else 'lazy     '}: {rate:,.0f} triplets/s (random batches of {args.batch})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
