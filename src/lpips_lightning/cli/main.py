"""The command line: LightningCLI for fit/validate/test, plus the tool commands.

``lpips-lightning fit|validate|test ...`` is LightningCLI (configs in ``configs/``, data in
``datamodules/``); ``distance``, ``pack``, ``demo-data``, ``export`` and ``evaluate`` are
small argparse commands. Every user-facing error is printed as one line (exit status 2).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import ConfigError, LPIPSLightningError, message_of

HELP = """usage: lpips-lightning COMMAND [options]

Train and use learned perceptual image-similarity metrics (LPIPS).

training (LightningCLI; `lpips-lightning fit --help` for every option):
  fit          train:     lpips-lightning fit --config configs/lin_alex.yaml --data datamodules/bapps.yaml
  validate     score a checkpoint on the validation groups
  test         score a checkpoint on the test groups

tools (`lpips-lightning COMMAND --help`):
  distance     LPIPS distance between two image files
  download     download BAPPS (resumable, checked)
  pack         BAPPS folders or a CSV of judgments -> one judgments.h5
  demo-data    build the bundled demo judgments file
  export       checkpoint -> lpips .pth / safetensors / TorchScript / ONNX
  evaluate     2AFC / JND table of any model on a judgments file
"""


# --- training: LightningCLI ---------------------------------------------------------------------
def _wandb_online() -> bool:
    """Whether W&B can run online: a key is known and its server answers within 3 s (never a hang)."""
    import netrc
    import socket
    from urllib.parse import urlparse

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


def _wandb_run_id(run_dir: Path) -> str | None:
    """The id of the W&B run a resumed run logged to before, so that its history continues."""
    runs = sorted((run_dir / "wandb").glob("*run-*-*"), key=lambda p: p.stat().st_mtime)
    return runs[-1].name.rsplit("-", 1)[1] if runs else None


def make_loggers(run_dir: Path, run_name: str, project: str, resume_step: int | None = None) -> list:
    """A CSV log and, unless W&B is disabled, a W&B run: online when logged in and reachable, else offline.

    `resume_step`: the run resumes from a checkpoint at this step; its logs keep what came before.
    """
    from pytorch_lightning.loggers import WandbLogger

    from ..callbacks import ResumableCSVLogger
    from ..runs import global_rank_zero, rank_zero_print

    loggers: list = [ResumableCSVLogger(save_dir=str(run_dir), name="", version="", keep_until_step=resume_step)]
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("disabled", "dryrun-disabled"):
        return loggers
    offline = mode in ("offline", "dryrun") or (global_rank_zero() and not _wandb_online())
    if offline:
        os.environ["WANDB_MODE"] = "offline"
        hint = f"wandb sync {run_dir}/wandb/offline-run-*"
        rank_zero_print(f"W&B runs offline (not logged in, or no network); sync later with: {hint}")
    resume = {"id": _wandb_run_id(run_dir), "resume": "allow"} if resume_step is not None else {}
    resume = resume if resume.get("id") else {}
    logger = WandbLogger(name=run_name, project=project, save_dir=str(run_dir), offline=offline, **resume)
    # Lightning passes anonymous=None, which wandb >= 0.19 answers with a deprecation warning on every run
    init = getattr(logger, "_wandb_init", {})
    if init.get("anonymous", "unset") is None:
        del init["anonymous"]
    loggers.append(logger)
    return loggers


def check_accelerator(trainer_config, config_files: Sequence[str]) -> None:
    """Refuse in one line a GPU run on a machine without enough GPUs, naming the overlay that asked for it."""
    accelerator = str(trainer_config.get("accelerator") or "auto").lower()
    if accelerator not in ("gpu", "cuda"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    devices = trainer_config.get("devices", "auto")
    wanted = devices if isinstance(devices, int) and devices > 0 else len(devices) if isinstance(devices, list) else 1
    if count >= wanted:
        return
    import yaml

    def asks_for_gpu(path: str) -> bool:
        try:
            trainer = (yaml.safe_load(Path(path).read_text()) or {}).get("trainer") or {}
        except (OSError, yaml.YAMLError, AttributeError):
            return False
        return str(trainer.get("accelerator", "")).lower() in ("gpu", "cuda")

    source = next((f for f in reversed(config_files) if asks_for_gpu(f)), None)
    where = f"--config {source}" if source else "--trainer.accelerator"
    found = "no CUDA GPU was found" if count == 0 else f"only {count} GPU(s) were found"
    raise ConfigError(
        f"{where} asks for GPUs (trainer.accelerator {accelerator}, devices {devices}), but {found} on this machine; "
        f"drop {where if source else 'that option'} or pass --trainer.accelerator cpu"
    )


@functools.cache
def _parser_class():
    """LightningCLI's parser, its usage errors as one line (jsonargparse prints the whole usage first: 77 lines)."""
    from pytorch_lightning.cli import LightningArgumentParser

    class OneLineErrors(LightningArgumentParser):
        def error(self, message: str, ex: Exception | None = None):
            if not self.exit_on_error:  # jsonargparse catches these itself
                return super().error(message, ex)
            text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
            text = text if len(text) <= 400 else text[:400] + " ..."
            prog = self.prog.replace(" [options]", "")
            from ..runs import print_error_once

            print_error_once(f"{text} (options: {prog} --help)")
            raise SystemExit(2)

    return OneLineErrors


