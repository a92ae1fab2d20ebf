"""The tool commands (pack, download, demo-data, export, evaluate): parse the options, call the library.

Each ``*_command(argv)`` parses its own options with the one-line-error parser and calls one
library function; `cli.main` maps command names to them.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import judgments
from ..datamodules.demo import build_demo
from ..download import DEFAULT_BASE_URL, download
from ..errors import ArgumentParser, ConfigError, DownloadInterrupted, JudgmentsError
from ..evaluate import OUTPUT_FILES, evaluate, pick_device, resolve_model, table, write_outputs
from ..export import FORMATS, export
from ..pack import pack

TRUST_HELP = "build a custom backbone (class_path) named by the file: this imports and runs its code"


def _label(spec: str, specs: Sequence[str]) -> str:
    """A short column name: a file's name, unless two models share it."""
    name = Path(spec).name if Path(spec).exists() else spec
    return name if sum(Path(s).name == name for s in specs) <= 1 else spec

def pack_command(argv: Sequence[str]) -> int:
    """``lpips-lightning pack``."""
    p = ArgumentParser(
        prog="lpips-lightning pack",
        description="Pack BAPPS (folders or the downloaded archives) or a CSV of judgments into one judgments file "
        "(HDF5).",
    )
    p.add_argument(
        "source",
        help="a BAPPS root (holding 2afc/ and/or jnd/), a folder of the downloaded BAPPS archives "
        "(twoafc_train.tar.gz, twoafc_val.tar.gz, jnd.tar.gz: read as they are, nothing unpacked), one such "
        ".tar.gz, or a CSV of judgments",
    )
    p.add_argument("out", help="the judgments file to write, e.g. bapps.h5")
    p.add_argument("--size", type=int, default=64, help="resize images to SIZE x SIZE (default 64, PIL bilinear)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    p.add_argument("--group", default=None, help="group of a CSV source (default 2afc/train/<csv stem>)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    # Interrupted (SIGINT, SIGTERM) goes up to cli.main: "interrupted", exit status err.status
    out = pack(args.source, args.out, args.size, args.workers, args.group, args.overwrite, progress=not args.quiet)
    with judgments.open_file(out) as f:
        for name in judgments.groups(f):
            print(f"{name}: {f[name][judgments.TARGET[judgments.kind_of(name)]].shape[0]} items")
    print(f"wrote {out}")
    return 0

def download_command(argv: Sequence[str]) -> int:
    """``lpips-lightning download``."""
    p = ArgumentParser(
        prog="lpips-lightning download",
        description="Download the BAPPS archives into DIR (resumable; each archive checked before it is kept).",
    )
    p.add_argument("dataset", help="the dataset: bapps")
    p.add_argument("folder", metavar="DIR", help="where the .tar.gz archives go (created if missing)")
    p.add_argument(
        "--parts", nargs="+", default=None, metavar="PART", help="which archives: train, val, jnd (default: all three)"
    )
    p.add_argument(
        "--base-url",
        default=DEFAULT_BASE_URL,
        help=f"where the archives are: http(s)://, file:// or a local folder (default {DEFAULT_BASE_URL})",
    )
    p.add_argument("--force", action="store_true", help="fetch archives again even when DIR holds them")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds without data before giving up (default 30)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        saved = download(
            args.dataset, args.folder, args.parts, args.base_url, args.force, args.timeout, progress=not args.quiet
        )
    except DownloadInterrupted as err:
        print(str(err) or "interrupted", file=sys.stderr)
        return 130
    print(f"archives in {args.folder}: {', '.join(path.name for path in saved.values())}")
    print(f"next: lpips-lightning pack {shlex.quote(str(args.folder))} bapps.h5")
    return 0

def demo_data_command(argv: Sequence[str]) -> int:
    """``lpips-lightning demo-data``."""
    p = ArgumentParser(
        prog="lpips-lightning demo-data",
        description="Build the demo judgments file (real photos, simulated observers).",
    )
    p.add_argument("out", help="the judgments file to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=4000, help="training triplets")
    p.add_argument("--val", type=int, default=500, help="validation triplets per subset")
    p.add_argument("--jnd", type=int, default=500, help="JND pairs")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    for name, low, high in (("seed", 0, 2**32 - 1), ("train", 1, 1_000_000), ("val", 1, 100_000), ("jnd", 1, 100_000)):
        value = getattr(args, name)
        if not low <= value <= high:
            raise JudgmentsError(f"--{name} {value}: must be from {low} to {high}")
    out = build_demo(args.out, args.seed, args.train, args.val, args.jnd, args.overwrite)
    print(f"wrote {out} (simulated judgments on scikit-image photos, seed {args.seed})")
    return 0

def export_command(argv: Sequence[str]) -> int:
    """``lpips-lightning export``."""
    p = ArgumentParser(prog="lpips-lightning export", description="Export a trained metric.")
    p.add_argument("ckpt", help="a checkpoint of `lpips-lightning fit`")
    p.add_argument("out", help="output file: .pth (lpips), .safetensors, .pt (TorchScript) or .onnx")
    p.add_argument("--format", choices=sorted(set(FORMATS.values())), default=None)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="image size the TorchScript/ONNX export is traced at (default 64); the export is fixed to it "
        "only where the backbone does not export for any size",
    )
    p.add_argument("--trust-code", action="store_true", help=TRUST_HELP)
    args = p.parse_args(argv)
    how = export(args.ckpt, args.out, args.format, args.overwrite, args.size, args.trust_code)
    print(f"wrote {args.out}")
    print(f"load it with: {how}")
    if (args.format or FORMATS.get(Path(args.out).suffix.lower())) == "lpips":
        print(
            "torchmetrics: lpips_lightning.export.load_into_torchmetrics("
            f"LearnedPerceptualImagePatchSimilarity(net_type=...), {args.out!r})"
        )
    return 0

def evaluate_command(argv: Sequence[str]) -> int:
    """``lpips-lightning evaluate``."""
    p = ArgumentParser(prog="lpips-lightning evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="checkpoint, export, official:NET, baseline:NET, l2 or ssim (several: one column each)",
    )
    p.add_argument("--data", required=True, help="a judgments file (lpips-lightning pack / demo-data)")
    p.add_argument("--groups", nargs="+", default=None, help="groups or globs (default: the val and test groups)")
    p.add_argument("--out", default=None, help="folder for results.json/.csv, per-item distances and charts")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--trust-code", action="store_true", help="build custom backbones that model files name (runs their code)"
    )
    args = p.parse_args(argv)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out}: is a file; give a folder for the results")
        taken = [n for n in OUTPUT_FILES if (out / n).exists()]
        if taken and not args.overwrite:
            raise ConfigError(f"--out {out}: already holds {', '.join(taken)}; pass --overwrite or another folder")
        from ..outputs import check_output

        inputs = [args.data, *(m for m in args.models if Path(m).exists())]
        for name in OUTPUT_FILES:  # never an input of this command, never a device or pipe
            if (out / name).exists() or out.is_dir():
                check_output(out / name, overwrite=True, inputs=inputs, what="evaluation result")
    from ..outputs import removed_if_unused

    # a refusal or an interrupt leaves no empty --out folder behind
    with removed_if_unused(out) if out is not None else contextlib.nullcontext():
        if out is not None:
            try:  # before any scoring: a folder that cannot be made fails now, not after an hour
                out.mkdir(parents=True, exist_ok=True)
                probe = out / f".write-test-{os.getpid()}"
                probe.touch()
                probe.unlink()
            except OSError as err:
                raise ConfigError(f"--out {out}: cannot write there ({err.strerror or type(err).__name__})") from None
        pick_device(args.device)  # before any model is loaded
        models = {_label(spec, args.models): resolve_model(spec, args.trust_code) for spec in args.models}
        result = evaluate(models, args.data, args.groups, args.batch_size, args.device, progress=not args.quiet)
    print(table(result["scores"], result["groups"]))
    if out is not None:
        for path in write_outputs(result, out):
            print(f"wrote {path}")
    return 0
