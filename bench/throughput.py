"""Training throughput of LPIPSModule through Lightning's Trainer.fit with the real JudgmentsDataModule.

Writes a judgments file of random triplets into a temporary folder, then for each combination
of the flags times K steady-state training steps (after W warm-up steps, device synchronised)
and prints one line per run ending in ``triplets/s=<number>``, with peak host and device memory.
Several values for a flag give a table.

    python bench/throughput.py --variant lin --backbone alex --batch 50 --steps 30          # CPU
    python bench/throughput.py --device cuda --precision bf16-mixed --batch 50 512
    python bench/throughput.py --matrix      # the whole GPU matrix (variants x backbones x 50, 512, captured and eager)
    python bench/throughput.py --backbone alex torchvision:resnet50 timm:vit_small_patch14_dinov2   # any spec

ImageNet weights are not needed: the backbones start random (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from jsonargparse import Namespace  # noqa: E402

from lpips_lightning.backbones.specs import short_name  # noqa: E402
from lpips_lightning.data import judgments  # noqa: E402
from lpips_lightning.data.datamodule import JudgmentsDataModule  # noqa: E402
from lpips_lightning.train import links  # noqa: E402
from lpips_lightning.train.module import LPIPSModule  # noqa: E402


def write_random_judgments(path: Path, n: int, size: int = 64, seed: int = 0) -> Path:
    """A judgments file of `n` random triplets (and a tiny val group), written in blocks."""
    rng = np.random.default_rng(seed)
    with judgments.write(path, overwrite=True) as w:
        for group, count in (("2afc/train/random", n), ("2afc/val/random", 8)):
            g = w.create_group(group, count, (size, size), "bench: random")
            for start in range(0, count, 4096):
                m = min(4096, count - start)
                block = {k: rng.integers(0, 256, (m, 3, size, size), dtype=np.uint8) for k in ("ref", "p0", "p1")}
                block["judge"] = rng.random(m).astype(np.float32)
                w.fill(g, start, block)
    return path


class Timer(pl.Callback):
    """Times training batches warmup..warmup+steps (synchronising the device), then stops the run.

    A "step" is one optimizer step of `batch` triplets; with the feature cache one training
    batch holds many of them, so batches are converted by the triplets they carry.
    """

    def __init__(self, warmup: int, steps: int, batch: int) -> None:
        self.warmup, self.steps, self.batch = warmup, steps, batch
        self.seen = 0
        self.start = self.rate = None

    def _sync(self, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen += len(batch["judge"])
        if self.start is None and self.seen >= self.warmup * self.batch:
            self._sync(pl_module)
            self.start, self.counted = time.perf_counter(), self.seen
        elif self.start is not None and self.seen - self.counted >= self.steps * self.batch and self.rate is None:
            self._sync(pl_module)
            self.rate = (self.seen - self.counted) / (time.perf_counter() - self.start)
            trainer.should_stop = True


def batches(feature_cache: bool, capture: bool | str, device: str, precision: str) -> dict:
    """The data module's `index_only` and `steps_per_batch` as `lpips-lightning fit` links them for this run."""
    trainer = Namespace(accelerator=device, devices=1, num_nodes=1, precision=precision, fast_dev_run=False)
    for option in ("limit_train_batches", "val_check_interval", "callbacks"):
        trainer[option] = None
    return {
        "index_only": links.index_only(feature_cache),
        "steps_per_batch": links.steps_per_batch(feature_cache, capture, trainer),
    }