@functools.cache
def _cli_class():
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar, TQDMProgressBar
    from pytorch_lightning.cli import LightningCLI

    from ..callbacks import FitSummary, SubsetChart
    from ..runs import RunFolder, explicit_options

    class LPIPSCLI(LightningCLI):
        """LightningCLI with run folders: checkpoints, logs, config and charts in runs_dir/<run_name>/."""

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument(
                "--run_name",
                type=str | None,
                default=None,
                help="run folder name under runs_dir (default: <variant>_<backbone>-<time>)",
            )
            parser.add_argument("--runs_dir", type=str, default="checkpoints", help="where run folders go")
            parser.add_argument("--wandb_project", type=str, default="lpips-lightning", help="W&B project")

        def _parse_ckpt_path(self) -> None:
            # Runs right after parsing, before LightningCLI copies the checkpoint's hyperparameters
            # over the config: choose the run folder, resolve `last`, refuse files that are not
            # plain checkpoints of this project and options that the checkpoint would replace.
            subcommand = self.config.get("subcommand")
            if not subcommand:
                return super()._parse_ckpt_path()
            config = self.config[subcommand]
            files = [str(getattr(f, "relative", f)) for f in config.get("config") or []]
            check_accelerator(config.trainer, files)
            self.run = RunFolder(subcommand, config, explicit_options(_ARGV, files))
            _ACTIVE[:] = [self]
            super()._parse_ckpt_path()
            for key, value in self.run.keep_options.items():
                self.config[subcommand].model[key] = value

        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand]
            if "weights_only" in config and config.weights_only is None:
                config.weights_only = True  # checkpoints hold tensors and plain values only
            if self.run.resume:  # the run's first config.yaml stays; each resumption adds its own
                name = f"config-resumed-{time.strftime('%Y%m%d-%H%M%S')}.yaml"
                self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": name}

        def instantiate_trainer(self, **kwargs):
            config = self.config_init[self.subcommand]
            model, data = self.config_init[self.subcommand].get("model"), self.config_init[self.subcommand].get("data")
            resolved = getattr(data, "path", None) is not None  # the demo set is built later, by prepare_data
            if resolved and hasattr(model, "check_data"):  # images too small for the backbone: refused now
                model.check_data(data)
            if resolved and self.subcommand == "fit" and hasattr(data, "groups") and not data.groups("val"):
                raise ConfigError(
                    f"{data.file}: no validation groups (data.val {data.val_patterns}); fit scores each epoch on "
                    "held-out judgments to keep the best checkpoint: pack some into a 2afc/val/<name> group"
                )
            run_dir = self.run.reserve()
            # Lightning's fast_dev_run is a quick check: no logger, no checkpoint, and here no chart
            # or run folder either (`run_training` removes the empty folder afterwards)
            check_only = bool(config.trainer.get("fast_dev_run"))
            extra: dict = {"default_root_dir": str(run_dir)}
            if config.trainer.get("logger") in (None, True) and not check_only:
                step = self.run.resume_step if self.run.resume else None
                extra["logger"] = make_loggers(run_dir, config.run_name, config.wandb_project, step)
            trainer_config = {**self._get(self.config_init, "trainer", default={}), **extra, **kwargs}
            given = trainer_config.get("callbacks") or []
            given = given if isinstance(given, list) else [given]
            callbacks = [FitSummary(None)] if check_only else [SubsetChart(run_dir), FitSummary(run_dir)]
            if config.trainer.get("enable_progress_bar") is not False and not any(
                isinstance(c, ProgressBar) for c in given
            ):  # reading the loss for the bar syncs the GPU: every 10 steps, not every step
                callbacks.append(TQDMProgressBar(refresh_rate=10))
            if self.subcommand == "fit" and config.trainer.get("enable_checkpointing", True) is not False:
                # the best by val/2afc/mean, and last.ckpt after every epoch (Lightning's own
                # save_last only follows a new best), which `--ckpt_path last` resumes from
                best = ModelCheckpoint(
                    dirpath=run_dir,
                    filename="best-epoch{epoch:02d}-2afc{val/2afc/mean:.4f}",
                    auto_insert_metric_name=False,
                    monitor="val/2afc/mean",
                    mode="max",
                )
                last = ModelCheckpoint(dirpath=run_dir, filename="last", enable_version_counter=False)
                callbacks += [best, last]
            if extra.get("logger") and self.subcommand == "fit":
                callbacks.append(LearningRateMonitor("epoch"))
            trainer_config["callbacks"] = [*given, *callbacks]
            extra_callbacks = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
            try:
                return self._instantiate_trainer(trainer_config, extra_callbacks)
            except BaseException:
                self.run.release()  # a refused Trainer leaves no empty run folder behind
                raise

    return LPIPSCLI


