"""The paper's recipe as LPIPSModule's options: their choices, the optimizer and its schedule, the refusals.

Every option is checked once, when the module is made (`check_options`), and the training
batches a data module serves are checked against the model and the trainer once, at fit
set-up (`check_batches`); each refusal is one line naming the option.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError, check_choice
from .cadence import counts_batches

VARIANTS = ("lin", "tune", "scratch")
CAPTURE = (True, False, "auto")
COMPILE = (True, False, "default", "reduce-overhead", "max-autotune")
DISTANCES = ("lpips", "embedding")


def lr_factor(epoch: int, epochs_constant: int, epochs_decay: int) -> float:
    """The original's schedule: full rate through epoch `epochs_constant` (0-based), then linear decay.

    With 5 + 5 epochs: epochs 0..5 at 1.0, then 0.8, 0.6, 0.4, 0.2 (the original's 7..10).

    >>> [round(lr_factor(e, 5, 5), 6) for e in range(10)]
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2]
    """
    if epoch <= epochs_constant or epochs_decay <= 0:
        return 1.0
    return max(0.0, 1.0 - (epoch - epochs_constant) / epochs_decay)


def adam_and_schedule(params: list, lr: float, betas: tuple[float, float], epochs_constant: int, epochs_decay: int):
    """The recipe's optimizer and schedule (`configure_optimizers`): Adam, then `lr_factor` once per epoch.

    Adam is fused: one kernel for every parameter (CPU and CUDA), the step count kept on the device.
    """
    optimizer = torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: lr_factor(epoch, epochs_constant, epochs_decay)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def check_options(options: dict) -> None:
    """Refuse, in one line each, LPIPSModule's `options` that contradict each other or are out of range."""
    variant, compile, lr, betas = options["variant"], options["compile"], options["lr"], options["betas"]
    margin, lora_rank, taps = options["margin"], options["lora_rank"], options["taps"]
    check_choice("variant", variant, VARIANTS)
    if variant == "scratch" and (options["pretrained"] or options["backbone_weights"]):
        raise ConfigError("variant 'scratch' trains a random backbone: drop backbone_weights and set pretrained=False")
    if options["feature_cache"] and variant != "lin":
        raise ConfigError(f"feature_cache needs a frozen backbone: variant 'lin', not {variant!r}")
    if compile not in COMPILE:
        raise ConfigError(
            f"unknown compile {compile!r}; choose one of: false, true, default, reduce-overhead, max-autotune"
        )
    check_choice("capture", options["capture"], CAPTURE)
    if not lr > 0 or lr == float("inf"):  # NaN fails the first test
        raise ConfigError(f"lr must be a positive number, got {lr}")
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ConfigError(f"betas must be two numbers in [0, 1) (Adam's), got {list(betas)}")
    for name in ("epochs_constant", "epochs_decay"):
        if options[name] < 0:
            raise ConfigError(f"{name} must be 0 or more epochs, got {options[name]}")
    if not margin >= 0:
        raise ConfigError(f"margin must be 0 or more, got {margin}")
    if lora_rank < 0:
        raise ConfigError(f"lora_rank must be 0 (off) or a positive rank, got {lora_rank}")
    if taps is not None and len(taps) == 0:
        raise ConfigError("taps is empty: name at least one tap, or leave taps out for the family's default")
    if lora_rank and variant != "tune":
        raise ConfigError(f"lora_rank adapts a backbone that is tuned: variant 'tune', not {variant!r}")
    check_distance(options)


def check_distance(options: dict) -> None:
    """Refuse, in one line each, options that do not fit the `distance` (``lpips`` or ``embedding``)."""
    distance, variant, head = options.get("distance", "lpips"), options["variant"], options.get("head")
    check_choice("distance", distance, DISTANCES)
    if distance == "lpips":
        for name in ("features", "head"):
            if options.get(name) is not None:
                raise ConfigError(f"{name} applies to distance: embedding (global embeddings); drop it for lpips")
        for name in ("backbone", "backbone_weights"):
            if isinstance(options.get(name), (list, tuple)):
                raise ConfigError(f"{name}: a list (an ensemble) needs distance: embedding; lpips takes one backbone")
        return
    if options["feature_cache"]:
        raise ConfigError("feature_cache caches LPIPS's channel means: distance: embedding trains without it")
    if options["taps"] is not None:
        raise ConfigError("taps apply to distance: lpips; an embedding metric reads the whole model (features)")
    if variant == "lin" and head is None:
        raise ConfigError(
            "variant 'lin' with distance: embedding trains a head over frozen backbones: set head: mlp "
            "(or variant: tune with lora_rank)"
        )
    if variant == "tune" and head is not None and not options["lora_rank"]:
        raise ConfigError(
            f"head: {head} with variant 'tune' and no lora_rank: tune the backbones with lora_rank "
            "(DreamSim's LoRA mode) or train the head over frozen ones with variant: lin"
        )


def check_batches(feature_cache: bool, datamodule, trainer) -> None:
    """Refuse, in one line, training batches that do not fit the model (`feature_cache`) or the trainer."""
    index_only, steps = getattr(datamodule, "index_only", False), getattr(datamodule, "steps_per_batch", 1)
    if index_only != feature_cache:
        raise ConfigError(
            f"data.index_only {str(index_only).lower()} with model.feature_cache {str(feature_cache).lower()}: "
            "index-only batches serve the feature cache; set both alike"
        )
    if steps > 1 and counts_batches(trainer):
        raise ConfigError(
            f"data.steps_per_batch {steps}: the trainer counts batches (an integer limit_train_batches or "
            "val_check_interval, fast_dev_run, checkpoints every N steps), so a batch must be one step; set it 1"
        )
