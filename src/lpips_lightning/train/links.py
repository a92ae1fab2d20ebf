"""What a data module must know of the model it feeds, computed from the parsed options.

``lpips-lightning fit`` links ``data.index_only`` and ``data.steps_per_batch`` to these functions
of the model's and the trainer's options (``parser.link_arguments``, when the command line is
parsed): the decision flows one way and the data module never asks the model. jsonargparse
leaves link targets out of ``--print_config``; the run's ``hparams.yaml`` records them. A data
module built by hand takes them as arguments (``JudgmentsDataModule(index_only=...)``), and a
pair that does not fit is refused in one line at fit set-up (`recipe.check_batches`).
"""

from __future__ import annotations

import torch

from .steps import CACHE_STEPS_PER_CALL, CAPTURED_STEPS_PER_CALL, capture_refusal


def index_only(feature_cache: bool) -> bool:
    """Training batches without images: the feature cache trains on indices into its pair vectors."""
    return bool(feature_cache)


def _whole_count(value) -> bool:
    """Whether a batch limit counts batches (Lightning's rule: an int, or a whole float above 1), not a fraction."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or (value > 1 and value % 1 == 0)


def counts_batches(trainer) -> bool:
    """Whether the trainer's options count training batches (see `cadence.counts_batches`, its run-time twin)."""
    if trainer.get("fast_dev_run") or _whole_count(trainer.get("val_check_interval")):
        return True
    overfit = trainer.get("overfit_batches") or 0
    if _whole_count(overfit if overfit else trainer.get("limit_train_batches")):
        return True
    callbacks = trainer.get("callbacks") or []
    for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
        args = callback.get("init_args") if hasattr(callback, "get") else None
        if args is not None and args.get("every_n_train_steps"):
            return True
    return False


def _processes(accelerator, devices, num_nodes) -> int | None:
    """Processes a CUDA run takes (None: the run is not on CUDA)."""
    cuda = str(accelerator).lower() in ("gpu", "cuda") or (accelerator in (None, "auto") and torch.cuda.is_available())
    if not cuda:
        return None
    if isinstance(devices, str):
        devices = devices.strip()
        devices = -1 if devices in ("auto", "-1") else [d for d in devices.split(",") if d.strip()]
        devices = int(devices[0]) if isinstance(devices, list) and len(devices) == 1 else devices
    if isinstance(devices, (list, tuple)):
        count = len(devices)
    else:
        count = torch.cuda.device_count() if devices in (-1, None) else int(devices)
    return count * int(num_nodes or 1)


def steps_per_batch(feature_cache: bool, capture: bool | str, trainer) -> int:
    """Minibatches per training batch: 64 with the feature cache, 8 where the step is captured, else 1.

    Captured: on CUDA in one process, not in 16-mixed (see `steps.takes_capture`). One where the
    trainer counts batches itself (an integer ``limit_train_batches`` or ``val_check_interval``,
    ``fast_dev_run``, checkpoints every N training steps): a batch must stay one optimizer step.
    """
    if counts_batches(trainer):
        return 1
    if feature_cache:
        return CACHE_STEPS_PER_CALL
    if capture not in (True, "auto"):
        return 1
    processes = _processes(trainer.get("accelerator"), trainer.get("devices"), trainer.get("num_nodes"))
    if processes is None or capture_refusal(processes, str(trainer.get("precision"))):
        return 1
    return CAPTURED_STEPS_PER_CALL
