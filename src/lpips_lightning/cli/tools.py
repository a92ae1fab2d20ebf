"""The tool commands (pack, download, demo-data, export, evaluate) as plain typed functions.

Each function's signature is the command's options (see `parser.add_function_options`), its
docstring the help; it calls one library function and prints what the user needs next. The
library is imported inside each function, so that ``lpips-lightning CMD --help`` answers
without torch (`main.COMMANDS` is the one lazy place for the command modules themselves).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Literal

from .. import paper
from ..errors import ConfigError, DownloadInterrupted, JudgmentsError, check_choice
from ..outputs import check_output, removed_if_unused
from ..pack.download import DEFAULT_BASE_URL
from .parser import Arg

# the export formats by name, for --format's choices (tests check them against export.FORMATS)
EXPORT_FORMATS = Literal["lpips", "onnx", "safetensors", "torchscript"]
DEMO_RANGES = {"seed": (0, 2**32 - 1), "train": (1, 1_000_000), "val": (1, 100_000), "jnd": (1, 100_000)}


def pack_command(
    source: str,
    out: str,
    *,
    size: int = 64,
    workers: int | None = None,
    group: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    lower_is_better: bool = False,
    min_votes: int | None = None,
) -> int:
    """Pack BAPPS (folders or the downloaded archives), NIGHTS or a CSV of judgments into one judgments file (HDF5).

    Args:
        source: a BAPPS root (holding 2afc/ and/or jnd/), a folder of the downloaded BAPPS archives
            (twoafc_train.tar.gz, twoafc_val.tar.gz, jnd.tar.gz: read as they are, nothing unpacked), one such
            .tar.gz, a NIGHTS root (holding data.csv, ref/, distort/), a CSV of judgments, or a MOS CSV
            (ref_name,dist_name,mos[,std][,split])
        out: the judgments file to write, e.g. bapps.h5
        size: resize images to SIZE x SIZE (default 64, PIL bilinear)
        workers: decoding processes (default: all cores)
        group: group of a CSV source (default 2afc/train/<csv stem>; a MOS CSV: mos/test/<csv stem>)
        overwrite: replace OUT if it exists
        quiet: no progress bar
        lower_is_better: a MOS CSV of DMOS scores (a higher score means worse quality: LIVE, CSIQ)
        min_votes: a NIGHTS root's triplets with fewer votes are left out (default 6, as DreamSim's loader)
    """
    from ..data import judgments
    from ..pack.pack import pack

    # Interrupted (SIGINT, SIGTERM) goes up to cli.main: "interrupted", exit status err.status
    written = pack(
        source, out, size, workers, group, overwrite, not quiet, lower_is_better=lower_is_better, min_votes=min_votes
    )
    with judgments.open_file(written) as f:
        for name in judgments.groups(f):
            print(f"{name}: {f[name][judgments.TARGET[judgments.kind_of(name)]].shape[0]} items")
    print(f"wrote {written}")
    return 0


def download_command(
    dataset: str,
    folder: Annotated[str, Arg(metavar="DIR")],
    *,
    parts: Annotated[list[str] | None, Arg(metavar="PART")] = None,
    base_url: str = DEFAULT_BASE_URL,
    force: bool = False,
    timeout: float = 30.0,
    quiet: bool = False,
) -> int:
    """Download the BAPPS archives into DIR (resumable; each archive checked before it is kept).

    Args:
        dataset: the dataset: bapps
        folder: where the .tar.gz archives go (created if missing)
        parts: which archives: train, val, jnd (default: all three)
        base_url: where the archives are: http(s)://, file:// or a local folder (default %(default)s)
        force: fetch archives again even when DIR holds them
        timeout: seconds without data before giving up (default 30)
        quiet: no progress bar
    """
    from ..pack.download import download

    try:
        saved = download(dataset, folder, parts, base_url, force, timeout, progress=not quiet)
    except DownloadInterrupted as err:
        print(str(err) or "interrupted", file=sys.stderr)
        return 130
    print(f"archives in {folder}: {', '.join(path.name for path in saved.values())}")
    print(f"next: lpips-lightning pack {shlex.quote(str(folder))} bapps.h5")
    return 0


def demo_data_command(
    out: str, *, seed: int = 0, train: int = 4000, val: int = 500, jnd: int = 500, overwrite: bool = False
) -> int:
    """Build the demo judgments file (real photos, simulated observers).

    Args:
        out: the judgments file to write
        seed: the seed of the simulated observers and patches (default 0)
        train: training triplets
        val: validation triplets per subset
        jnd: JND pairs
        overwrite: replace OUT if it exists
    """
    from ..data.demo import build_demo

    for name, value in (("seed", seed), ("train", train), ("val", val), ("jnd", jnd)):
        low, high = DEMO_RANGES[name]
        if not low <= value <= high:
            raise JudgmentsError(f"--{name} {value}: must be from {low} to {high}")
    written = build_demo(out, seed, train, val, jnd, overwrite)
    print(f"wrote {written} (simulated judgments on scikit-image photos, seed {seed})")
    return 0


def export_command(
    ckpt: str,
    out: str,
    *,
    format: EXPORT_FORMATS | None = None,  # noqa: A002 (the option is --format)
    overwrite: bool = False,
    size: int | None = None,
    trust_code: bool = False,
) -> int:
    """Export a trained metric.

    Args:
        ckpt: a checkpoint of `lpips-lightning fit`
        out: output file: .pth (lpips), .safetensors, .pt (TorchScript) or .onnx
        format: the format, when the extension does not tell it
        overwrite: replace OUT if it exists
        size: image size the TorchScript/ONNX export is traced at (default 64); the export is fixed to it
            only where the backbone does not export for any size
        trust_code: build a custom backbone (class_path) named by the file: this imports and runs its code
    """
    from ..export.write import FORMATS, export

    how = export(ckpt, out, format, overwrite, size, trust_code)
    print(f"wrote {out}")
    print(f"load it with: {how}")
    if (format or FORMATS.get(Path(out).suffix.lower())) == "lpips":
        print(
            "torchmetrics: lpips_lightning.export.load_into_torchmetrics("
            f"LearnedPerceptualImagePatchSimilarity(net_type=...), {out!r})"
        )
    return 0


def _label(spec: str, specs: list[str]) -> str:
    """A short column name: a file's name, unless two models share it."""
    name = Path(spec).name if Path(spec).exists() else spec
    return name if sum(Path(s).name == name for s in specs) <= 1 else spec


