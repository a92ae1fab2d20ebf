"""Files a command writes: a temporary name beside the target, renamed when complete.

The one place that knows how outputs are written, so that every command (pack, export,
evaluate, download) refuses the same bad targets in the same words and never leaves a
half-written file under the real name:

- the target is a folder, its folder is missing or not writable, or it exists without
  ``--overwrite``;
- the target is one of the command's own inputs (``pack j.csv j.csv --overwrite``);
- temporary files ``.NAME.tmp-PID`` left by a process that no longer runs (SIGKILL, power
  loss) are removed, with a line saying so.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError


def cache_dir() -> Path:
    """Where built data and help texts are cached: ``$LPIPS_LIGHTNING_CACHE``, else ``~/.cache/lpips-lightning``."""
    return Path(os.environ.get("LPIPS_LIGHTNING_CACHE") or Path.home() / ".cache" / "lpips-lightning")


def temp_name(path: Path, pid: int | None = None) -> Path:
    """The temporary name a process writes `path` under: ``.NAME.tmp-PID`` in the same folder."""
    return path.with_name(f".{path.name}.tmp-{os.getpid() if pid is None else pid}")


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(path: Path, quiet: bool = False) -> list[Path]:
    """Remove ``.NAME.tmp-PID*`` files of `path` whose process is gone; return what was removed."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.tmp-(\d+)")
    removed = []
    if not path.parent.is_dir():
        return removed
    for entry in path.parent.iterdir():
        m = pattern.match(entry.name)
        if m and entry.is_file() and not pid_alive(int(m.group(1))):
            try:
                entry.unlink()
            except OSError:
                continue
            removed.append(entry)
            if not quiet:
                print(f"removed {entry}, left by an interrupted run (process {m.group(1)})", file=sys.stderr)
    return removed


def _identity(path: str | os.PathLike) -> tuple[int, int] | None:
    """(device, inode) of an existing file, following links; None when there is none."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def check_output(
    path: str | os.PathLike, overwrite: bool = False, inputs: Iterable[str | os.PathLike] = (), what: str = "output"
) -> Path:
    """Refuse a target that cannot or must not be written (see the module docstring); return it as a Path."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give a file name for the {what}")
    target, absolute = _identity(path), os.path.abspath(path)  # once: `inputs` may be 100,000s of files
    for source in inputs:
        if os.path.abspath(source) == absolute or (target is not None and _identity(source) == target):
            raise OutputError(f"{path} is also an input of this command; write the {what} to another name")
    if path.is_symlink() and not path.exists():
        raise OutputError(f"{path} is a link to {os.readlink(path)}, which does not exist; remove the link first")
    if path.exists() and not path.is_file():
        raise OutputError(f"{path} is not a regular file (a device, pipe or socket); write the {what} elsewhere")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} already exists; pass --overwrite to replace it")
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"{path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: folder {folder} is not writable")
    return path


def make_folder(folder: str | os.PathLike, what: str) -> Path:
    """Create output folder `folder` (and its parents) if needed; refuse a file or a failure in one line."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} {folder} is a file; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{what} {folder}: cannot create the folder ({err.strerror or repr(err)})") from None
    return folder


@contextmanager
def removed_if_unused(folder: str | os.PathLike) -> Iterator[None]:
    """The folders missing on the way to `folder` (it included) are removed again, if empty, when the block fails.

    A refused or interrupted command leaves no empty output folder behind; one that kept
    something there (a resumable download's ``.part``) keeps its folder.
    """
    folder = Path(folder)
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        yield
    except BaseException:
        for created in made:
            with contextlib.suppress(OSError):
                created.rmdir()
        raise


@contextmanager
def atomic_output(
    path: str | os.PathLike,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
    what: str = "output",
    checked: bool = False,
) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` when the block completes.

    The target is checked first (`check_output`), unless `checked`: the caller did that already,
    before reading its inputs (``pack``: an archive takes a minute to read). On any exception
    (Ctrl-C and SIGTERM included) the temporary file is removed and `path` is left as it was.
    An `OSError` while writing (disk full, permission) becomes one `OutputError` line naming
    the file.
    """
    path = Path(path) if checked else check_output(path, overwrite, inputs, what)
    remove_stale_temps(path)
    tmp = temp_name(path)
    try:
        try:
            yield tmp
            try:
                _publish(tmp, path, overwrite)
            except FileExistsError:
                raise OutputError(
                    f"{path} was created by another process while this one wrote it; pass --overwrite to replace it"
                ) from None
        except OSError as err:
            raise OutputError(f"{path}: cannot write the {what} ({err.strerror or type(err).__name__})") from None
    finally:
        for leftover in _own_temps(tmp):
            try:
                leftover.unlink()
            except OSError:
                pass


def _own_temps(tmp: Path) -> list[Path]:
    """`tmp` and the files a writer puts beside it under its name (``tmp.data``): no other process's temps."""
    try:
        names = os.listdir(tmp.parent)
    except OSError:
        return []
    return [tmp.parent / n for n in names if n == tmp.name or n.startswith(tmp.name + ".")]


def _creation_mode() -> int:
    """The mode a new file gets from this process's umask (0644 under the usual 022)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Give the finished `tmp` its real name.

    Without `overwrite` the name is taken only if it is still free (a hard link fails on an
    existing name, unlike a rename): a second process that wrote the same output meanwhile is
    refused rather than silently replaced. The file gets the usual mode for a new file (some
    writers create theirs private).
    """
    wanted = _creation_mode()
    if os.stat(tmp).st_mode & 0o777 != wanted:
        with contextlib.suppress(OSError):  # FAT and exFAT drives refuse modes: the file is complete anyway
            os.chmod(tmp, wanted)
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: check, then rename
        if os.path.lexists(path):
            raise FileExistsError(path) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def size_text(n: int | None) -> str:
    """A file size for a message: ``1.5 GB``, ``12.0 MB``, ``3.2 kB``, ``17 bytes`` (None: ``unknown size``)."""
    if n is None:
        return "unknown size"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
