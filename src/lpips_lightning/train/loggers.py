"""A run's logs: a CSV log that a resumed run continues, and a W&B run, online when it can be, else offline.

A run folder's ``metrics.csv`` keeps its history when the run resumes (`ResumableCSVLogger`:
the kept rows are written beside it and renamed over it, so a failed write leaves the log as it was);
W&B runs online when a key is known and its server answers within 3 s, else offline with a
line on how to sync it later, and a resumed run continues the W&B run it logged to before. Its
files go in the run folder's ``wandb/``, or under ``$WANDB_DIR`` when that is set; either way the
run folder's ``wandb-run-id`` names the W&B run.
"""

from __future__ import annotations

import csv
import netrc
import os
import re
import secrets
import socket
import string
import sys
from pathlib import Path
from urllib.parse import urlparse

from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment

from ..errors import OutputError
from ..outputs import atomic_output, remove_stale_temps, temp_name
from .cadence import drop_anonymous_none
from .runs import WANDB_ID_FILE, global_rank_zero, rank_zero_print


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSV log, except that a resumed run keeps the rows logged before its checkpoint.

    (Lightning's deletes an existing ``metrics.csv``.) Rows after the checkpoint's step came
    from the interrupted part of the run, which the resumed run repeats: they are dropped.
    """

    def __init__(self, *args, keep_until_step: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.keep_until_step = keep_until_step
        self.restored = False  # the kept rows are written back when the log is first opened

    def _before_resume(self, row: dict) -> bool:
        """Whether a row was logged before the checkpoint.

        Earlier steps, and at the checkpoint's step the finished epoch's rows: an epoch-start
        row there (the learning rate) is logged again by the resumed run.
        """
        if not row.get("step"):
            return False
        step = int(float(row["step"]))
        return step < self.keep_until_step or (step == self.keep_until_step and bool(row.get("epoch")))

    @property
    @rank_zero_experiment
    def experiment(self):
        if self.restored:
            return super().experiment
        path = Path(self.log_dir) / "metrics.csv"
        if self.keep_until_step is None or not path.is_file():
            self.restored = True
            return super().experiment
        tmp = temp_name(path)
        try:
            try:
                with open(path, newline="") as fh:
                    reader = csv.DictReader(fh)
                    header = list(reader.fieldnames or [])
                    kept = [r for r in reader if self._before_resume(r)]
                if not header:
                    self.restored = True
                    return super().experiment
                remove_stale_temps(path, quiet=True)
                with open(tmp, "w", newline="") as fh:  # the kept rows, beside the log: it stays until they are whole
                    writer = csv.DictWriter(fh, fieldnames=header)
                    writer.writeheader()
                    writer.writerows(kept)
                    fh.flush()
                    os.fsync(fh.fileno())
                experiment = super().experiment  # Lightning's writer deletes an existing metrics.csv
                os.replace(tmp, path)
            except OSError as err:
                raise OutputError(
                    f"{path}: cannot write the resumed run's log ({err.strerror or type(err).__name__}); "
                    "it is left as it was"
                ) from None
        finally:
            if path.exists():  # never the only copy of the kept rows
                tmp.unlink(missing_ok=True)
        self.restored = True  # only now: until then, Lightning's writer must not start (it would delete the log)
        experiment.metrics_keys = header
        return experiment


def wandb_online() -> bool:
    """Whether W&B can run online: a key is known and its server answers within 3 s (never a hang)."""
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    host = url.hostname or "api.wandb.ai"
    try:
        port = url.port or (80 if url.scheme == "http" else 443)
    except ValueError:  # a port that is not a number
        return False
    key = os.environ.get("WANDB_API_KEY")
    if not key:
        try:
            key = (netrc.netrc().authenticators(host) or (None, None, None))[2]
        except (OSError, netrc.NetrcParseError):
            key = None
    if not key:
        return False
    try:
        socket.create_connection((host, port), timeout=3).close()
        return True
    except OSError:
        return False


RUN_ID = re.compile(r"[A-Za-z0-9_\-]{1,128}")  # what W&B accepts, and what our own ids are
_STARTED: set[str] = set()  # the W&B runs this process started


def wandb_root(run_dir: Path) -> Path:
    """Where W&B puts a run's files (its ``wandb/`` folder goes inside): ``$WANDB_DIR`` if set, else the run folder."""
    return Path(os.environ.get("WANDB_DIR") or run_dir)


def wandb_run_id(run_dir: Path) -> str | None:
    """The id of the W&B run a resumed run logged to before, so that its history continues (None: none kept)."""
    path = run_dir / WANDB_ID_FILE
    try:
        run_id = path.read_text().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise OutputError(f"{path}: cannot read the run's W&B id ({getattr(err, 'strerror', None) or err})") from None
    if not RUN_ID.fullmatch(run_id):
        raise OutputError(
            f"{path}: {run_id!r} is not a W&B run id (letters, digits, - and _); put the id back "
            "(the end of its wandb/offline-run-* folder's name), or delete the file to start a new W&B run"
        )
    return run_id


def wandb_folders(run_dir: Path) -> list[Path]:
    """The folders W&B wrote for the run folder's W&B run (one per process that logged to it)."""
    try:
        run_id = wandb_run_id(run_dir)
    except OutputError:  # a damaged id names no folder
        return []
    return sorted((wandb_root(run_dir) / "wandb").glob(f"*run-*-{run_id}")) if run_id else []


def make_loggers(run_dir: Path, run_name: str, project: str, resume_step: int | None = None) -> list:
    """A CSV log and, unless W&B is disabled, a W&B run: online when logged in and reachable, else offline.

    `resume_step`: the run resumes from a checkpoint at this step; its logs keep what came before.
    """
    loggers: list = [ResumableCSVLogger(save_dir=str(run_dir), name="", version="", keep_until_step=resume_step)]
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("disabled", "dryrun-disabled"):
        return loggers
    offline = mode in ("offline", "dryrun") or (global_rank_zero() and not wandb_online())
    root = wandb_root(run_dir)
    _check_wandb_root(root)
    run_id = (wandb_run_id(run_dir) if resume_step is not None else None) or _new_run_id(run_dir)
    if offline:
        os.environ["WANDB_MODE"] = "offline"
        hint = f"wandb sync {root}/wandb/offline-run-*-{run_id}"
        rank_zero_print(f"W&B runs offline (not logged in, or no network); sync later with: {hint}")
    _end_open_wandb_run()
    logger = WandbLogger(name=run_name, project=project, save_dir=str(root), offline=offline, id=run_id, resume="allow")
    _STARTED.add(run_id)
    drop_anonymous_none(logger)
    loggers.append(logger)
    return loggers


def _check_wandb_root(root: Path) -> None:
    """Refuse in one line a W&B folder (``$WANDB_DIR``, or the run folder) that cannot be made or written."""
    what = "WANDB_DIR" if os.environ.get("WANDB_DIR") else "run folder"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{what} {root}: cannot make the folder W&B writes into ({err.strerror or err})") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {root}: not writable, and W&B writes its run there; set WANDB_DIR elsewhere")


def _end_open_wandb_run() -> None:
    """End the W&B run an earlier fit in this process left open: Lightning's logger would take it over.

    (W&B keeps a process's run open until the process exits: a second fit in one process, from a
    notebook or a test, would log into the first one's run. A run the user opened is theirs: left alone.)
    """
    run = getattr(sys.modules.get("wandb"), "run", None)  # wandb never imported: no run
    if run is not None and run.id in _STARTED:
        run.finish()


def _new_run_id(run_dir: Path) -> str:
    """A new W&B run id, written to the run folder (by rank 0; the other processes log nothing to W&B)."""
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # as W&B's own
    if global_rank_zero():
        with atomic_output(run_dir / WANDB_ID_FILE, overwrite=True, what="W&B run id") as tmp:
            tmp.write_text(run_id + "\n")
    return run_id
