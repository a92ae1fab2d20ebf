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

from .errors import LPIPSLightningError

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

    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    key = os.environ.get("WANDB_API_KEY")
    if not key:
        try:
            key = (netrc.netrc().authenticators(host) or (None, None, None))[2]
        except (OSError, netrc.NetrcParseError):
            key = None
    if not key:
        return False
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def make_loggers(run_dir: Path, run_name: str, project: str) -> list:
    """A CSV log and, unless W&B is disabled, a W&B run: online when logged in and reachable, else offline."""
    from pytorch_lightning.loggers import CSVLogger, WandbLogger

    loggers: list = [CSVLogger(save_dir=str(run_dir), name="", version="")]
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("disabled", "dryrun-disabled"):
        return loggers
    offline = mode in ("offline", "dryrun") or not _wandb_online()
    if offline:
        os.environ["WANDB_MODE"] = "offline"
        hint = f"wandb sync {run_dir}/wandb/offline-run-*"
        print(f"W&B runs offline (not logged in, or no network); sync later with: {hint}")
    loggers.append(WandbLogger(name=run_name, project=project, save_dir=str(run_dir), offline=offline))
    return loggers


def _latest_run(runs_dir: Path) -> str | None:
    runs = [p for p in runs_dir.glob("*/last.ckpt")] if runs_dir.is_dir() else []
    return max(runs, key=lambda p: p.stat().st_mtime).parent.name if runs else None


@functools.cache
def _cli_class():
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar, TQDMProgressBar
    from pytorch_lightning.cli import LightningCLI

    from .callbacks import FitSummary, SubsetChart

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

        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand]
            runs_dir = Path(config.runs_dir)
            ckpt = config.get("ckpt_path")
            if config.run_name is None and ckpt == "last":
                config.run_name = _latest_run(runs_dir)
                if config.run_name is None:
                    raise LPIPSLightningError(f"--ckpt_path last: no run in {runs_dir}/ has a last.ckpt to resume")
                print(f"resuming run {config.run_name}")
            if config.run_name is None:
                stamp = time.strftime("%Y%m%d-%H%M%S")
                prefix = "" if self.subcommand == "fit" else f"{self.subcommand}-"
                config.run_name = f"{prefix}{config.model.variant}_{config.model.backbone}-{stamp}"
            self.run_dir = runs_dir / config.run_name
            if ckpt == "last":
                last = self.run_dir / "last.ckpt"
                if not last.is_file():
                    raise LPIPSLightningError(f"--ckpt_path last: {last} does not exist")
                config.ckpt_path = str(last)
            elif ckpt is not None and not Path(ckpt).is_file():
                raise LPIPSLightningError(f"--ckpt_path {ckpt}: no such checkpoint file")
            if "weights_only" in config and config.weights_only is None:
                config.weights_only = True  # checkpoints hold tensors and plain values only
            if config.trainer.default_root_dir is None:
                config.trainer.default_root_dir = str(self.run_dir)

        def instantiate_trainer(self, **kwargs):
            config = self.config_init[self.subcommand]
            extra: dict = {}
            if config.trainer.get("logger") in (None, True):
                extra["logger"] = make_loggers(self.run_dir, config.run_name, config.wandb_project)
            trainer_config = {**self._get(self.config_init, "trainer", default={}), **extra, **kwargs}
            given = trainer_config.get("callbacks") or []
            given = given if isinstance(given, list) else [given]
            callbacks = [SubsetChart(self.run_dir), FitSummary(self.run_dir)]
            if config.trainer.get("enable_progress_bar") is not False and not any(
                isinstance(c, ProgressBar) for c in given
            ):  # reading the loss for the bar syncs the GPU: every 10 steps, not every step
                callbacks.append(TQDMProgressBar(refresh_rate=10))
            if self.subcommand == "fit" and config.trainer.get("enable_checkpointing", True) is not False:
                # the best by val/2afc/mean, and last.ckpt after every epoch (Lightning's own
                # save_last only follows a new best), which `--ckpt_path last` resumes from
                best = ModelCheckpoint(
                    dirpath=self.run_dir,
                    filename="best-epoch{epoch:02d}-2afc{val/2afc/mean:.4f}",
                    auto_insert_metric_name=False,
                    monitor="val/2afc/mean",
                    mode="max",
                )
                last = ModelCheckpoint(dirpath=self.run_dir, filename="last", enable_version_counter=False)
                callbacks += [best, last]
            if extra.get("logger") and self.subcommand == "fit":
                callbacks.append(LearningRateMonitor("epoch"))
            trainer_config["callbacks"] = [*given, *callbacks]
            extra_callbacks = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
            return self._instantiate_trainer(trainer_config, extra_callbacks)

    return LPIPSCLI


def run_training(argv: Sequence[str], run: bool = True):
    """Run LightningCLI (fit/validate/test) on `argv`; return the CLI object."""
    import warnings

    from .callbacks import SaveConfig
    from .datamodules import JudgmentsDataModule
    from .module import LPIPSModule

    # the run folder is made before the CSV log and checkpoints land in it: expected, not a problem
    warnings.filterwarnings("ignore", message=r".*exists and is not empty.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
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
    )


def _tool(module: str, name: str = "main") -> Callable[[Sequence[str]], int]:
    def run(argv: Sequence[str]) -> int:
        import importlib

        return getattr(importlib.import_module(f"lpips_lightning.{module}"), name)(argv)

    return run


TOOLS: dict[str, Callable[[Sequence[str]], int]] = {
    "distance": _tool("distance"),
    "download": _tool("download"),
    "pack": _tool("pack"),
    "demo-data": _tool("datamodules.demo"),
    "export": _tool("export"),
    "evaluate": _tool("evaluate"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lpips-lightning`` console script and of ``train.py``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv[0] in ("-h", "--help"):
            print(HELP)
            return 0
        if argv[0] in TOOLS:
            return TOOLS[argv[0]](argv[1:])
        run_training(argv)
        return 0
    except LPIPSLightningError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
