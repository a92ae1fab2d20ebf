"""A run folder's claim: one process at a time trains or resumes a run.

A claim is the file ``.lpips-lightning-run`` in the run folder holding the process id of the
fit that writes there. It is made atomically (written whole, then linked to its name, which fails
when the name is taken), so of two processes starting at once exactly one gets the folder; a
claim whose process is gone (SIGKILL, power loss) is taken over; the fit gives it up when it ends.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..errors import ConfigError, OutputError
from ..outputs import pid_alive

CLAIM = ".lpips-lightning-run"  # created exclusively in a run folder: two runs never share one


def claim_pid(claim: Path) -> int | None:
    """The process id a claim file holds; None when there is none or it cannot be read."""
    try:
        return int(claim.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def claim_alive(claim: Path) -> bool:
    pid = claim_pid(claim)
    return pid is not None and pid_alive(pid)


def _link_claim(mine: Path, claim: Path) -> bool:
    """Give the complete claim `mine` the name `claim` unless that name is taken; whether it got it."""
    try:
        os.link(mine, claim)  # atomic, and fails on an existing name (a rename would replace it)
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links (FAT, some network ones): create it exclusively
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()}\n")
        return True


def _in_use(folder: Path, pid: int) -> ConfigError:
    return ConfigError(
        f"run folder {folder} is in use by process {pid} (a fit of that run is still going); wait for it to "
        f"end or stop it, then resume with --ckpt_path last --run_name {folder.name}"
    )


def take_claim(folder: Path) -> None:
    """Claim run folder `folder` for this process; a claim left by a process that is gone is taken over.

    The claim is written whole under a name of this process's own, then linked to its real name,
    which fails when another process holds it: of two processes starting at once, one gets it. A
    dead process's claim is first moved aside (only one process can move it), and checked to be
    the one seen dead. `ConfigError` when a live process holds the folder; `OutputError` when the
    folder cannot be written.
    """
    claim, pid = folder / CLAIM, os.getpid()
    mine, aside = claim.with_name(f"{CLAIM}.{pid}"), claim.with_name(f"{CLAIM}.stale-{pid}")
    try:
        mine.write_text(f"{pid}\n")
        for _ in range(5):
            if _link_claim(mine, claim):
                return
            holder = claim_pid(claim)
            if holder is not None and pid_alive(holder):
                raise _in_use(folder, holder)
            try:
                os.rename(claim, aside)
            except FileNotFoundError:  # another process moved it first
                continue
            moved = claim_pid(aside)
            if moved != holder and moved is not None and pid_alive(moved):  # a live claim made meanwhile
                os.replace(aside, claim)  # give it back
                raise _in_use(folder, moved)
            aside.unlink()
        raise ConfigError(f"run folder {folder}: other processes keep claiming it; try again")
    except OSError as err:
        raise OutputError(
            f"run folder {folder}: cannot claim it for this run ({err.strerror or type(err).__name__})"
        ) from None
    finally:
        for leftover in (mine, aside):
            with contextlib.suppress(OSError):
                leftover.unlink(missing_ok=True)


def check_writable(folder: Path) -> None:
    """Refuse, before anything is written, to resume a run whose folder cannot be written."""
    if not folder.is_dir():
        raise OutputError(f"run folder {folder} is not a folder; a run's checkpoints and logs are written into one")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(
            f"run folder {folder} is not writable, and resuming the run writes its checkpoints and log there; "
            f"make it writable (chmod u+w {folder}), then resume"
        )
