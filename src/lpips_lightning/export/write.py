"""`export`: a checkpoint's metric written as a file in one format (told by ``--format`` or the extension).

The output is checked before anything is read and written under a temporary name, renamed when
complete (`outputs.atomic_output`); each format's module writes the file and says how to load it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ..errors import ConfigError, ExportError, LPIPSLightningError, OutputError
from ..model.checkpoint import model_from_parts, read_checkpoint
from ..model.lpips import out_of_memory
from ..outputs import atomic_output, check_output
from . import lpips_format, onnx_format, safetensors_format, torchscript_format
from .metadata import metadata

FORMATS = {".pth": "lpips", ".safetensors": "safetensors", ".pt": "torchscript", ".onnx": "onnx"}
WRITERS = {
    "lpips": lpips_format.write,
    "safetensors": safetensors_format.write,
    "torchscript": torchscript_format.write,
    "onnx": onnx_format.write,
}
# what a format refuses before the model is built: a metric it cannot describe, a missing exporter
CHECKS = {"lpips": lpips_format.check, "onnx": onnx_format.check}
MAX_SIZE = 4096  # --size, as pack's --size and distance's --resize: larger traces exhaust memory
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def format_of(out: Path, fmt: str | None) -> str:
    """The format to write `out` in: `fmt`, else told by its extension; one line when neither tells."""
    told = FORMATS.get(out.suffix.lower())
    if fmt and told and fmt != told:
        wanted = [ext for ext, f in FORMATS.items() if f == fmt]
        raise ConfigError(
            f"{out}: --format {fmt} contradicts the extension {out.suffix} ({told} format)"
            + (f"; name the file {out.stem}{wanted[0]}" if wanted else "")
        )
    fmt = fmt or told
    if fmt is None:
        raise ConfigError(
            f"{out}: cannot tell the format from the extension; pass --format "
            f"({', '.join(sorted(set(FORMATS.values())))}) or use {', '.join(FORMATS)}"
        )
    if fmt not in WRITERS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS.values())}")
    return fmt


def export(
    ckpt: str | os.PathLike,
    out: str | os.PathLike,
    fmt: str | None = None,
    overwrite: bool = False,
    size: int | None = None,
    trust_code: bool = False,
) -> str:
    """Write checkpoint `ckpt` as `out` in format `fmt` (else from the extension); return how to load it.

    `size`: the image size the TorchScript trace and the ONNX export run on (default 64, or the
    backbone's minimum when larger). Both export for any size where the backbone allows; where it
    does not (a trace that fixes shapes, e.g. a ViT padding images to whole patches), the export
    takes `size` x `size` images only, says so in its metadata and refuses other sizes in one line.
    A custom backbone (a ``class_path`` outside this package) is built only with `trust_code`.

    Refused in one line before anything is read: `out` is a folder, one of the inputs, exists
    without `overwrite`, lies in a missing or unwritable folder, or has no known format.
    The file is written under a temporary name and renamed when complete.
    """
    out = Path(out)
    check_output(out, overwrite, inputs=[ckpt], what="export")
    fmt = format_of(out, fmt)
    if size is not None and not 1 <= size <= MAX_SIZE:
        raise ConfigError(f"--size must be a number of pixels from 1 to {MAX_SIZE}, got {size}")
    hp, weights, info = read_checkpoint(ckpt)
    if fmt in CHECKS:
        CHECKS[fmt](hp, info, out)
    model = model_from_parts(hp, weights, info, str(ckpt), trust_code)
    if size is not None:
        model.check_size(size, size, "--size")
    meta = metadata(model, hp, info, ckpt)
    with atomic_output(out, overwrite, inputs=[ckpt], what=f"{fmt} export") as tmp:
        try:
            return WRITERS[fmt](model, hp, meta, tmp, out, size)
        except LPIPSLightningError:
            raise
        except OSError as err:
            if err.errno in DISK_FULL:
                raise _disk_full(out, err.strerror) from None
            raise  # atomic_output says it in one line
        except Exception as err:
            if "No space left on device" in str(err):  # a library's own writer (not an OSError)
                raise _disk_full(out, "No space left on device") from None
            if out_of_memory(err):
                raise ExportError(
                    f"{out}: out of memory for the {fmt} export at --size {size or 'default'}; pass a smaller --size"
                ) from None
            reason = (str(err).strip().splitlines() or [""])[0][:200]
            raise ExportError(f"{out}: {fmt} export failed ({type(err).__name__}: {reason})") from None


def _disk_full(out: Path, reason: str | None) -> OutputError:
    return OutputError(
        f"{out}: the disk is full ({reason or 'no space left'}); nothing was written (a file already there is kept): "
        "free some space or write the export elsewhere"
    )
