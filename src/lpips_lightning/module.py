"""LPIPSModule: train an LPIPS metric on 2AFC judgments with the paper's recipe."""

from __future__ import annotations

import torch
from pytorch_lightning import LightningModule
from torch import nn

from . import judgments
from .datamodules.judgments_datamodule import epoch_seed
from .errors import ConfigError, check_choice
from .heads import make_head
from .lpips import LPIPS
from .metrics import JNDAveragePrecision, TwoAFCScore
from .steps import CACHE_STEPS_PER_CALL, PREPACK_KEY, Steps
from .weights import CHECKPOINT_BACKBONE_KEY

VARIANTS = ("lin", "tune", "scratch")
CAPTURE = (True, False, "auto")


def lr_factor(epoch: int, epochs_constant: int, epochs_decay: int) -> float:
    """The original's schedule: full rate through epoch `epochs_constant` (0-based), then linear decay.

    With 5 + 5 epochs: epochs 0..5 at 1.0, then 0.8, 0.6, 0.4, 0.2 (the original's 7..10).

    >>> [round(lr_factor(e, 5, 5), 6) for e in range(10)]
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2]
    """
    if epoch <= epochs_constant or epochs_decay <= 0:
        return 1.0
    return max(0.0, 1.0 - (epoch - epochs_constant) / epochs_decay)


