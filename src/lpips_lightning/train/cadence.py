"""The one file that touches Lightning's private state: step counting, logging cadence, loop state.

A training batch may hold several optimizer steps (the feature cache, the captured step).
Lightning counts batches; here its counters are kept equal to the optimizer step count and
its logging follows optimizer steps. The few other private attributes the project needs are
read here too: an optimizer's step hooks, a W&B logger's settings, loop state in checkpoints.
Checked against pytorch_lightning 2.6.6; on an upgrade, read this file against the new
`LightningOptimizer`, `_TrainingEpochLoop`, `_LoggerConnector`, `ModelCheckpoint` and `WandbLogger`.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.core.optimizer import LightningOptimizer
from pytorch_lightning.loggers import WandbLogger

_USER_LOG_EVERY = "_lpips_lightning_log_every_n_steps"  # the Trainer attribute that keeps the user's value


def attached_trainer(module: pl.LightningModule) -> pl.Trainer | None:
    """The Trainer `module` is attached to, or None (`module.trainer` raises when there is none)."""
    return module._trainer


def set_hparam(module: pl.LightningModule, key: str, value) -> None:
    """Record a hyperparameter as `save_hyperparameters` would have (for checkpoints and loggers alike)."""
    module.hparams[key] = module._hparams_initial[key] = value


def counts_batches(trainer: pl.Trainer | None) -> bool:
    """Whether the run counts training batches itself (so that a batch must stay one optimizer step).

    An integer `limit_train_batches` (`fast_dev_run` sets one) or `val_check_interval`, or a
    checkpoint every N training steps (which tests ``global_step % N`` after each batch).
    """
    if trainer is None:
        return False
    if isinstance(trainer.limit_train_batches, int) or isinstance(trainer.val_check_interval, int):
        return True
    return any(isinstance(c, ModelCheckpoint) and c._every_n_train_steps for c in trainer.callbacks)


def logged_step(trainer: pl.Trainer) -> int:
    """The step Lightning's loggers write training values at (its count of batches that stepped)."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def epoch_finished(trainer: pl.Trainer) -> bool:
    """Whether the training epoch ran all its batches (not one cut short by `max_steps`)."""
    return getattr(trainer.fit_loop.epoch_loop, "_num_ready_batches_reached", lambda: True)()


def wandb_offline(logger: WandbLogger) -> bool:
    """Whether a W&B logger runs offline."""
    return bool(getattr(logger, "_offline", False))


def drop_anonymous_none(logger: WandbLogger) -> None:
    """Lightning passes ``anonymous=None`` to ``wandb.init``, which wandb >= 0.19 answers with a warning per run."""
    init = getattr(logger, "_wandb_init", {})
    if init.get("anonymous", "unset") is None:
        del init["anonymous"]


def count_optimizer_steps(optimizer: LightningOptimizer, steps: int) -> None:
    """Count `steps` optimizer steps that ran outside Lightning (a graph replay), as its optimizer would."""
    for _ in range(steps):
        optimizer._on_before_step()
        optimizer._on_after_step()


def manual_step_counts(checkpoint: dict) -> None:
    """Checkpoints written under automatic optimisation counted their optimizer steps there: move the count.

    A resumed run (manual optimisation) reads them from the manual counter.
    """
    loops = checkpoint.get("loops", {}).get("fit_loop", {})
    manual = loops.get("epoch_loop.manual_optimization.optim_step_progress")
    automatic = loops.get("epoch_loop.automatic_optimization.optim_progress", {}).get("optimizer", {}).get("step")
    if manual and automatic and manual["total"]["completed"] == 0 and automatic["total"]["completed"] > 0:
        loops["epoch_loop.manual_optimization.optim_step_progress"] = {
            "total": dict(automatic["total"]),
            "current": dict(automatic["current"]),
        }


class Cadence:
    """When a training batch logs, for batches of `per_call` optimizer steps each.

    One step per batch: Lightning's rule (every `log_every_n_steps` batches). Several: a batch
    logs when it crosses a multiple of `log_every_n_steps` optimizer steps, and Lightning's batch
    counter, which its loggers and callbacks take for the step, is kept equal to the optimizer
    step count. `log_every_n_steps` is then Lightning's switch for one batch (1 writes its values,
    0 none); the user's value is kept on the Trainer too, so that a fit after a failed one starts
    from it, and is given back by `release`.
    """

    def __init__(self, trainer: pl.Trainer, per_call: int) -> None:
        self.trainer = trainer
        self.log_every: int | None = None  # the user's log_every_n_steps while batches take several steps
        if per_call > 1:
            self.log_every = getattr(trainer, _USER_LOG_EVERY, trainer.log_every_n_steps)
            setattr(trainer, _USER_LOG_EVERY, self.log_every)
            trainer.log_every_n_steps = 0

    def logs(self, before: int, now: int) -> bool:
        """Whether the batch that took the run from optimizer step `before` to `now` logs its training values."""
        trainer = self.trainer
        if self.log_every is None:
            connector = getattr(trainer, "_logger_connector", None)
            if connector is not None and hasattr(connector, "should_update_logs"):
                return bool(connector.should_update_logs)
            return True
        trainer.fit_loop.epoch_loop._batches_that_stepped = now - 1  # Lightning adds the batch's 1
        every = self.log_every
        crossed = every > 0 and now // every > before // every
        trainer.log_every_n_steps = int(crossed)  # Lightning writes this batch's values, or none of them
        return crossed

    def release(self) -> None:
        """The Trainer's own `log_every_n_steps` back."""
        if self.log_every is not None:
            self.trainer.log_every_n_steps, self.log_every = self.log_every, None
            if hasattr(self.trainer, _USER_LOG_EVERY):
                delattr(self.trainer, _USER_LOG_EVERY)