def quiet_trainer(device: str, precision: str, **kw) -> pl.Trainer:
    """One device, no validation, logging, checkpoints or progress bar: only training is timed."""
    return pl.Trainer(
        accelerator=device,
        devices=1,
        precision=precision,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


def run_one(
    data: Path,
    variant: str,
    backbone: str | dict,
    batch: int,
    steps: int,
    warmup: int,
    device: str,
    precision: str,
    compile: bool,
    feature_cache: bool,
    on_device: str,
    num_workers: int,
    taps: list | None = None,
    backbone_args: dict | None = None,
    capture: str = "auto",
    val: list[str] | None = None,
) -> dict:
    torch.manual_seed(0)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = LPIPSModule(
        variant=variant,
        backbone=backbone,
        taps=taps,
        backbone_args=backbone_args,
        pretrained=False if variant != "scratch" else None,
        compile=compile,
        feature_cache=feature_cache,
        capture={"on": True, "off": False}.get(capture, capture),
    )
    dm = JudgmentsDataModule(
        str(data),
        train=["2afc/train/*"],
        val=["2afc/val/*"] if val is None else val,
        batch_size=batch,
        num_workers=num_workers,
        in_memory=True,
        on_device=on_device,
        **batches(feature_cache, model.hparams.capture, device, precision),
    )
    timer = Timer(warmup, steps, batch)
    trainer = quiet_trainer(device, precision, max_epochs=10_000, callbacks=[timer])  # the timer stops it
    trainer.fit(model, dm)
    return {
        "rate": timer.rate or float("nan"),
        "host_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "device_gb": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0,
    }


class FitClock(pl.Callback):
    """Wall time from `on_fit_start` (data set up, in memory) to the end of the fit, device synchronised."""

    def on_fit_start(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self.start = time.perf_counter()

    def on_fit_end(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start


def lin_recipe(n: int, device: str, precision: str, epochs: int = 10, batch: int = 50) -> None:
    """Wall time of the paper's whole lin recipe with the feature cache (feature pass included).

    Two numbers: the whole `Trainer.fit` (reading the file into memory included) and the fit
    itself, from the data in memory to the last step (the feature pass, every epoch, validation).
    """
    with tempfile.TemporaryDirectory() as tmp:
        data = write_random_judgments(Path(tmp) / "recipe.h5", n)
        model = LPIPSModule(
            variant="lin",
            backbone="alex",
            pretrained=False,
            feature_cache=True,
            epochs_constant=epochs // 2,
            epochs_decay=epochs - epochs // 2,
        )
        dm = JudgmentsDataModule(
            str(data), val=["2afc/val/*"], batch_size=batch, in_memory=True, **batches(True, "auto", device, precision)
        )
        clock = FitClock()
        trainer = quiet_trainer(device, precision, max_epochs=epochs, callbacks=[clock])
        start = time.perf_counter()
        trainer.fit(model, dm)
        whole = time.perf_counter() - start
    print(
        f"lin-alex recipe feature_cache=on n={n} epochs={epochs} batch={batch} precision={precision} "
        f"device={device}: fit {clock.seconds:.1f} s from the data in memory (feature pass included), "
        f"{whole:.1f} s with reading the file; {n * epochs:,} triplet-steps, "
        f"triplets/s={n * epochs / clock.seconds:.0f}",
        flush=True,
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", nargs="+", default=["lin"], choices=["lin", "tune", "scratch"])
    p.add_argument(
        "--backbone",
        nargs="+",
        default=["alex"],
        help="backbone specs: alex, vgg, squeeze, torchvision:<model>, timm:<model>, or a JSON "
        '{"class_path": ..., "init_args": ...}',
    )
    p.add_argument("--taps", nargs="+", default=None, help="taps of a torchvision:/timm: backbone (all runs)")
    p.add_argument("--backbone-args", default=None, help="JSON keyword arguments of the torchvision/timm constructor")
    p.add_argument("--batch", nargs="+", type=int, default=[50])
    p.add_argument("--steps", type=int, default=30, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, allocator)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", nargs="+", default=["32"], choices=["32", "bf16-mixed", "16-mixed"])
    p.add_argument(
        "--compile",
        nargs="+",
        default=["off"],
        choices=["off", "default", "reduce-overhead", "max-autotune"],
        help="torch.compile the training step (reduce-overhead: CUDA graphs)",
    )
    p.add_argument("--feature-cache", nargs="+", default=["off"], choices=["off", "on"], help="lin only")
    p.add_argument(
        "--capture",
        nargs="+",
        default=["auto"],
        choices=["auto", "on", "off"],
        help="the training step as one CUDA graph (auto: on CUDA); off: the eager step",
    )
    p.add_argument("--on-device", default="auto", choices=["auto", "true", "false"])
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument(
        "--lin-recipe",
        type=int,
        default=0,
        metavar="N",
        help="time the whole 10-epoch lin recipe on N random triplets with the feature cache",
    )
    p.add_argument(
        "--matrix",
        action="store_true",
        help="GPU matrix: lin/tune x alex/vgg x batch 50/512, bf16-mixed, captured (the default); alex also eager",
    )
    args = p.parse_args(argv)
    if args.matrix:
        args.variant, args.backbone, args.batch = ["lin", "tune"], ["alex", "vgg"], [50, 512]
        args.precision, args.compile, args.device = ["bf16-mixed"], ["off"], "cuda"
        args.capture = ["on", "off"]
        args.steps, args.warmup = max(args.steps, 60), max(args.warmup, 10)
    if args.lin_recipe:
        lin_recipe(args.lin_recipe, args.device, args.precision[0])
        return 0
    combos = list(
        itertools.product(
            args.variant, args.backbone, args.batch, args.precision, args.compile, args.feature_cache, args.capture
        )
    )
    combos = [c for c in combos if c[5] == "off" or c[0] == "lin"]
    if args.matrix:  # the eager step as the baseline for alex only (vgg's steps are compute-bound)
        combos = [c for c in combos if c[6] == "on" or c[1] == "alex"]
    n = max(b for b in args.batch) * (args.steps + args.warmup + 2)
    if "on" in args.feature_cache:  # whole cached chunks of 64 minibatches
        n = max(n, max(args.batch) * 64 * 2)
    on_device = {"auto": "auto", "true": True, "false": False}[args.on_device]
    specs = {b: json.loads(b) if b.lstrip().startswith("{") else b for b in args.backbone}
    backbone_args = json.loads(args.backbone_args) if args.backbone_args else None
    print(
        f"# {time.strftime('%Y-%m-%d')} device={args.device} "
        f"{torch.cuda.get_device_name() if args.device == 'cuda' else os.cpu_count()} "
        f"torch={torch.__version__} pl={pl.__version__}",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_random_judgments(Path(tmp) / "bench.h5", n)
        for variant, backbone, batch, precision, comp, cache, capture in combos:
            r = run_one(
                data,
                variant,
                specs[backbone],
                batch,
                args.steps,
                args.warmup,
                args.device,
                precision,
                False if comp == "off" else comp,
                cache == "on",
                on_device,
                args.num_workers,
                args.taps,
                backbone_args,
                capture,
            )
            label = (
                f"{variant}-{short_name(specs[backbone])} batch={batch} precision={precision} compile={comp} "
                f"feature_cache={cache} capture={capture} device={args.device}"
            )
            print(
                f"{label} host_peak_gb={r['host_gb']:.2f} device_peak_gb={r['device_gb']:.2f} "
                f"triplets/s={r['rate']:.0f}",
                flush=True,
            )
            rows.append((variant, short_name(specs[backbone]), batch, precision, comp, cache, capture, r["rate"]))
    if len(rows) > 1:
        print("\n| variant | backbone | batch | precision | compile | feature_cache | capture | triplets/s |")
        print("|---|---|---|---|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(map(str, row[:-1])) + f" | {row[-1]:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
