"""Run folders: ``runs_dir/<run>/`` belongs to one run.

- ``fit`` makes a new folder (``<variant>_<backbone>-<time>``, or ``--run_name``), refusing a
  name that is taken; only resuming that run (``--ckpt_path last``, or a checkpoint inside it)
  writes into it again, and its ``metrics.csv`` then keeps the rows logged before.
- ``validate`` / ``test`` of a run's checkpoint write into a new folder inside that run
  (``<run>/validate-<time>/``); of any other checkpoint, into a new folder under ``runs_dir``.
- Every process of a multi-process run uses one folder: Lightning's own DDP children inherit
  their parent's choice; processes started by a launcher (torchrun, SLURM) name the run from
  the launcher's job id, or need ``--run_name``.
- A checkpoint given with ``--ckpt_path`` must be a plain checkpoint of this project, and
  explicit model options may not contradict it (LightningCLI would silently take the
  checkpoint's values).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

from ..backbones.specs import short_name
from ..errors import ConfigError, LPIPSLightningError
from ..provenance import PROVENANCE_FILE
from .claims import CLAIM, check_writable, claim_alive, claim_pid, take_claim
from .resume import check_checkpoint, last_of_configuration, refuse_conflicts

WANDB_ID_FILE = "wandb-run-id"  # in a run folder: the id of its W&B run (`loggers`)
_INHERITED = "LPIPS_LIGHTNING_RUN_DIR"  # set by the rank-0 process for Lightning's DDP children


def global_rank_zero() -> bool:
    """Whether this process is rank 0 of its run (also before the launcher or DDP has started)."""
    return all(os.environ.get(v, "0") == "0" for v in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"))


def rank_zero_print(*args, **kwargs) -> None:
    """`print` on global rank 0 only."""
    if global_rank_zero():
        print(*args, **kwargs)


def _inherited_run_dir() -> Path | None:
    if os.environ.get("LOCAL_RANK", "0") != "0" and os.environ.get(_INHERITED):
        return Path(os.environ[_INHERITED])
    return None


def _launched_processes() -> int:
    """Processes started by an outside launcher (torchrun, srun) for this run; 1 when none."""
    return max(int(os.environ.get("WORLD_SIZE", "1") or 1), int(os.environ.get("SLURM_NTASKS", "1") or 1))


def _launcher_id() -> str | None:
    for var in ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"):
        value = os.environ.get(var, "")
        if value and value.lower() != "none":
            return value
    return None


def _owning_run(ckpt: Path, runs_dir: Path) -> Path | None:
    """The run folder a checkpoint file lies in directly, if it is one (it holds a run's config)."""
    folder = ckpt.resolve().parent
    if folder.parent == runs_dir.resolve() and (folder / "config.yaml").is_file():
        return folder
    return None


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _taken(folder: Path, ignore: str | None = None) -> bool:
    """Whether `folder` holds a run: anything in it but `ignore`, or a claim whose process is gone."""
    if not folder.exists():
        return False
    if not folder.is_dir():
        return True
    entries = [e for e in folder.iterdir() if e.name != ignore]
    if [e.name for e in entries] == [CLAIM] and not claim_alive(entries[0]):
        return False  # claimed by a run killed before it wrote anything (SIGKILL, power loss)
    return bool(entries)


def check_run_name(name: str | None) -> None:
    """A run name is one folder name: not empty, no path separators, not ``.`` or ``..``."""
    if name is None:
        return
    rule = "a run name is one folder name: not empty, not hidden, no '/', '\\' or control characters"
    if (
        not name.strip()
        or "/" in name
        or "\\" in name
        or name in (".", "..")
        or name.startswith(".")
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
    ):
        raise ConfigError(f"--run_name {name!r}: {rule}")
    if len(os.fsencode(name)) > 255:
        raise ConfigError(f"--run_name: {len(os.fsencode(name))} bytes long; a folder name holds at most 255")


class RunFolder:
    """Where one fit/validate/test writes, decided right after the command line is parsed."""

    def __init__(self, subcommand: str, config, explicit_model_options: set[str] | None = None) -> None:
        self.subcommand = subcommand
        self.runs_dir = Path(config.runs_dir)
        if self.runs_dir.exists() and not self.runs_dir.is_dir():
            raise ConfigError(f"--runs_dir {self.runs_dir} is a file; give a folder for the run folders")
        check_run_name(config.run_name)
        self.resume = False
        self.keep_options: dict = {}
        self.resume_step: int | None = None
        self._note = ""  # which of several runs `--ckpt_path last` took
        ckpt = config.get("ckpt_path")
        if ckpt == "last":
            ckpt = config.ckpt_path = str(self._last_checkpoint(config))
        info: dict = {}
        if ckpt is not None:
            hp, info = check_checkpoint(ckpt)
            self.keep_options = refuse_conflicts(config.model, hp, ckpt, explicit_model_options or set())
        inherited = _inherited_run_dir()
        if inherited is not None:
            self.path, self.explicit = inherited, True
            self.resume = subcommand == "fit" and ckpt is not None
            config.run_name = self.path.name
            return
        self.path, self.explicit = self._choose(config, ckpt)
        if self.resume:
            if global_rank_zero():  # like a new run, a resumed one holds its folder: never two at once
                check_writable(self.path)
                take_claim(self.path)
                self._claimed = True
            rank_zero_print(f"resuming run {self.path.name} from {Path(ckpt).name}{self._note}")
            self.resume_step = info.get("logged_step", info.get("global_step"))
        elif self.explicit and global_rank_zero() and _taken(self.path):
            raise ConfigError(
                f"run folder {self.path} already holds a run; choose another --run_name, or resume that run "
                f"with --ckpt_path last --run_name {self.path.name}"
            )
        config.run_name = (
            str(self.path.relative_to(self.runs_dir)) if self.path.is_relative_to(self.runs_dir) else (self.path.name)
        )

    def _last_checkpoint(self, config) -> Path:
        run = config.run_name
        if run is None:  # the newest run of this fit's variant, backbone and data
            run, self._note = last_of_configuration(self.runs_dir, config)
        last = self.runs_dir / run / "last.ckpt"
        if not last.is_file():
            raise ConfigError(f"--ckpt_path last: {last} does not exist")
        self._last_of = self.runs_dir / run
        return last

    def _choose(self, config, ckpt: str | None) -> tuple[Path, bool]:
        """(folder, whether its name is fixed) for this command."""
        owner = getattr(self, "_last_of", None) or (_owning_run(Path(ckpt), self.runs_dir) if ckpt else None)
        named = config.run_name
        if self.subcommand == "fit":
            if owner is not None and (named is None or named == owner.name):
                last = owner / "last.ckpt"
                if not (last.is_file() and os.path.samefile(last, ckpt)):
                    raise ConfigError(
                        f"--ckpt_path {ckpt} is not the latest checkpoint of run {owner.name} (its last.ckpt): "
                        "resuming the run from it would rewind and overwrite its history; "
                        "to train on from it, give the new run a name: --run_name NEW"
                    )
                self.resume = True
                return owner, True
            if named is not None:
                return self.runs_dir / named, True
            base = f"{config.model.variant}_{short_name(config.model.backbone)}"
            return self._multiprocess_name(base) or (self.runs_dir / f"{base}-{_stamp()}", False)
        # validate / test: a new folder, inside the evaluated run when there is one
        if named is not None and getattr(self, "_last_of", None) is None:
            return self.runs_dir / named, True
        if owner is not None:
            return owner / f"{self.subcommand}-{_stamp()}", False
        base = f"{self.subcommand}-{config.model.variant}_{short_name(config.model.backbone)}"
        return self._multiprocess_name(base) or (self.runs_dir / f"{base}-{_stamp()}", False)

    def _multiprocess_name(self, base: str) -> tuple[Path, bool] | None:
        """Under torchrun/SLURM every process must agree on the folder: the launcher's job id names it."""
        if _launched_processes() <= 1:
            return None
        job = _launcher_id()
        if job is None:
            raise ConfigError(
                "several processes were launched for this run: pass --run_name NAME (the same on every node), "
                "or launch with torchrun --rdzv-id / SLURM so that the job id names the run"
            )
        return self.runs_dir / f"{base}-{job}", True

    def reserve(self) -> Path:
        """Create the folder (rank 0); a default name that another run took in the same second gets a suffix."""
        if not global_rank_zero() or self.resume or _inherited_run_dir() is not None:
            return self.path
        # the folders this makes, deepest first: `release` removes them again if they stay empty
        self._made_dirs = [d for d in (self.runs_dir, *self.runs_dir.parents) if not d.exists()]
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        path, n = self.path, 1
        while True:
            try:
                path.mkdir(parents=True, exist_ok=self.explicit)
                if self.explicit:  # the name may be an empty folder: claim it, or find another run did
                    claim = path / CLAIM
                    if claim.exists() and not _taken(path):  # a dead run's claim, nothing else: free
                        claim.unlink(missing_ok=True)
                    fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                    with os.fdopen(fd, "w") as fh:
                        fh.write(f"{os.getpid()}\n")
                    if _taken(path, ignore=CLAIM):
                        if claim_pid(claim) == os.getpid():  # never the claim a resume took meanwhile
                            claim.unlink()
                        raise FileExistsError
                else:  # a new folder of this process's own: its claim keeps a resume out while it runs
                    take_claim(path)
                self._claimed = True
                break
            except FileExistsError:
                if self.explicit:
                    raise ConfigError(f"run folder {path} already holds a run; choose another --run_name") from None
                n += 1
                path = self.path.with_name(f"{self.path.name}-{n}")
            except OSError as err:
                raise LPIPSLightningError(f"cannot create run folder {path}: {err.strerror}") from None
        self.path, self._made = path, True
        os.environ[_INHERITED] = str(path)  # Lightning's DDP children start from this process's environment
        return path

    def unclaim(self) -> None:
        """Give up the claim this process holds on the run folder (when the command ends, however it ends)."""
        if not getattr(self, "_claimed", False):
            return
        self._claimed = False
        claim = self.path / CLAIM
        if claim_pid(claim) == os.getpid():
            with contextlib.suppress(OSError):
                claim.unlink()

    def release(self) -> None:
        """Remove the folder `reserve` made if nothing but the run's config was written into it.

        A run refused before it trained (a checkpoint that does not fit, images too small) or a
        ``fast_dev_run`` check leaves no folder behind to take its name, nor a runs_dir that
        `reserve` created and that stayed empty.
        """
        if not getattr(self, "_made", False) or not self.path.is_dir():
            return
        entries = list(self.path.iterdir())
        written = ("config.yaml", "hparams.yaml", PROVENANCE_FILE, CLAIM, WANDB_ID_FILE)
        if all(e.is_file() and e.name in written for e in entries):
            for e in entries:
                e.unlink()
            self.path.rmdir()
            for folder in getattr(self, "_made_dirs", []):
                if any(folder.iterdir()):
                    break
                folder.rmdir()


def print_error_once(message: str) -> None:
    """Print a user-facing error on rank 0 only (other ranks fail the same way)."""
    if global_rank_zero():
        print(f"error: {message}", file=sys.stderr)
