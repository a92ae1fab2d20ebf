"""fit / validate / test: LightningCLI with run folders, one-line refusals and a clean Ctrl-C.

`LPIPSCLI` puts each run's checkpoints, logs, config and charts in ``runs_dir/<run_name>/``
(`runs.RunFolder`); `run_training` runs it and turns what goes wrong into one ``error:`` line
(exit status 2, no run folder left behind) or, for Ctrl-C / SIGTERM, a line on how to resume.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar, TQDMProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from ..data.datamodule import JudgmentsDataModule
from ..errors import ConfigError
from ..train import links
from ..train.callbacks import BestCheckpoint, FitSummary, SaveConfig, SubsetChart
from ..train.checkpoint_io import use_atomic_checkpoints
from ..train.loggers import make_loggers
from ..train.module import LPIPSModule
from ..train.resume import explicit_options
from ..train.runs import RunFolder, print_error_once
from . import outcome
from .checks import check_accelerator, check_config_files, check_precision
from .parser import OneLineErrors

USAGE = "%(prog)s [-c CONFIG] [--model.OPTION ...] [--data.OPTION ...] [--ckpt_path PATH] [--trainer.OPTION ...] ..."


def _help_rank(group) -> int:
    """Where an option group goes in ``--help``: the command's own, model, data, the rest, Lightning's trainer last."""
    dests = [action.dest for action in group._group_actions]
    if any(d.split(".")[0] == "trainer" for d in dests):
        return 3
    if any(d.split(".")[0] in ("model", "data") for d in dests):
        return 1
    return 0 if group.title in ("positional arguments", "options") else 2


class TrainingParser(OneLineErrors, LightningArgumentParser):
    """LightningCLI's parser: usage errors as one line (printed by rank 0 only); help with the trainer's flags last."""

    print_error = staticmethod(print_error_once)

    def format_help(self) -> str:
        # jsonargparse lists the trainer's ~90 flags first, and every option in the usage line
        groups, usage = self._action_groups, self.usage
        if any(_help_rank(g) == 3 for g in groups):
            self._action_groups, self.usage = sorted(groups, key=_help_rank), USAGE
        try:
            return super().format_help()
        finally:
            self._action_groups, self.usage = groups, usage


def _files(config) -> list[str]:
    """The --config files of a parsed command line."""
    return [str(getattr(f, "relative", f)) for f in config.get("config") or []]


class LPIPSCLI(LightningCLI):
    """LightningCLI with run folders: checkpoints, logs, config and charts in runs_dir/<run_name>/."""

    running: LPIPSCLI | None = None  # the one being run, to clean up after its constructor raised

    def __init__(self, argv: Sequence[str], run: bool = True) -> None:
        self.argv = list(argv)  # to tell options a user gave from defaults
        self.run: RunFolder | None = None
        LPIPSCLI.running = self
        super().__init__(
            LPIPSModule,
            JudgmentsDataModule,
            args=None if self.argv == sys.argv[1:] else self.argv,
            run=run,
            save_config_callback=SaveConfig,
            save_config_kwargs={"overwrite": True, "argv": ["lpips-lightning", *self.argv]},
            seed_everything_default=0,
            auto_configure_optimizers=False,
            parser_kwargs={"default_env": False, "prog": "lpips-lightning"},  # also as python -m lpips_lightning.cli
            parser_class=TrainingParser,
        )

    def subcommands(self) -> dict[str, set[str]]:
        """Only the subcommand being run: LightningCLI builds a parser for each (about a second apiece)."""
        every = {k: v for k, v in LightningCLI.subcommands().items() if k != "predict"}  # no predict_step here
        chosen = self.argv[0] if self.argv else None
        return {chosen: every[chosen]} if chosen in every else every

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="run folder name under runs_dir (default: <variant>_<backbone>-<time>)",
        )
        parser.add_argument("--runs_dir", type=str, default="checkpoints", help="where run folders go")
        parser.add_argument("--wandb_project", type=str, default="lpips-lightning", help="W&B project")
        # what the data module must know of the model, decided from the parsed options (see `train.links`)
        parser.link_arguments("model.feature_cache", "data.index_only", compute_fn=links.index_only, apply_on="parse")
        parser.link_arguments(
            ("model.feature_cache", "model.capture", "trainer"),
            "data.steps_per_batch",
            compute_fn=links.steps_per_batch,
            apply_on="parse",
        )

    def _parse_ckpt_path(self) -> None:
        # Runs right after parsing, before LightningCLI copies the checkpoint's hyperparameters
        # over the config: choose the run folder, resolve `last`, refuse files that are not
        # plain checkpoints of this project and options that the checkpoint would replace.
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return super()._parse_ckpt_path()
        config = self.config[subcommand]
        check_accelerator(config.trainer, _files(config))
        check_precision(config.trainer)
        self.run = RunFolder(subcommand, config, explicit_options(self.argv, _files(config)))
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

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if subcommand in ("validate", "test"):  # Lightning's table repeats each score under every DataLoader
            self._scores_table = kwargs.get("verbose", True)
            kwargs["verbose"] = False
        return kwargs

    def after_validate(self) -> None:
        self._print_scores("val")

    def after_test(self) -> None:
        self._print_scores("test")

    def _print_scores(self, stage: str) -> None:
        """Each score of a validate/test once (the subsets' and the means), on rank 0."""
        scores = getattr(self.model, "scores", {}).get(stage)
        if not getattr(self, "_scores_table", False) or not scores or not self.trainer.is_global_zero:
            return
        width = max(len(k) for k in scores) + 2
        print("\n".join([f"{'score':<{width}}value", *(f"{k:<{width}}{v:.6f}" for k, v in scores.items())]))

    def _check_data(self, model, data) -> None:
        """Refuse, before a run folder is made, images too small for the backbone and a fit without validation."""
        if getattr(data, "path", None) is None:  # the demo set is built later, by prepare_data
            return
        if hasattr(model, "check_data"):
            model.check_data(data)
        if self.subcommand == "fit" and hasattr(data, "groups") and not data.groups("val"):
            raise ConfigError(
                f"{data.file}: no validation groups (data.val {data.val_patterns}); fit scores each epoch on "
                "held-out judgments to keep the best checkpoint: pack some into a 2afc/val/<name> group, "
                "or hold out a share of the training items with --data.val_fraction 0.1"
            )

    def _callbacks(self, config, run_dir: Path, given: list, check_only: bool, logged: bool) -> list:
        """The run's own callbacks: chart, summary, progress bar, best and last checkpoints, lr monitor."""
        callbacks = [FitSummary(None)] if check_only else [SubsetChart(run_dir), FitSummary(run_dir)]
        # reading the loss for the bar syncs the GPU: every 10 steps, not every step
        bar = not any(isinstance(c, ProgressBar) for c in given)
        if bar and config.trainer.get("enable_progress_bar") is not False:
            callbacks.append(TQDMProgressBar(refresh_rate=10))
        if self.subcommand == "fit" and config.trainer.get("enable_checkpointing", True) is not False:
            # the best by val/2afc/mean (val/jnd_map/mean when validation is JND only), and
            # last.ckpt after every epoch (Lightning's own save_last only follows a new best),
            # which `--ckpt_path last` resumes from
            best = BestCheckpoint(run_dir)
            callbacks += [best, ModelCheckpoint(dirpath=run_dir, filename="last", enable_version_counter=False)]
        if logged and self.subcommand == "fit":
            callbacks.append(LearningRateMonitor("epoch"))
        return callbacks

    def instantiate_trainer(self, **kwargs):
        config = self.config_init[self.subcommand]
        self._check_data(config.get("model"), config.get("data"))
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
        own = self._callbacks(config, run_dir, given, check_only, bool(extra.get("logger")))
        trainer_config["callbacks"] = [*given, *own]
        extra_callbacks = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
        try:
            trainer = self._instantiate_trainer(trainer_config, extra_callbacks)
        except BaseException:
            self.run.release()  # a refused Trainer leaves no empty run folder behind
            raise
        use_atomic_checkpoints(trainer)  # written beside and renamed: a full disk never cuts a good checkpoint
        return trainer


class _NoTips(logging.Filter):
    """Drops Lightning's "💡 Tip" lines: advice about other products, on every fit."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


_NO_TIPS = _NoTips()  # one instance: `addFilter` adds it once however often a process runs `fit`


def _quiet_lightning() -> None:
    """Silence what every run would print or warn that says nothing about this run."""
    # "Seed set to 0" would come before any one-line refusal; the seed is in the saved config anyway
    logging.getLogger("lightning_fabric.utilities.seed").setLevel(logging.WARNING)
    # Lightning's advertisement for its cloud logger (checked against pytorch_lightning 2.6)
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NO_TIPS)
    # the run folder is new, or a resumed run's own (see `runs`): the logger and checkpoints may land in it
    warnings.filterwarnings("ignore", message=r".*exists and is not empty.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # a frozen backbone stays in eval mode on purpose (batch norms and dropout as at inference)
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    # validation and test scores are torchmetrics results, already synchronised over processes:
    # all-reducing them again (sync_dist=True) could only change them by rounding
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(val|test)/")
    # validate/test --ckpt_path: they score the weights; the checkpoint callbacks of the fit that wrote the file,
    # and where it kept its checkpoints, do not matter to them
    warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks used to create")
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from")


def run_training(argv: Sequence[str]) -> int:
    """Run LightningCLI (``fit|validate|test ...``) on `argv`; return the exit status."""
    LPIPSCLI.running = None
    _quiet_lightning()
    try:
        check_config_files(argv)
        cli = LPIPSCLI(argv)
        if getattr(getattr(cli, "trainer", None), "fast_dev_run", False):
            cli.run.release()  # a quick check leaves no run folder behind
        return 0
    except Exception as err:
        message, cli = outcome.refusal(err), LPIPSCLI.running
        if getattr(cli, "run", None) is not None:  # refused or failed before it trained: no run folder left
            outcome.discard_wandb(cli)
            cli.run.release()
        if message is None:
            raise
        outcome.end_progress_line(cli)
        print_error_once(message)
        return 2
    except SystemExit as done:
        interrupted = outcome.interrupted(LPIPSCLI.running, done)
        if interrupted is None:
            raise
        raise interrupted from None
    finally:
        if getattr(LPIPSCLI.running, "run", None) is not None:
            LPIPSCLI.running.run.unclaim()  # the run folder is free again for a resume