def _check_out(out: Path, overwrite: bool, inputs: list[str], names: tuple[str, ...]) -> None:
    """Refuse an --out that is a file, holds results (without --overwrite), or would replace an input."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; give a folder for the results")
    taken = [n for n in names if (out / n).exists()]
    if taken and not overwrite:
        raise ConfigError(f"--out {out}: already holds {', '.join(taken)}; pass --overwrite or another folder")
    for name in names:  # never an input of this command, never a device or pipe
        if (out / name).exists() or out.is_dir():
            check_output(out / name, overwrite=True, inputs=inputs, what="evaluation result")


def _make_out(out: Path) -> None:
    """Create --out before any scoring: a folder that cannot be made fails now, not after an hour."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot write there ({err.strerror or type(err).__name__})") from None


def evaluate_command(
    models: Annotated[list[str], Arg(metavar="MODEL")],
    *,
    data: str,
    groups: list[str] | None = None,
    out: str | None = None,
    overwrite: bool = False,
    batch_size: int = 64,
    device: str | None = None,
    quiet: bool = False,
    trust_code: bool = False,
    reference: str | None = None,
    bootstrap: int = 0,
    seed: int = 0,
) -> int:
    """Score any metric on a judgments file: the paper's table, per subset, exact over all items.

    Args:
        models: checkpoint, export, official:NET, baseline:NET, l2 or ssim (several: one column each)
        data: a judgments file (lpips-lightning pack / demo-data)
        groups: groups or globs (default: the val and test groups)
        out: folder for results.json/.csv, per-item distances and charts
        overwrite: replace results already in --out
        batch_size: items per batch (default 64)
        device: cpu, cuda or cuda:N (default: cuda when available)
        quiet: no progress bar and no line per model
        trust_code: build custom backbones that model files name (runs their code)
        reference: paper: also print the paper's Table 5 (2AFC per BAPPS subset, in percent) beside these scores
        bootstrap: resamples of each group's items for a 95 percent interval of every score (table, results; 0: none)
        seed: the bootstrap's random seed (the same seed gives the same intervals)
    """
    from ..evaluate import evaluate, pick_device, resolve_model
    from ..report import EVERY_FILE, table, write_outputs

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if bootstrap < 0:
        raise ConfigError(f"--bootstrap must be a number of resamples >= 0, got {bootstrap}")
    if reference is not None:
        check_choice("--reference", reference, ["paper"])
    folder = Path(out) if out else None
    if folder is not None:
        _check_out(folder, overwrite, [data, *(m for m in models if Path(m).exists())], EVERY_FILE)
    # a refusal or an interrupt leaves no empty --out folder behind
    with removed_if_unused(folder) if folder is not None else contextlib.nullcontext():
        if folder is not None:
            _make_out(folder)
        pick_device(device)  # before any model is loaded
        scored = {_label(spec, models): resolve_model(spec, trust_code) for spec in models}
        result = evaluate(
            scored, data, groups, batch_size, device, progress=not quiet, bootstrap=bootstrap, seed=seed, sources=models
        )
        print(table(result["scores"], result["groups"], result["details"], result.get("bootstrap")))
        if reference == "paper":
            try:
                print("\n" + paper.beside(result["scores"], result["groups"]))
            except ValueError as err:  # the scores stand (and are written): only the comparison is missing
                print(f"--reference paper: {err}", file=sys.stderr)
        written = write_outputs(result, folder) if folder is not None else []  # a failed write: no empty --out
    for path in written:
        print(f"wrote {path}")
    return 0