_ACTIVE: list = []  # the LightningCLI being run, to tell an interrupted run from other exits
_ARGV: list[str] = []  # its command line, to tell options a user gave from defaults


def _interrupted(done: SystemExit) -> KeyboardInterrupt | None:
    """Lightning ends a run stopped by Ctrl-C with exit status 1 and one stopped by SIGTERM with 0.

    Both become a `KeyboardInterrupt` (status 130 / 143) with a line on how to resume.
    """
    cli = _ACTIVE[0] if _ACTIVE else None
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


def run_training(argv: Sequence[str], run: bool = True):
    """Run LightningCLI (fit/validate/test) on `argv`; return the CLI object."""
    _ACTIVE.clear()
    _ARGV[:] = list(argv)
    try:
        cli = _run_training(argv, run)
        if getattr(getattr(cli, "trainer", None), "fast_dev_run", False):
            cli.run.release()  # a quick check leaves no run folder behind
        return cli
    except Exception as err:
        # a refusal (ours, or Lightning's own, e.g. gradient clipping under manual optimisation)
        # leaves no empty run folder behind
        refused = isinstance(err, LPIPSLightningError) or type(err).__name__ == "MisconfigurationException"
        if refused and _ACTIVE and getattr(_ACTIVE[0], "run", None) is not None:
            _ACTIVE[0].run.release()
        raise
    except SystemExit as done:
        interrupted = _interrupted(done)
        if interrupted is None:
            raise
        raise interrupted from None


