"""``fit --help`` (validate, test) without importing torch: the text LightningCLI printed, while nothing changed.

LightningCLI's help needs torch, torchvision, torchmetrics and Lightning imported: about five seconds on two
cores, none of it spent on the help itself. The text depends only on the installed versions of those
libraries, this package's source files, jsonargparse's ``JSONARGPARSE_*`` settings and the terminal's
width, so it is kept in the cache folder under a file name made of them (`outputs.cache_dir`,
``help-<command>-w<width>-<key>.txt``) and printed from there the next time. Only a bare
``COMMAND --help`` (or ``-h``) is cached; a text that does not begin as a help does is not trusted.
`path_for` is computed once per command line: the key stats every source file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
from importlib import metadata
from pathlib import Path

from ..outputs import cache_dir, temp_name

HELP_FLAGS = ("-h", "--help")
LIBRARIES = (
    "torch",
    "torchvision",
    "torchmetrics",
    "pytorch-lightning",
    "lightning-utilities",
    "jsonargparse",
    "docstring-parser",
    "typeshed-client",
)
PACKAGE = Path(__file__).resolve().parents[1]


def _key(command: str) -> str:
    """What the help text of `command` depends on, beside the terminal width: versions and this package's files."""
    parts = [command, sys.version]
    parts += sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith("JSONARGPARSE_"))
    for name in LIBRARIES:
        try:
            parts.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} missing")
    for path in sorted(PACKAGE.rglob("*.py")):
        stat = path.stat()
        parts.append(f"{path.relative_to(PACKAGE)} {stat.st_mtime_ns} {stat.st_size}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def path_for(argv: list[str]) -> Path | None:
    """The cache file of `argv`'s help, or None when `argv` is not a bare ``COMMAND --help`` (or ``-h``)."""
    if len(argv) != 2 or argv[1] not in HELP_FLAGS:
        return None
    return cache_dir() / f"help-{argv[0]}-w{shutil.get_terminal_size().columns}-{_key(argv[0])}.txt"


def cached(path: Path) -> str | None:
    """The help text kept in `path` (see `path_for`), if there is one."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    return text if text.startswith("usage:") else None  # an empty or damaged file: made anew


def remember(path: Path, text: str) -> None:
    """Keep `text` in `path` for the next time (best effort: an unwritable cache is no error)."""
    if not text.startswith("usage:"):
        return
    tmp = temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
        # texts of code or versions gone since, for this command and width: help-<command>-w<width>-<key>.txt
        for old in path.parent.glob(path.name.rsplit("-", 1)[0] + "-*.txt"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
