"""What a training run leaves behind besides checkpoints: subset charts, the config, a summary."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only


def subset_chart(scores: dict[str, float], title: str):
    """A horizontal bar chart of per-subset scores (2AFC and JND mAP), with the 0.5 chance line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(scores)
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(names) + 1.5))
    colors = ["#4c72b0" if n.startswith("2afc") else "#dd8452" for n in names]
    ax.barh(names, [scores[n] for n in names], color=colors)
    for i, n in enumerate(names):
        ax.text(scores[n], i, f" {scores[n]:.3f}", va="center")
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.text(0.5, -0.6, " chance (2AFC)", color="grey", fontsize="small", va="bottom")
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("2AFC score / JND mAP (fraction)")
    ax.invert_yaxis()
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _figure_array(fig):
    """The figure's pixels as a uint8 (H, W, 3) array."""
    import numpy as np

    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


class SubsetChart(Callback):
    """At each validation end: a per-subset chart (2AFC and JND mAP) as PNG in the run folder and in W&B.

    The file on disk shows the latest epoch; W&B keeps one image per epoch (the pixels are
    logged, not the file, which the next epoch replaces).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    @rank_zero_only
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import matplotlib.pyplot as plt

        from .outputs import atomic_output

        if trainer.sanity_checking:
            return
        scores = getattr(pl_module, "scores", {}).get("val", {})
        shown = {
            k.split("/", 1)[1].replace("jnd_map/", "jnd/"): v
            for k, v in scores.items()
            if k.startswith(("val/2afc/", "val/jnd_map/"))
        }
        if not shown:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "val_subsets.png"
        fig = subset_chart(shown, f"validation after epoch {trainer.current_epoch}")
        try:
            with atomic_output(path, overwrite=True, what="chart") as tmp:
                fig.savefig(tmp, format="png", dpi=100)
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_image(
                        "val/subsets_chart",
                        [_figure_array(fig)],
                        step=trainer.fit_loop.epoch_loop._batches_that_stepped,  # the step other metrics use
                        caption=[f"epoch {trainer.current_epoch}"],
                    )
        finally:
            plt.close(fig)


class SaveConfig(SaveConfigCallback):
    """Save the resolved config in the run folder (LightningCLI's default) and in the W&B run config."""

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update({"config": self.config.as_dict()}, allow_val_change=True)


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSV log, except that a resumed run keeps the rows logged before its checkpoint.

    (Lightning's deletes an existing ``metrics.csv``.) Rows after the checkpoint's step came
    from the interrupted part of the run, which the resumed run repeats: they are dropped.
    """

    def __init__(self, *args, keep_until_step: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.keep_until_step = keep_until_step

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
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / "metrics.csv"
        kept: list[dict] = []
        header: list[str] = []
        if self.keep_until_step is not None and path.is_file():
            with open(path, newline="") as fh:
                reader = csv.DictReader(fh)
                header = list(reader.fieldnames or [])
                kept = [r for r in reader if self._before_resume(r)]
            path.unlink()  # Lightning's writer would delete it anyway; it is rewritten below
        experiment = super().experiment
        if header:
            with open(path, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=header)
                writer.writeheader()
                writer.writerows(kept)
            experiment.metrics_keys = header
        return experiment


class FitSummary(Callback):
    """When fit ends, print the best validation score, each subset's score, and where things are."""

    def __init__(self, run_dir: str | os.PathLike | None) -> None:
        self.run_dir = None if run_dir is None else Path(run_dir)  # None: a fast_dev_run, which writes nothing

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
        relative = self.run_dir is not None and not self.run_dir.is_absolute()  # shown as the run folder is
        if best is not None and best.best_model_path:
            lines.append(f"best checkpoint: {_shown_path(best.best_model_path, relative)}")
        if last is not None and last.best_model_path:
            lines.append(f"last checkpoint: {_shown_path(last.best_model_path, relative)}")
        lines.append(f"run folder: {self.run_dir}" if self.run_dir else "fast_dev_run: a quick check, no files written")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and getattr(logger, "_offline", False):
                lines.append(f"W&B (offline): wandb sync {logger.experiment.dir.rsplit('/files', 1)[0]}")
        print("\n".join(lines), flush=True)


def _shown_path(path: str | os.PathLike, relative: bool) -> str:
    """`path` relative to the working folder if `relative` and it lies inside it, else as it is."""
    if not relative:
        return str(path)
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
