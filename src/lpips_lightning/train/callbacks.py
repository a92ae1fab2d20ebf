"""What a training run leaves behind besides checkpoints and logs: subset charts, the config, a summary.

`SubsetChart` draws the per-subset validation scores after each validation (a PNG in the run
folder, an image per epoch in W&B), `SaveConfig` stores the resolved config in the W&B run too,
`BestCheckpoint` keeps the best epoch by the 2AFC mean (the JND mAP mean when validation has no
2AFC group), and `FitSummary` prints the best score, the last real validation's scores and
where the files are when fit ends.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from ..data.judgments import kind_of
from ..model.backbone_file import backbone_files
from ..outputs import atomic_output
from ..provenance import provenance, write_provenance
from .cadence import logged_step, wandb_offline

COLORS = {"2afc": "#4c72b0", "jnd": "#dd8452", "srcc": "#55a868"}  # the chart's bar colour per kind of score


def subset_chart(scores: dict[str, float], title: str):
    """A horizontal bar chart of per-subset scores (2AFC, JND mAP, SRCC), with the 0.5 chance line of 2AFC.

    `scores`: ``{"2afc/<name>" | "jnd/<name>" | "srcc/<name>": value}``; SRCC can be negative (a
    metric that ranks backwards), and the axis then reaches below 0.
    """
    import matplotlib  # heavy (half a second): only a run that draws its chart needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(scores)
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(names) + 1.5))
    colors = [COLORS.get(n.split("/", 1)[0], "grey") for n in names]
    ax.barh(names, [scores[n] for n in names], color=colors)
    for i, n in enumerate(names):
        ax.text(scores[n], i, f" {scores[n]:.3f}", va="center")
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.text(0.5, -0.6, " chance (2AFC)", color="grey", fontsize="small", va="bottom")
    low = min(0.0, *(scores[n] for n in names))
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlim(low - (0.25 if low < 0 else 0), 1.15)
    ax.set_xlabel("2AFC score / JND mAP (fraction) / SRCC")
    ax.invert_yaxis()
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _figure_array(fig):
    """The figure's pixels as a uint8 (H, W, 3) array."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


