"""Packing speed: `lpips-lightning pack` vs PIL alone decoding and resizing the same files.

Creates a BAPPS-like tree of N random 256x256 PNG triplets (like BAPPS' originals before
resizing), then times, with the same number of processes:
  1. PIL only: open, convert("RGB"), resize to 64x64 bilinear, for every image (a Pool);
  2. pack: the same decoding plus pairing, checks and writing the HDF5 file.
Prints both times and their ratio (goal: pack within 1.3x of PIL alone).

    python bench/pack_speed.py --n 3000 --workers 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from lpips_lightning.images import load_image  # noqa: E402
from lpips_lightning.pack.pack import pack  # noqa: E402


def make_tree(root: Path, n: int, size: int) -> list[str]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8)
    files = []
    for folder in ("ref", "p0", "p1", "judge"):
        (root / "2afc/train/bench" / folder).mkdir(parents=True)
    for i in range(n):
        for j, folder in enumerate(("ref", "p0", "p1")):
            path = root / "2afc/train/bench" / folder / f"{i:06d}.png"
            Image.fromarray(np.roll(base[(i + j) % 8], i, axis=0)).save(path)
            files.append(str(path))
        np.save(root / "2afc/train/bench/judge" / f"{i:06d}.npy", np.array([rng.random()], np.float32))
    return files


def _decode(path: str) -> int:
    return load_image(path, 64).shape[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=3000, help="triplets")
    p.add_argument("--size", type=int, default=256, help="source image size")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "bapps"
        files = make_tree(root, args.n, args.size)
        with Pool(args.workers) as pool:  # warm the page cache and the pool once
            list(pool.imap(_decode, files[:200], chunksize=16))
        t = time.perf_counter()
        with Pool(args.workers) as pool:
            list(pool.imap(_decode, files, chunksize=16))
        pil = time.perf_counter() - t
        t = time.perf_counter()
        pack(root, Path(tmp) / "out.h5", size=64, workers=args.workers, progress=False)
        packed = time.perf_counter() - t
    print(f"{time.strftime('%Y-%m-%d')} {args.n} triplets of {args.size}px PNG, {args.workers} processes")
    print(f"PIL decode+resize only: {pil:.2f} s ({3 * args.n / pil:,.0f} images/s)")
    print(f"pack:                   {packed:.2f} s ({args.n / packed:,.0f} triplets/s)")
    print(f"ratio pack / PIL: {packed / pil:.2f} (goal <= 1.3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
