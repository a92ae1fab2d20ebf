"""What a training command line is refused for before anything is built: its config files, GPUs, precision.

Each check raises `ConfigError` with one line naming the option to change; `cli.training` runs
them right after parsing, before a run folder is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from ..errors import ConfigError

# Lightning's precisions that the model does not run in (its step mixes float64 features with float32 heads)
UNSUPPORTED_PRECISIONS = ("64", "64-true", "double")


def check_accelerator(trainer_config, config_files: Sequence[str]) -> None:
    """Refuse in one line a GPU run on a machine without enough GPUs, naming the overlay that asked for it."""
    accelerator = str(trainer_config.get("accelerator") or "auto").lower()
    if accelerator not in ("gpu", "cuda"):
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    devices = trainer_config.get("devices", "auto")
    wanted = devices if isinstance(devices, int) and devices > 0 else len(devices) if isinstance(devices, list) else 1
    if count >= wanted:
        return

    def asks_for_gpu(path: str) -> bool:
        try:
            trainer = (yaml.safe_load(Path(path).read_text()) or {}).get("trainer") or {}
        except (OSError, yaml.YAMLError, AttributeError):
            return False
        return str(trainer.get("accelerator", "")).lower() in ("gpu", "cuda")

    source = next((f for f in reversed(config_files) if asks_for_gpu(f)), None)
    where = f"--config {source}" if source else "--trainer.accelerator"
    found = "no CUDA GPU was found" if count == 0 else f"only {count} GPU(s) were found"
    raise ConfigError(
        f"{where} asks for GPUs (trainer.accelerator {accelerator}, devices {devices}), but {found} on this machine; "
        f"drop {where if source else 'that option'} or pass --trainer.accelerator cpu"
    )


def check_precision(trainer_config) -> None:
    """Refuse in one line a precision the model does not run in, before a run folder is made."""
    precision = str(trainer_config.get("precision") or "32-true")
    if precision in UNSUPPORTED_PRECISIONS:
        raise ConfigError(
            f"--trainer.precision {precision}: double precision is not supported; "
            "use 32-true (the default), bf16-mixed or 16-mixed"
        )


def check_config_files(argv: Sequence[str]) -> None:
    """A --config that is not a readable text file: one line (jsonargparse would print a traceback)."""
    for flag, value in zip(argv, argv[1:]):
        if flag in ("--config", "-c"):
            try:
                Path(value).read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise ConfigError(f"--config {value}: not a YAML file (binary content)") from None
            except IsADirectoryError:
                raise ConfigError(f"--config {value}: is a folder, not a YAML file") from None
            except OSError:
                pass  # jsonargparse says that a file is missing in one line
