"""LPIPSModule: train an LPIPS metric on 2AFC judgments with the paper's recipe."""

from __future__ import annotations

import torch
from pytorch_lightning import LightningModule
from torch import nn

from . import judgments
from .datamodules.judgments_datamodule import epoch_seed
from .errors import ConfigError, TrainingError, check_choice
from .heads import make_head
from .lpips import LPIPS, dropout_half, normalize_tensor, to_unit_range
from .metrics import JNDAveragePrecision, TwoAFCScore
from .weights import CHECKPOINT_BACKBONE_KEY

VARIANTS = ("lin", "tune", "scratch")
CACHE_STEPS_PER_CALL = 64


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
            ``reduce-overhead`` (CUDA graphs: small batches stop being launch-bound) or ``max-autotune``.
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
        if lr <= 0:
            raise ConfigError(f"lr must be positive, got {lr}")
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
        self.train_2afc = TwoAFCScore()
        self.metrics = nn.ModuleDict({"val": nn.ModuleList(), "test": nn.ModuleList()})
        self.groups: dict[str, list[str]] = {"val": [], "test": []}
        self.scores: dict[str, dict[str, float]] = {}
        self._first_bad_step: torch.Tensor | None = None
        self.feature_cache = feature_cache
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self._compiled = None
        self.automatic_optimization = not feature_cache

    @property
    def needs_train_images(self) -> bool:
        """Whether training batches must carry images (not with the feature cache: indices suffice)."""
        return not self.feature_cache

    @property
    def train_batch_multiple(self) -> int:
        """Minibatches per training batch: the feature cache takes many per `training_step` call."""
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
        # heads too: a 1x1 head over channels-last features gets channels-last gradient strides,
        # and DDP warns ("Grad strides do not match bucket view strides") when the weight's differ
        if self.hparams.channels_last:
            self.lpips.to(memory_format=torch.channels_last)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the resolved backbone spec (default taps filled in): a checkpoint rebuilds the same network
        checkpoint[CHECKPOINT_BACKBONE_KEY] = self.lpips.backbone_spec

    def on_fit_start(self) -> None:
        if self.hparams.compile and not self.feature_cache:
            mode = None if self.hparams.compile in (True, "default") else self.hparams.compile
            self._compiled = torch.compile(self._train_loss, mode=mode)

    def on_train_start(self) -> None:
        if self.feature_cache and self._cache is None:
            self._cache = self._build_cache()

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        fused = self.device.type == "cuda" or None
        optimizer = torch.optim.Adam(params, lr=self.hparams.lr, betas=tuple(self.hparams.betas), fused=fused)
        c, d = self.hparams.epochs_constant, self.hparams.epochs_decay
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, c, d))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def optimizer_step(self, *args, **kwargs) -> None:  # automatic optimisation only
        super().optimizer_step(*args, **kwargs)
        self.lpips.clamp_heads()

    # --- the computation ------------------------------------------------------------------
    def triplet_features(self, batch: dict[str, torch.Tensor]) -> tuple[list, list, list]:
        """Tap features of ref, p0 and p1: one backbone pass over the three (no autograd in lin)."""
        n = batch["ref"].shape[0]
        x = to_unit_range(torch.cat([batch["ref"], batch["p0"], batch["p1"]]))
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.variant != "lin"):
            feats = self.lpips.features(x)
        return [f[:n] for f in feats], [f[n : 2 * n] for f in feats], [f[2 * n :] for f in feats]

    def triplet_distances(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """d(ref, p0) and d(ref, p1), each image through the backbone once."""
        ref, p0, p1 = self.triplet_features(batch)
        return self.lpips.distance(ref, p0), self.lpips.distance(ref, p1)

    def _train_loss(self, ref, p0, p1, judge) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d0, d1 = self.triplet_distances({"ref": ref, "p0": p0, "p1": p1})
        return self.rank_head(d0, d1, judge), d0, d1

    # --- the feature cache (lin) ----------------------------------------------------------
    def pair_vectors(self, f0: list[torch.Tensor], f1: list[torch.Tensor]) -> torch.Tensor:
        """Per pair, every tap's channel means of the squared normalised difference: (N, sum of channels)."""
        return torch.cat(
            [((normalize_tensor(a) - normalize_tensor(b)) ** 2).mean(dim=(2, 3)) for a, b in zip(f0, f1)], 1
        )

    def head_vector(self) -> torch.Tensor:
        """All head weights as one vector, in `pair_vectors` order."""
        return torch.cat([h.weight.flatten() for h in self.lpips.heads])

    def cached_distances(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """d(ref, p0) and d(ref, p1) of training items `index` from the cache: vectors @ head weights."""
        assert self._cache is not None
        v0, v1 = self._cache[0][index], self._cache[1][index]
        if self.lpips.dropout and self.training:
            v0, v1 = dropout_half(v0), dropout_half(v1)
        w = self.head_vector()
        return v0 @ w, v1 @ w

    @torch.no_grad()
    def _build_cache(self, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass of the frozen backbone over the training set: (N, C) vectors for (ref, p0) and (ref, p1)."""
        dataset = self.trainer.datamodule.datasets["train"][0]
        v0, v1 = [], []
        with self.trainer.precision_plugin.forward_context():
            for start in range(0, len(dataset), chunk):
                images = dataset.read_images(range(start, min(start + chunk, len(dataset))))
                ref, p0, p1 = self.triplet_features({k: v.to(self.device) for k, v in images.items()})
                v0.append(self.pair_vectors(ref, p0).float())
                v1.append(self.pair_vectors(ref, p1).float())
        return torch.cat(v0), torch.cat(v1)

    def pair_distance(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """d(p0, p1) for a JND batch."""
        return self.lpips(to_unit_range(batch["p0"]), to_unit_range(batch["p1"]))

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return self.lpips(x0, x1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if batch_idx == 0:
            # Each epoch's dropout depends on (seed, epoch) only (and its order, see the data
            # module's sampler), so a resumed run ends with the same weights as an uninterrupted one.
            torch.manual_seed(epoch_seed(self.current_epoch))
        if self.feature_cache:
            return self._cached_steps(batch)
        if self._compiled is not None:
            loss, d0, d1 = (t.clone() for t in self._compiled(batch["ref"], batch["p0"], batch["p1"], batch["judge"]))
        else:
            loss, d0, d1 = self._train_loss(batch["ref"], batch["p0"], batch["p1"], batch["judge"])
        self._watch_loss(loss)
        self.train_2afc.update(d0, d1, batch["judge"])
        self._log_train(loss, len(d0))
        return loss

    def _log_train(self, loss: torch.Tensor, batch_size: int) -> None:
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/2afc", self.train_2afc, on_step=False, on_epoch=True, batch_size=batch_size)

    def _cached_steps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """`CACHE_STEPS_PER_CALL` optimizer steps of `batch_size` triplets each, on cached vectors.

        Lightning's per-step overhead (milliseconds) would dominate steps this small, so one
        call of `training_step` runs many minibatches (manual optimisation); the epoch still
        visits every triplet once, in minibatches of the configured size, in a random order.
        """
        optimizer = self.optimizers()
        size = self.trainer.datamodule.batch_size if self.trainer.datamodule is not None else len(batch["index"])
        losses = []
        for index, judge in zip(batch["index"].split(size), batch["judge"].split(size)):
            d0, d1 = self.cached_distances(index)
            loss = self.rank_head(d0, d1, judge)
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            optimizer.step()
            self.lpips.clamp_heads()
            self._watch_loss(loss)
            self.train_2afc.update(d0.detach(), d1.detach(), judge)
            losses.append(loss.detach())
        loss = torch.stack(losses).mean()
        self._log_train(loss, len(batch["index"]))
        return loss

    def on_train_epoch_end(self) -> None:
        if not self.automatic_optimization:  # the feature cache steps its own optimizer and schedule
            self.lr_schedulers().step()

    def _watch_loss(self, loss: torch.Tensor) -> None:
        """Stop on a NaN/inf loss, naming its step; on a GPU checked every 50 steps (no host sync)."""
        step = torch.tensor(self.global_step, device=loss.device)
        if self._first_bad_step is None or self._first_bad_step.device != loss.device:
            self._first_bad_step = torch.tensor(-1, device=loss.device)
        bad = ~torch.isfinite(loss.detach()) & (self._first_bad_step < 0)
        self._first_bad_step = torch.where(bad, step, self._first_bad_step)
        if loss.device.type == "cpu" or self.global_step % 50 == 0:
            first = int(self._first_bad_step)
            if first >= 0:
                raise TrainingError(
                    f"the training loss became NaN or infinite at step {first} (epoch {self.current_epoch}); "
                    "lower lr, check the data, or train in precision 32 or bf16-mixed"
                )

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