class SubsetChart(Callback):
    """At each validation end: a per-subset chart (2AFC, JND mAP, SRCC) as PNG in the run folder and in W&B.

    The file on disk shows the latest epoch; W&B keeps one image per epoch (the pixels are
    logged, not the file, which the next epoch replaces).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    @rank_zero_only
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import matplotlib.pyplot as plt  # heavy: see `subset_chart`

        if trainer.sanity_checking:
            return
        scores = getattr(pl_module, "scores", {}).get("val", {})
        shown = {
            k.split("/", 1)[1].replace("jnd_map/", "jnd/"): v
            for k, v in scores.items()
            if k.startswith(("val/2afc/", "val/jnd_map/", "val/srcc/"))
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
                        step=logged_step(trainer),  # the step other metrics use
                        caption=[f"epoch {trainer.current_epoch}"],
                    )
        finally:
            plt.close(fig)


class SaveConfig(SaveConfigCallback):
    """Save the resolved config in the run folder (LightningCLI's default) and in the W&B run config.

    `argv`: the command line as the user typed it (for ``provenance.json``; default: this process's).
    """

    def __init__(self, *args, argv: list[str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.argv = argv

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.save_provenance(trainer, pl_module)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update({"config": self.config.as_dict()}, allow_val_change=True)

    def save_provenance(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path:
        """Write ``provenance.json`` beside ``config.yaml`` (a resumption's beside its own config file).

        Where the run comes from: versions, the command line, its data and model files hashed (`provenance`).
        """
        data = getattr(trainer.datamodule, "file", None)
        # the checkpoint given (restored after this hook runs: not yet in trainer.ckpt_path)
        ckpt = trainer.ckpt_path or (self.config.get("ckpt_path") if self.config is not None else None)
        models = [str(m) for m in (ckpt, *backbone_files(pl_module)) if m]
        name = Path(self.config_filename).stem.replace("config", "provenance", 1) + ".json"
        # the folder of config.yaml (Trainer.log_dir's choice) without its broadcast: this runs on rank 0 only
        logger = trainer.loggers[0] if getattr(trainer, "loggers", None) else None
        folder = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None) or trainer.default_root_dir
        return write_provenance(Path(folder) / name, provenance(data, models, self.argv))


MONITORS = {  # score, in file names
    "2afc": ("val/2afc/mean", "2afc"),
    "jnd": ("val/jnd_map/mean", "jndmap"),
    "mos": ("val/srcc/mean", "srcc"),
}


class BestCheckpoint(ModelCheckpoint):
    """The best checkpoint by ``val/2afc/mean``; by ``val/jnd_map/mean`` without 2AFC groups, else ``val/srcc/mean``.

    The monitor follows the data module's validation groups, chosen at setup (before a resumed
    run's checkpoint state is restored): a fit validated on JND groups only keeps its best epoch
    too, in ``best-epochNN-jndmapS.ckpt``, instead of failing after its first epoch.
    """

    def __init__(self, dirpath: str | os.PathLike) -> None:
        super().__init__(dirpath=dirpath, auto_insert_metric_name=False, monitor=MONITORS["2afc"][0], mode="max")
        self._name_for(MONITORS["2afc"])

    def _name_for(self, monitor: tuple[str, str]) -> None:
        self.monitor = monitor[0]
        self.filename = f"best-epoch{{epoch:02d}}-{monitor[1]}{{{monitor[0]}:.4f}}"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        groups = getattr(trainer.datamodule, "groups", None)
        if stage == "fit" and callable(groups):
            kinds = {kind_of(g) for g in groups("val")}
            # 2AFC first (the paper's measure), then JND mAP, then SRCC: a score the validation logs
            first = "2afc" if "2afc" in kinds or not kinds else ("jnd" if "jnd" in kinds else "mos")
            self._name_for(MONITORS[first])
        super().setup(trainer, pl_module, stage)

    @property
    def state_key(self) -> str:
        # a plain ModelCheckpoint's key: checkpoints saved before this class existed resume their best score
        return "ModelCheckpoint" + super().state_key[len(type(self).__qualname__) :]


class FitSummary(Callback):
    """When fit ends, print the best validation score, the last real validation's scores, and where things are.

    Only validations of the fit itself count (not Lightning's sanity check before the first
    step), each with the epoch and step it ran at; a fit that never validated says so.
    """

    def __init__(self, run_dir: str | os.PathLike | None) -> None:
        self.run_dir = None if run_dir is None else Path(run_dir)  # None: a fast_dev_run, which writes nothing
        self.validated: dict | None = None  # the last real validation: epoch, step, scores, at an epoch's end

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        scores = dict(getattr(pl_module, "scores", {}).get("val", {}))
        self.validated = {"epoch": trainer.current_epoch, "step": trainer.global_step, "scores": scores, "end": False}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.validated is not None and self.validated["step"] == trainer.global_step:
            self.validated["end"] = True  # no training step since: it scored the epoch's final weights

    def _validation_lines(self, trainer: pl.Trainer | None = None) -> list[str]:
        if self.validated is None or not self.validated["scores"]:
            why = _why_no_validation(trainer) if trainer is not None else ""
            return [f"no validation ran{why}, so there is no best checkpoint"]
        v = self.validated
        when = f"after epoch {v['epoch']}" if v["end"] else f"in epoch {v['epoch']}, at step {v['step']}"
        return [f"last validation ({when}):", *(f"  {k:<28} {s:.4f}" for k, s in v["scores"].items())]

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        checkpoints = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
        best = next((c for c in checkpoints if c.monitor), None)
        last = next((c for c in checkpoints if not c.monitor), None)
        lines = ["", "=== lpips-lightning: fit finished ==="]
        if best is not None and best.best_model_score is not None:
            lines.append(f"best {best.monitor}: {float(best.best_model_score):.4f}")
        lines += self._validation_lines(trainer)
        relative = self.run_dir is not None and not self.run_dir.is_absolute()  # shown as the run folder is
        if best is not None and best.best_model_path:
            lines.append(f"best checkpoint: {_shown_path(best.best_model_path, relative)}")
        if last is not None and last.best_model_path:
            lines.append(f"last checkpoint: {_shown_path(last.best_model_path, relative)}")
        lines.append(f"run folder: {self.run_dir}" if self.run_dir else "fast_dev_run: a quick check, no files written")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and wandb_offline(logger):
                # a resumed run has a folder per part: the glob takes them all
                folder = Path(logger.experiment.dir.rsplit("/files", 1)[0])
                lines.append(f"W&B (offline): wandb sync {folder.parent}/offline-run-*-{logger.version}")
        print("\n".join(lines), flush=True)


def _why_no_validation(trainer: pl.Trainer) -> str:
    """Why a fit never validated, as ``": <reason>"`` ("" when it is not known)."""
    if not trainer.limit_val_batches or not trainer.num_val_batches:
        return ": validation is off (--trainer.limit_val_batches 0, or no validation batches)"
    if not trainer.global_step:
        return ": no training step ran (--trainer.max_epochs 0, or --trainer.limit_train_batches 0)"
    if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
        return (
            f": --trainer.max_steps {trainer.max_steps} ended the fit before the end of an epoch, where validation "
            "runs (--trainer.val_check_interval N validates every N batches)"
        )
    return ""


def _shown_path(path: str | os.PathLike, relative: bool) -> str:
    """`path` relative to the working folder if `relative` and it lies inside it, else as it is."""
    if not relative:
        return str(path)
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