def _run_training(argv: Sequence[str], run: bool = True):
    import logging
    import warnings

    # "Seed set to 0" would come before any one-line refusal; the seed is in the saved config anyway
    logging.getLogger("lightning_fabric.utilities.seed").setLevel(logging.WARNING)

    from ..callbacks import SaveConfig
    from ..datamodules import JudgmentsDataModule
    from ..module import LPIPSModule

    # the run folder is new, or a resumed run's own (see `runs`): the logger and checkpoints may land in it
    warnings.filterwarnings("ignore", message=r".*exists and is not empty.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # a frozen backbone stays in eval mode on purpose (batch norms and dropout as at inference)
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    # validation and test scores are torchmetrics results, already synchronised over processes:
    # all-reducing them again (sync_dist=True) could only change them by rounding
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(val|test)/")
    from_command_line = list(argv) == sys.argv[1:]
    return _cli_class()(
        LPIPSModule,
        JudgmentsDataModule,
        args=None if from_command_line else list(argv),
        run=run,
        save_config_callback=SaveConfig,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        auto_configure_optimizers=False,
        parser_kwargs={"default_env": False},
        parser_class=_parser_class(),
    )


def _end_progress_line() -> None:
    """End the line a training progress bar left on the terminal, so that an error starts a line of its own."""
    trainer = getattr(_ACTIVE[0], "trainer", None) if _ACTIVE else None
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


# The command table: the one lazy place, so that `--help` answers before torch is imported.
COMMANDS = {
    "distance": "lpips_lightning.cli.distance:distance_command",
    "download": "lpips_lightning.cli.tools:download_command",
    "pack": "lpips_lightning.cli.tools:pack_command",
    "demo-data": "lpips_lightning.cli.tools:demo_data_command",
    "export": "lpips_lightning.cli.tools:export_command",
    "evaluate": "lpips_lightning.cli.tools:evaluate_command",
}


def _tool(name: str) -> Callable[[Sequence[str]], int]:
    import importlib

    module, function = COMMANDS[name].split(":")
    return getattr(importlib.import_module(module), function)


TOOLS = COMMANDS


def _raise_terminated(signum, frame) -> None:
    from ..errors import Interrupted

    raise Interrupted(signum)


TRAINING = ("fit", "validate", "test")


def _check_config_files(argv: Sequence[str]) -> None:
    """A --config that is not a readable text file: one line (jsonargparse would print a traceback)."""
    for flag, value in zip(argv, argv[1:]):
        if flag in ("--config", "-c"):
            try:
                Path(value).read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise ConfigError(f"--config {value}: not a YAML file (binary content)") from None
            except IsADirectoryError:
                raise ConfigError(f"--config {value}: is a folder, not a YAML file") from None
            except OSError:
                pass  # jsonargparse says that a file is missing in one line


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lpips-lightning`` console script and of ``train.py``."""
    import signal

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv[0] in ("-h", "--help"):
            print(HELP)
            return 0
        if argv[0] not in TOOLS and argv[0] not in TRAINING and not argv[0].startswith("-"):
            raise ConfigError(f"unknown command {argv[0]!r}; choose one of: {', '.join([*TRAINING, *TOOLS])}")
        if argv[0] in TOOLS:
            # SIGTERM (kill, a scheduler's time limit) cleans up like Ctrl-C; Lightning handles its own
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
            try:
                return _tool(argv[0])(argv[1:])
            finally:
                signal.signal(signal.SIGTERM, previous)
        _check_config_files(argv)
        run_training(argv)
        return 0
    except LPIPSLightningError as err:
        from ..runs import print_error_once

        _end_progress_line()
        print_error_once(message_of(err))
        return 2
    except KeyboardInterrupt as err:
        print(f"interrupted: {err}" if str(err) else "interrupted", file=sys.stderr)
        return getattr(err, "status", 130)
    except Exception as err:
        if type(err).__name__ != "MisconfigurationException":
            raise
        from ..runs import print_error_once

        _end_progress_line()
        print_error_once(str(err).strip().splitlines()[0])  # Lightning's own one-sentence refusals
        return 2
