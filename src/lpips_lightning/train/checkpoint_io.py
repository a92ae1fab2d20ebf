"""Checkpoints written beside their target and renamed when complete: a good checkpoint is never cut.

Lightning's `TorchCheckpointIO` writes through fsspec, whose local transaction writes to the
system's temporary folder and then copies the file into place: a disk that fills during the copy
leaves a truncated ``last.ckpt`` under its real name, in place of a good one, and a traceback.
`AtomicCheckpointIO` writes ``.NAME.tmp-PID`` in the target's own folder, flushes it to the disk
and renames it over the target only when it is complete. Any `OSError` (a full disk above all)
becomes one line naming the checkpoint; the previous checkpoint stays as it was and the temporary
file goes. `use_atomic_checkpoints` puts it in a Trainer that would use Lightning's plain one.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from ..errors import OutputError
from ..outputs import remove_stale_temps, temp_name

_FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left, quota exceeded


def _write_error(err: BaseException) -> OSError | None:
    """The `OSError` behind a failed save: torch raises a `RuntimeError` over it when its writer closes the file."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _failure(path: Path, err: OSError, existed: bool) -> str:
    """The one line for a checkpoint that could not be written."""
    kept = "the previous checkpoint there is kept" if existed else "no checkpoint was written"
    if err.errno in _FULL:
        last = path.parent / "last.ckpt"
        then = (
            f"free some space, then resume with --ckpt_path last --run_name {path.parent.name}"
            if last.is_file()
            else "free some space and start the run again"
        )
        return f"cannot save checkpoint {path}: disk full ({err.strerror or 'no space left'}); {kept}; {then}"
    return f"cannot save checkpoint {path}: {err.strerror or type(err).__name__}; {kept}"


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` that writes beside the target and renames; remote (``scheme://``) paths as Lightning does."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        existed = path.is_file()
        tmp = temp_name(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(path, quiet=True)  # a save killed midway (SIGKILL) left its temporary file
            # an open file, not a path: torch's own file writer reports a full disk as a bare RuntimeError
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except (OSError, RuntimeError) as err:
            cause = _write_error(err)
            if cause is None:
                raise
            raise OutputError(_failure(path, cause, existed)) from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


def use_atomic_checkpoints(trainer) -> None:
    """Save `trainer`'s checkpoints with `AtomicCheckpointIO` where it would use Lightning's plain `TorchCheckpointIO`.

    A checkpoint IO of the user's own (a plugin, a strategy's, an XLA or async one) stays as it is.
    """
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
