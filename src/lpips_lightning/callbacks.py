"""What a training run leaves behind besides checkpoints: subset charts, the config, a summary."""

from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only


def bar_chart(scores: dict[str, float], title: str, path: str | os.PathLike):
    """Save a horizontal bar chart of per-subset scores as PNG; return the figure (closed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(scores)
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(names) + 1.2))
    ax.barh(names, [scores[n] for n in names], color="#4c72b0")
    for i, n in enumerate(names):
        ax.text(scores[n], i, f" {scores[n]:.3f}", va="center")
    ax.set_xlim(0, 1.1)
    ax.invert_yaxis()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return fig


class SubsetChart(Callback):
    """At each validation end: a per-subset 2AFC bar chart as PNG in the run folder and in W&B."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    @rank_zero_only
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        scores = getattr(pl_module, "scores", {}).get("val", {})
        two_afc = {k.split("/")[-1]: v for k, v in scores.items() if k.startswith("val/2afc/")}
        if not two_afc:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "val_2afc.png"
        bar_chart(two_afc, f"validation 2AFC, epoch {trainer.current_epoch}", path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("val/2afc_chart", [str(path)], step=trainer.global_step)


class SaveConfig(SaveConfigCallback):
    """Save the resolved config in the run folder (LightningCLI's default) and in the W&B run config."""

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update({"config": self.config.as_dict()}, allow_val_change=True)


class FitSummary(Callback):
    """When fit ends, print the best validation score, each subset's score, and where things are."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        checkpoints = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
        best = next((c for c in checkpoints if c.monitor), None)
        last = next((c for c in checkpoints if not c.monitor), None)
        scores = getattr(pl_module, "scores", {}).get("val", {})
        lines = ["", "=== lpips-lightning: fit finished ==="]
        if best is not None and best.best_model_score is not None:
            lines.append(f"best {best.monitor}: {float(best.best_model_score):.4f}")
        if scores:
            lines.append(f"last validation (after epoch {trainer.current_epoch - 1}):")
            lines += [f"  {k:<28} {v:.4f}" for k, v in scores.items()]
        if best is not None and best.best_model_path:
            lines.append(f"best checkpoint: {best.best_model_path}")
        if last is not None and last.best_model_path:
            lines.append(f"last checkpoint: {last.best_model_path}")
        lines.append(f"run folder: {self.run_dir}")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and getattr(logger, "_offline", False):
                lines.append(f"W&B (offline): wandb sync {logger.experiment.dir.rsplit('/files', 1)[0]}")
        print("\n".join(lines), flush=True)
