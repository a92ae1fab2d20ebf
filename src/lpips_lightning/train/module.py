"""LPIPSModule: what is trained (an LPIPS metric on 2AFC judgments, the paper's recipe) and how it is scored.

How a training step runs (eager, compiled, captured, cached) is `steps.Steps`; the module
makes one at each fit's start from what the steps use, and reads their values from a `Tally`.
"""

from __future__ import annotations

import functools

import torch
from pytorch_lightning import LightningModule
from torch import nn

from ..backbones.fast import BackbonePass, FrozenCopy
from ..data.dataset import epoch_seed
from ..model.backbone_file import BACKBONE_WEIGHTS_KEY, drop_backbone, fill_backbone, weights_record
from ..model.checkpoint import CHECKPOINT_BACKBONE_KEY
from ..model.embedding import EmbeddingDistance
from ..model.heads import make_head
from ..model.lpips import LPIPS
from ..weights import check_fits
from .cadence import Cadence, attached_trainer, epoch_finished, manual_step_counts, set_hparam
from .recipe import adam_and_schedule, check_batches, check_options
from .scoring import SubsetScores, mos_directions
from .steps import Steps, takes_capture
from .tally import Tally

PREPACK_KEY = "lpips_lightning_prepacked"  # in checkpoints: whether the run's CPU backbone was the prepacked copy


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
            ``torchvision:<model>``, ``timm:<model>`` (e.g. ``timm:vit_small_patch14_dinov2``), or
            ``{class_path: ..., init_args: {...}}``: any module returning a list of (N, C, H, W) feature
            maps. In Python also an `nn.Module` instance (checkpoints rebuild it by its class path).
        taps: which feature maps of a ``torchvision:`` (node names, e.g. ``[layer1, layer2]``) or
            ``timm:`` backbone (stage or block indices); default: the family's stage outputs.
        backbone_args: keyword arguments of the ``torchvision:``/``timm:`` model's constructor.
        version: LPIPS version, ``"0.1"`` (input normalisation) or ``"0.0"`` (classic backbones only).
        pretrained: start from pretrained weights (default: yes for lin/tune, no for scratch).
            ``lin`` with ``pretrained: false`` trains heads over a random backbone.
        backbone_weights: a state dict file of the backbone network to start from (offline machines).
        lora_rank: ``tune`` only: train low-rank adapters of this rank on the attention projections
            (qkv, proj) instead of the whole backbone, for large ViTs (0: off).
        loss: ``bce_rank`` (the paper's ranking head) or ``hinge`` (with `margin`).
        margin: the hinge loss margin.
        lr: Adam learning rate.
        betas: Adam betas.
        epochs_constant: epochs at the full rate (the schedule adds one, as the original does).
        epochs_decay: epochs of linear decay after that.
        dropout: dropout (p=0.5) before each head while training.
        feature_cache: ``lin`` only. The distance is linear in the head weights, so one pass of the
            frozen backbone over the training set turns each pair into a vector of channel means
            (1,152 numbers for alex) and every epoch after it is small matrix products: the same
            distances and gradients as the full path (dropout, when on, drops channel means of a pair
            instead of each pixel's difference). Validation runs the full path. Batches carry indices
            only (``data.index_only``, which ``fit`` sets).
        channels_last: run the backbone in channels-last memory format (faster convolutions on GPU and CPU).
        compile: ``torch.compile`` the training computation: ``false``, ``true`` (default mode),
            ``reduce-overhead`` or ``max-autotune`` (with `capture`, the captured step's graph instead).
        capture: record each batch's steps (forward, backward, Adam and the head clamp of
            ``data.steps_per_batch`` minibatches: 8, as ``fit`` sets it) as one CUDA graph and replay it:
            ``auto`` (default: on CUDA, one process, precision 32 or bf16), ``true`` or ``false``. Where
            it cannot apply (DDP, 16-mixed) the run says so in one line and takes the eager step.
        distance: ``lpips`` (feature maps, linear heads) or ``embedding`` (DreamSim-style: 1 - cosine
            similarity of global embeddings, `model.embedding.EmbeddingDistance`). With ``embedding``,
            `backbone` may be a list (an ensemble of ``timm:``/``torchvision:`` models), `backbone_weights`
            one file per backbone; ``lin`` trains the `head` over frozen backbones, ``tune`` with
            `lora_rank` is DreamSim's LoRA mode.
        features: ``embedding`` only: ``cls``, ``pool`` or ``cls_pool`` (default ``cls``), one or one per backbone.
        head: ``embedding`` only: ``mlp`` (DreamSim's MLP head over the concatenated embedding) or none.
    """

    def __init__(
        self,
        variant: str = "lin",
        backbone: str | dict | list[str | dict] = "alex",
        taps: list[str | int] | None = None,
        backbone_args: dict | None = None,
        version: str = "0.1",
        pretrained: bool | None = None,
        backbone_weights: str | list[str] | None = None,
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
        distance: str = "lpips",
        features: str | list[str] | None = None,
        head: str | None = None,
    ) -> None:
        super().__init__()
        if pretrained is None:
            pretrained = variant != "scratch"
        instance = isinstance(backbone, nn.Module)
        # hyperparameters hold plain values only (checkpoints load with weights_only=True): a module
        # given as an instance is recorded by its class path
        self.save_hyperparameters(ignore=["backbone"] if instance else None)
        check_options({**self.hparams, "pretrained": pretrained})
        self.variant = variant
        if distance == "embedding":
            self.lpips = EmbeddingDistance(
                backbone, features or "cls", pretrained=pretrained, backbone_weights=backbone_weights, head=head,
                lora_rank=lora_rank, tune_backbone=variant != "lin", backbone_args=backbone_args,
            ).train()  # fmt: skip
        else:
            self.lpips = LPIPS(
                backbone, version, pretrained=pretrained, heads="random", dropout=dropout,
                tune_backbone=variant != "lin", backbone_weights=backbone_weights, taps=taps,
                backbone_args=backbone_args, lora_rank=lora_rank,
            ).train()  # fmt: skip
        if instance:
            set_hparam(self, "backbone", self.lpips.backbone_spec)
        self.rank_head = make_head(loss, margin)
        self.subsets = SubsetScores()
        self.scores: dict[str, dict[str, float]] = {}
        self.feature_cache = feature_cache
        self.backbone_pass = BackbonePass(self.lpips.net, self.lpips.prepare, channels_last, frozen=variant == "lin")
        # made at each fit's start (`on_fit_start`), and kept after it for a look at what the fit did
        self.steps: Steps | None = None
        self.frozen: FrozenCopy | None = None  # the frozen backbone's fast copy (lin without LoRA)
        self.cadence: Cadence | None = None
        self.tally: Tally | None = None
        self.prepack: bool | None = None  # a resumed run's choice of the CPU's prepacked backbone copy
        self.automatic_optimization = False  # `Steps` runs backward, Adam and the head clamp

    def check_data(self, datamodule) -> None:
        """Refuse, in one line, images that are too small for the backbone (before anything runs)."""
        sizes = datamodule.image_sizes() if hasattr(datamodule, "image_sizes") else {}
        for group, (height, width) in sizes.items():
            self.lpips.check_size(height, width, f"{datamodule.file}: group {group}")

    def setup(self, stage: str) -> None:
        trainer = attached_trainer(self)
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None:
            self.check_data(datamodule)
            if stage == "fit":
                check_batches(self.feature_cache, datamodule, trainer)
        for name in ("val", "test"):
            groups = datamodule.groups(name) if datamodule is not None and hasattr(datamodule, "groups") else []
            self.subsets.set_groups(name, groups, mos_directions(datamodule, groups))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load weights; a checkpoint whose keys or shapes do not fit is refused in one line naming them."""
        if strict:
            source = getattr(attached_trainer(self), "ckpt_path", None)
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
        prepack = self.frozen.prepack if self.frozen is not None else self.prepack
        if prepack is not None:  # resuming takes the same backbone copy: the run continues exactly
            checkpoint[PREPACK_KEY] = prepack
        record = weights_record(self.variant, self.lpips, self.hparams)
        if record is not None:  # lin: the frozen backbone named by its weights file, not stored
            checkpoint[BACKBONE_WEIGHTS_KEY] = record
            drop_backbone(checkpoint["state_dict"])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.prepack = checkpoint.get(PREPACK_KEY)
        manual_step_counts(checkpoint)
        record = checkpoint.get(BACKBONE_WEIGHTS_KEY)
        if isinstance(record, dict) and isinstance(checkpoint.get("state_dict"), dict):
            source = str(getattr(attached_trainer(self), "ckpt_path", None) or "the checkpoint")
            own = weights_record(self.variant, self.lpips, self.hparams)  # this module's backbone file
            fill_backbone(checkpoint["state_dict"], self.state_dict(), record, own, source)

    def on_fit_start(self) -> None:
        trainer, data = self.trainer, self.trainer.datamodule
        capture = takes_capture(self.hparams.capture, self.device, trainer.world_size, str(trainer.precision))
        compiled = bool(self.hparams.compile) and not self.feature_cache
        frozen = self.variant == "lin" and not self.lpips.net.lora_rank
        self.frozen = FrozenCopy(self.lpips.net, self.prepack, compiled) if frozen else None
        per_call = getattr(data, "steps_per_batch", 1)
        self.steps = Steps(
            lpips=self.lpips,
            rank_head=self.rank_head,
            taps=functools.partial(self.backbone_pass, fast=self.frozen),
            optimizer=self.optimizers(),
            backward=functools.partial(trainer.strategy.backward, optimizer=None),
            images=getattr(data, "gather_images", None),
            per_call=per_call,
            size=getattr(data, "batch_size", None),
            capture=capture,
            compile=self.hparams.compile,
            cache_from=data.datasets["train"][0] if self.feature_cache else None,
            device=self.device,
            forward_context=trainer.precision_plugin.forward_context,
        )
        self.cadence = Cadence(trainer, per_call)
        self.tally = None  # made at train start

    def on_train_start(self) -> None:
        self.tally = Tally(self.global_step)  # after a resumed run's step count is restored
        if self.feature_cache and self.steps.cache is None:
            self.steps.build_cache()

    def on_fit_end(self) -> None:
        for part in (self.steps, self.cadence, self.frozen):  # graphs, cache, copies, the logging switch: let go
            if part is not None:
                part.release()

    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        return adam_and_schedule(params, hp.lr, tuple(hp.betas), hp.epochs_constant, hp.epochs_decay)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's taps of images `x` (uint8 or [-1, 1]); during fit a frozen one runs as `FrozenCopy`."""
        trainer = attached_trainer(self)
        fitting = trainer is not None and trainer.state.fn == "fit"
        return self.backbone_pass(x, fast=self.frozen if fitting else None)

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

    def check_values(self, weights: bool = False) -> None:
        """Read the training values back and stop at a NaN (`Tally.check`); with `weights`, check those too."""
        if self.tally is None:  # before training started (a sanity check)
            return
        trained = [p.detach() for p in self.parameters() if p.requires_grad] if weights else None
        self.tally.check(self.current_epoch, trained, self.global_step)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if batch_idx == 0:
            # Each epoch's dropout depends on (seed, epoch) only (and its order, see the data
            # module's sampler), so a resumed run ends with the same weights as an uninterrupted one.
            torch.manual_seed(epoch_seed(self.current_epoch))
        before, max_steps = self.global_step, self.trainer.max_steps
        self.tally.add(*self.steps.run(batch, max_steps - before if max_steps >= 0 else None))
        # training values are read back only when logged (or at most every CHECK_EVERY steps: the NaN watch)
        logs = self.cadence.logs(before, self.global_step)
        if logs or self.tally.due():
            self.check_values()
        if logs:
            self.log("train/loss", self.tally.loss_mean(), prog_bar=True, batch_size=len(batch["judge"]))

    def on_train_epoch_end(self) -> None:
        self.check_values(weights=True)  # before the epoch's checkpoint: never save weights after a NaN step
        steps, train_2afc = self.tally.end_epoch()
        if not steps:  # a resumed run replaying the end of an epoch it had finished: nothing to log or step
            return
        # under DDP a mean of equal-sized shards, one per process
        self.log("train/2afc", train_2afc, sync_dist=self.trainer.world_size > 1)
        # manual optimisation: the schedule is stepped here, once per finished epoch (not for one cut short)
        if epoch_finished(self.trainer):
            self.lr_schedulers().step()

    def on_validation_start(self) -> None:
        if self.trainer.state.fn == "fit":
            self.check_values(weights=True)  # validation may save a checkpoint: not after a NaN step

    def _eval_step(self, stage: str, batch: dict[str, torch.Tensor], dataloader_idx: int) -> None:
        if "dist" in batch:  # a MOS group: d(ref, dist) against the opinion scores
            ref, dist = self.features(batch["ref"], batch["dist"])
            self.subsets.update(stage, dataloader_idx, (self.lpips.distance(ref, dist),), batch["mos"])
        elif "ref" in batch:
            self.subsets.update(stage, dataloader_idx, self.triplet_distances(batch), batch["judge"])
        else:
            self.subsets.update(stage, dataloader_idx, (self.pair_distance(batch),), batch["same"])

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("test", batch, dataloader_idx)

    def _eval_epoch_end(self, stage: str) -> None:
        values, means = self.subsets.compute(stage)
        for key, value in values.items():
            self.log(key, value, add_dataloader_idx=False)
        for key, mean in means.items():
            self.log(key, mean, add_dataloader_idx=False, prog_bar=key == f"{stage}/2afc/mean")
        self.scores[stage] = {**{k: float(v) for k, v in values.items()}, **means}

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