class LPIPSModule(LightningModule):
    """Train LPIPS on human 2AFC judgments; validate with 2AFC scores and JND mAP per subset.

    Variants: ``lin`` (pretrained backbone frozen, heads trained), ``tune`` (pretrained
    backbone and heads trained), ``scratch`` (random backbone and heads trained). The heads
    start random and are clamped to >= 0 after every optimizer step. Only the heads: the
    original clamps every 1x1 convolution, which in ``tune``/``scratch`` on SqueezeNet also
    clamps the backbone's own squeeze and expand convolutions (a bug not reproduced here).

    Each image of a triplet goes through the backbone once per step; the reference's
    features serve both distances. In ``lin`` the backbone runs without autograd: no
    gradient flows into or through it. Batches arrive as uint8 and are scaled on the device.

    Args:
        variant: ``lin``, ``tune`` or ``scratch``.
        backbone: a backbone spec (see `lpips_lightning.backbones`): ``alex``, ``vgg``, ``squeeze``,
            ``torchvision:<model>`` (e.g. ``torchvision:resnet50``), ``timm:<model>`` (e.g.
            ``timm:vit_small_patch14_dinov2``), or ``{class_path: ..., init_args: {...}}``: any module
            returning a list of (N, C, H, W) feature maps. In Python also an `nn.Module` instance
            (recorded by its class path: checkpoints rebuild it without init args).
        taps: which feature maps of a ``torchvision:`` (node names, e.g. ``[layer1, layer2]``) or
            ``timm:`` backbone (stage or block indices); default: the family's stage outputs.
        backbone_args: keyword arguments of the ``torchvision:``/``timm:`` model's constructor.
        version: LPIPS version, ``"0.1"`` (input normalisation) or ``"0.0"`` (classic backbones only).
        pretrained: start from pretrained weights (default: yes for lin/tune, no for scratch).
            ``lin`` with ``pretrained: false`` trains heads over a random backbone.
        backbone_weights: a state dict file of the backbone network to start from (offline machines).
        lora_rank: ``tune`` only: train low-rank adapters of this rank on the backbone's attention
            projections (qkv, proj) instead of the whole backbone: for large ViTs (0: off).
        loss: ``bce_rank`` (the paper's ranking head) or ``hinge`` (with `margin`).
        margin: the hinge loss margin.
        lr: Adam learning rate.
        betas: Adam betas.
        epochs_constant: epochs at the full rate (the schedule adds one, as the original does).
        epochs_decay: epochs of linear decay after that.
        dropout: dropout (p=0.5) before each head while training.
        feature_cache: ``lin`` only. Without dropout the distance is linear in the head weights,
            d = sum over taps and channels of w[c] * (spatial mean of the squared normalised
            difference), so one pass of the frozen backbone over the training set turns each
            pair into a vector of channel means (1,152 numbers for alex) and every epoch after
            it is small matrix products: the same distances and gradients as the full path.
            Regularisation differs: dropout (when on) drops channel means of each pair instead
            of each pixel's difference. Validation always runs the full path.
        channels_last: run the backbone in channels-last memory format (faster convolutions on GPU and CPU).
        compile: ``torch.compile`` the training computation: ``false``, ``true`` (default mode),
            ``reduce-overhead`` or ``max-autotune`` (with `capture`, their CUDA graphs give way to the
            captured step's own).
        capture: record training steps (forward, backward, Adam and the head clamp of 8 consecutive
            minibatches) as one CUDA graph and replay it: ``auto`` (default: on CUDA, one process,
            precision 32 or bf16), ``true`` or ``false``. Where it cannot apply (DDP, 16-mixed) the
            run says so in one line and takes the eager step. See `lpips_lightning.steps`.
    """

    def __init__(
        self,
        variant: str = "lin",
        backbone: str | dict = "alex",
        taps: list[str | int] | None = None,
        backbone_args: dict | None = None,
        version: str = "0.1",
        pretrained: bool | None = None,
        backbone_weights: str | None = None,
        lora_rank: int = 0,
        loss: str = "bce_rank",
        margin: float = 0.05,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        epochs_constant: int = 5,
        epochs_decay: int = 5,
        dropout: bool = True,
        feature_cache: bool = False,
        channels_last: bool = True,
        compile: bool | str = False,
        capture: bool | str = "auto",
    ) -> None:
        super().__init__()
        check_choice("variant", variant, VARIANTS)
        if pretrained is None:
            pretrained = variant != "scratch"
        if variant == "scratch" and (pretrained or backbone_weights):
            raise ConfigError("variant 'scratch' trains a random backbone: drop pretrained / backbone_weights")
        if feature_cache and variant != "lin":
            raise ConfigError(f"feature_cache needs a frozen backbone: variant 'lin', not {variant!r}")
        if compile not in (True, False, "default", "reduce-overhead", "max-autotune"):
            raise ConfigError(
                f"unknown compile {compile!r}; choose one of: false, true, default, reduce-overhead, max-autotune"
            )
        check_choice("capture", capture, CAPTURE)
        if not lr > 0 or lr == float("inf"):  # NaN fails the first test
            raise ConfigError(f"lr must be a positive number, got {lr}")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ConfigError(f"betas must be two numbers in [0, 1) (Adam's), got {list(betas)}")
        for name, value in (("epochs_constant", epochs_constant), ("epochs_decay", epochs_decay)):
            if value < 0:
                raise ConfigError(f"{name} must be 0 or more epochs, got {value}")
        if not margin >= 0:
            raise ConfigError(f"margin must be 0 or more, got {margin}")
        if lora_rank < 0:
            raise ConfigError(f"lora_rank must be 0 (off) or a positive rank, got {lora_rank}")
        if taps is not None and len(taps) == 0:
            raise ConfigError("taps is empty: name at least one tap, or leave taps out for the family's default")
        if lora_rank and variant != "tune":
            raise ConfigError(f"lora_rank adapts a backbone that is tuned: variant 'tune', not {variant!r}")
        instance = isinstance(backbone, nn.Module)
        # hyperparameters hold plain values only (checkpoints load with weights_only=True): a module
        # given as an instance is recorded by its class path
        self.save_hyperparameters(ignore=["backbone"] if instance else None)
        self.variant = variant
        self.lpips = LPIPS(
            backbone,
            version,
            pretrained=pretrained,
            heads="random",
            dropout=dropout,
            backbone_weights=backbone_weights,
            tune_backbone=variant != "lin",
            taps=taps,
            backbone_args=backbone_args,
            lora_rank=lora_rank,
        )
        if instance:
            self.hparams["backbone"] = self._hparams_initial["backbone"] = self.lpips.backbone_spec
        self.rank_head = make_head(loss, margin)
        self.metrics = nn.ModuleDict({"val": nn.ModuleList(), "test": nn.ModuleList()})
        self.groups: dict[str, list[str]] = {"val": [], "test": []}
        self.scores: dict[str, dict[str, float]] = {}
        self.feature_cache = feature_cache
        self.steps: Steps | None = None  # the step machinery of the current fit (see `on_fit_start`)
        # a resumed run's choice of the CPU's prepacked backbone (see `Steps.frozen_backbone`)
        self.prepack: bool | None = None
        self.automatic_optimization = False  # `Steps` runs backward, Adam and the head clamp

    @property
    def needs_train_images(self) -> bool:
        """Whether training batches must carry images (not with the feature cache: indices suffice)."""
        return not self.feature_cache

    @property
    def gathers_images(self) -> bool:
        """Index-only batches stay index-only: the step gathers images from the device store itself."""
        return True

    @property
    def train_batch_multiple(self) -> int:
        """Minibatches per training batch: the feature cache and the captured step take several per call.

        The epoch still visits every triplet once, in minibatches of the configured size, in the
        same order; `log_every_n_steps` and the logged step count optimizer steps, as on the plain
        path (a batch logs when it crosses a multiple). Where the run counts batches itself (an
        integer `limit_train_batches` or `val_check_interval`, checkpoints every N steps) a batch
        stays one optimizer step.
        """
        if self.steps is not None:
            return self.steps.per_call
        return CACHE_STEPS_PER_CALL if self.feature_cache else 1

    # --- set-up ---------------------------------------------------------------------------
    def check_data(self, datamodule) -> None:
        """Refuse, in one line, images that are too small for the backbone (before anything runs)."""
        sizes = datamodule.image_sizes() if hasattr(datamodule, "image_sizes") else {}
        for group, (height, width) in sizes.items():
            self.lpips.check_size(height, width, f"{datamodule.file}: group {group}")

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None:
            self.check_data(datamodule)
        for name in ("val", "test"):
            groups = datamodule.groups(name) if datamodule is not None and hasattr(datamodule, "groups") else []
            self.groups[name] = list(groups)
            self.metrics[name] = nn.ModuleList(
                TwoAFCScore() if judgments.kind_of(g) == "2afc" else JNDAveragePrecision() for g in groups
            )

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load weights; a checkpoint whose keys or shapes do not fit is refused in one line naming them."""
        if strict:
            from .weights import check_fits

            source = getattr(self._trainer, "ckpt_path", None) if self._trainer is not None else None
            check_fits(self.state_dict(), state_dict, str(source or "the checkpoint"))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def configure_model(self) -> None:
        # before the strategy moves and wraps the model (DDP's buckets follow the layout). The
        # backbone only: the heads' gradients come from a product with their flattened weights, laid
        # out as the contiguous weights are (else DDP warns "Grad strides do not match bucket view strides")
        if self.hparams.channels_last:
            self.lpips.net.to(memory_format=torch.channels_last)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the resolved backbone spec (default taps filled in): a checkpoint rebuilds the same network
        checkpoint[CHECKPOINT_BACKBONE_KEY] = self.lpips.backbone_spec
        prepack = self.steps.prepack if self.steps is not None else self.prepack
        if prepack is not None:  # resuming takes the same backbone copy: the run continues exactly
            checkpoint[PREPACK_KEY] = prepack

    def on_fit_start(self) -> None:
        self.steps = Steps(self)
        self.steps.start()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.prepack = checkpoint.get(PREPACK_KEY)
        # Checkpoints written before training moved to manual optimisation count their optimizer
        # steps under automatic optimisation; a resumed run reads them from the manual counter.
        loops = checkpoint.get("loops", {}).get("fit_loop", {})
        manual = loops.get("epoch_loop.manual_optimization.optim_step_progress")
        automatic = loops.get("epoch_loop.automatic_optimization.optim_progress", {}).get("optimizer", {}).get("step")
        if manual and automatic and manual["total"]["completed"] == 0 and automatic["total"]["completed"] > 0:
            loops["epoch_loop.manual_optimization.optim_step_progress"] = {
                "total": dict(automatic["total"]),
                "current": dict(automatic["current"]),
            }

    def on_train_start(self) -> None:
        self.steps.begin_training()  # after a resumed run's step count is restored
        if self.feature_cache and self.steps.cache is None:
            self.steps.build_cache()

    def on_fit_end(self) -> None:
        self.steps.release()  # graphs, the feature cache and the bf16 copy: not kept on the device after fit

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        # fused: one kernel for every parameter (CPU and CUDA), the step count kept on the device
        optimizer = torch.optim.Adam(params, lr=self.hparams.lr, betas=tuple(self.hparams.betas), fused=True)
        c, d = self.hparams.epochs_constant, self.hparams.epochs_decay
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, c, d))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # --- the computation ------------------------------------------------------------------
    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's taps of images `x` (uint8 or [-1, 1]); no autograd in lin.

        The layout is converted first (on uint8 images the cheapest copy; the scaling keeps it).
        During fit a frozen backbone runs as the step's fast copy (`Steps.frozen_backbone`: bf16
        under bf16-mixed, oneDNN-prepacked in float32 on the CPU), for validation as for training.
        """
        layout = torch.channels_last if self.hparams.channels_last else torch.contiguous_format
        x = self.lpips.prepare(x.contiguous(memory_format=layout))
        net = self.lpips.net
        if self.steps is not None and self._trainer is not None and self.trainer.state.fn == "fit":
            net, x = self.steps.frozen_backbone(x)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.variant != "lin"):
            return net(x)

    def features(self, *images: torch.Tensor) -> list[list[torch.Tensor]]:
        """Tap features of each batch of `images`: one backbone pass (`taps`) over all of them."""
        n = images[0].shape[0]
        x = torch.cat(images)
        self.lpips.check_size(*x.shape[-2:])
        feats = self.taps(x)
        return [[f[k * n : (k + 1) * n] for f in feats] for k in range(len(images))]

    def triplet_distances(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """d(ref, p0) and d(ref, p1), each image through the backbone once."""
        ref, p0, p1 = self.features(batch["ref"], batch["p0"], batch["p1"])
        return self.lpips.distance(ref, p0), self.lpips.distance(ref, p1)

    def pair_distance(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """d(p0, p1) for a JND batch."""
        p0, p1 = self.features(batch["p0"], batch["p1"])
        return self.lpips.distance(p0, p1)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return self.lpips(x0, x1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if batch_idx == 0:
            # Each epoch's dropout depends on (seed, epoch) only (and its order, see the data
            # module's sampler), so a resumed run ends with the same weights as an uninterrupted one.
            torch.manual_seed(epoch_seed(self.current_epoch))
        before = self.global_step
        self.steps.run(batch)
        # training values are read back only when logged (or at most every CHECK_EVERY steps: the NaN watch)
        logs = self.steps.logs(before)
        if logs or self.steps.tally.due():
            self.steps.check()
        if logs:
            self.log("train/loss", self.steps.tally.loss_mean(), prog_bar=True, batch_size=len(batch["judge"]))

    def on_train_epoch_end(self) -> None:
        self.steps.check(weights=True)  # before the epoch's checkpoint: never save weights after a NaN step
        steps, train_2afc = self.steps.tally.end_epoch()
        if not steps:  # a resumed run replaying the end of an epoch it had finished: nothing to log or step
            return
        # under DDP a mean of equal-sized shards, one per process
        self.log("train/2afc", train_2afc, sync_dist=self.trainer.world_size > 1)
        # manual optimisation: the schedule is stepped here, once per finished epoch (not for one cut short)
        loop = self.trainer.fit_loop.epoch_loop
        if getattr(loop, "_num_ready_batches_reached", lambda: True)():
            self.lr_schedulers().step()

    def on_validation_start(self) -> None:
        if self.steps is not None and self.trainer.state.fn == "fit":
            self.steps.check(weights=True)  # validation may save a checkpoint: not after a NaN step

    def _eval_step(self, stage: str, batch: dict[str, torch.Tensor], dataloader_idx: int) -> None:
        metric = self.metrics[stage][dataloader_idx]
        if "ref" in batch:
            d0, d1 = self.triplet_distances(batch)
            metric.update(d0, d1, batch["judge"])
        else:
            metric.update(self.pair_distance(batch), batch["same"])

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("test", batch, dataloader_idx)

    def _eval_epoch_end(self, stage: str) -> None:
        names = subset_names(self.groups[stage])
        values: dict[str, list[float]] = {"2afc": [], "jnd_map": []}
        scores: dict[str, float] = {}
        for group, name, metric in zip(self.groups[stage], names, self.metrics[stage]):
            if metric.update_count == 0:  # e.g. a sanity check that did not reach this loader
                continue
            key = "2afc" if judgments.kind_of(group) == "2afc" else "jnd_map"
            value = metric.compute().float()
            metric.reset()
            scores[f"{stage}/{key}/{name}"] = float(value)
            values[key].append(float(value))
            self.log(f"{stage}/{key}/{name}", value, add_dataloader_idx=False)
        for key, vals in values.items():
            if vals:
                mean = sum(vals) / len(vals)
                scores[f"{stage}/{key}/mean"] = mean
                self.log(f"{stage}/{key}/mean", mean, add_dataloader_idx=False, prog_bar=key == "2afc")
        self.scores[stage] = scores

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")


def subset_names(groups: list[str]) -> list[str]:
    """Short names for logging: the group's last part (``cnn``), or split_subset where those repeat."""
    last = [g.rsplit("/", 1)[-1] for g in groups]
    kinds = [judgments.kind_of(g) for g in groups]
    pairs = list(zip(kinds, last))
    return [n if pairs.count((k, n)) == 1 else "_".join(g.split("/")[1:]) for g, k, n in zip(groups, kinds, last)]
