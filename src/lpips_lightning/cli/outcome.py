"""How a training command ends otherwise than well: one line for a refusal, a Ctrl-C's way to resume, nothing left.

`cli` below is the `training.LPIPSCLI` being run (None when its constructor failed early).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sys

from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from ..data.datamodule import JudgmentsDataModule
from ..errors import LPIPSLightningError, message_of
from ..train.loggers import wandb_folders
from ..train.module import LPIPSModule
from .terms import in_terms, training_options

VAL_CHECK_REFUSAL = re.compile(r"`val_check_interval` \((\S+)\) must be .* training batches \((\d+)\)")


def interrupted(cli, done: SystemExit) -> KeyboardInterrupt | None:
    """Lightning ends a run stopped by Ctrl-C with exit status 1 and one stopped by SIGTERM with 0.

    Both become a `KeyboardInterrupt` (status 130 / 143) with a line on how to resume.
    """
    trainer = getattr(cli, "trainer", None)
    if trainer is None or not trainer.interrupted:
        return None
    sigterm = type(done).__name__ == "SIGTERMException"
    folder = cli.run.path
    if cli.subcommand != "fit" or folder.parent != cli.run.runs_dir:
        how = f"its folder: {folder}"
    elif (folder / "last.ckpt").is_file():
        how = f"resume it with: lpips-lightning fit ... --ckpt_path last --run_name {folder.name}"
    else:
        how = f"it had no checkpoint yet: delete {folder} and start again, or start with another --run_name"
    err = KeyboardInterrupt(
        f"{'SIGTERM' if sigterm else 'Ctrl-C'} stopped the run in epoch {trainer.current_epoch}; {how}"
    )
    err.status = 143 if sigterm else 130
    return err


def refusal(err: Exception) -> str | None:
    """The one line for a refusal: ours, or Lightning's own (gradient clipping under manual optimisation, ...)."""
    if isinstance(err, LPIPSLightningError):  # the library names Python arguments: here, the options
        return in_terms(message_of(err), training_options(LPIPSModule, JudgmentsDataModule))
    if isinstance(err, MisconfigurationException):
        return str(err).strip().splitlines()[0]  # Lightning's own one-sentence refusals
    found = VAL_CHECK_REFUSAL.search(str(err)) if isinstance(err, ValueError) else None
    if found is None:  # raised by Lightning at fit start, before any step
        return None
    interval, batches = found.groups()
    return (
        f"--trainer.val_check_interval {interval}: more than the {batches} training batches of an epoch; give at "
        f"most {batches}, a fraction of an epoch (e.g. 0.5), or --trainer.check_val_every_n_epoch null to count "
        "batches across epochs"
    )


def discard_wandb(cli) -> None:
    """A new run refused before its first step: the W&B run it had begun goes, so that its folder can go too.

    (Lightning starts the loggers before it refuses, e.g., a val_check_interval longer than an
    epoch, and our module before it refuses a checkpoint whose weights do not fit.)
    """
    trainer = getattr(cli, "trainer", None)
    if trainer is None or cli.run.resume or trainer.global_step:
        return
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            with contextlib.suppress(Exception):  # clean-up: a W&B run that could not start has nothing to end
                logger.experiment.finish()
            for folder in wandb_folders(cli.run.path):
                shutil.rmtree(folder, ignore_errors=True)
            shutil.rmtree(cli.run.path / "wandb", ignore_errors=True)


def end_progress_line(cli) -> None:
    """End the line a training progress bar left on the terminal, so that an error starts a line of its own."""
    trainer = getattr(cli, "trainer", None)
    if getattr(trainer, "progress_bar_callback", None) is None or not trainer.global_rank == 0:
        return
    for stream in (sys.stdout, sys.stderr):  # Lightning's bars draw on stdout, tqdm's default is stderr
        try:
            if stream.isatty():
                stream.write("\n")
                stream.flush()
                return
        except (OSError, ValueError):
            continue
