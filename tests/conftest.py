"""Shared fixtures: an offline "ImageNet" cache of random weights, W&B forced offline, tiny data."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="lpips-lightning-tests-"))
# Never reach a hub, never ask for a W&B login: everything lives in a temporary folder.
os.environ["TORCH_HOME"] = str(_SESSION_TMP / "torch")
os.environ["WANDB_MODE"] = "offline"
for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
    os.environ[var] = str(_SESSION_TMP / "wandb")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ["LPIPS_LIGHTNING_CACHE"] = str(_SESSION_TMP / "cache")


def write_fake_imagenet(torch_home: Path, names=("alex", "vgg", "squeeze"), seed: int = 0) -> None:
    """Save randomly initialised torchvision state dicts under the file names the weights API expects."""
    from lpips_lightning.backbones import BACKBONES

    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        entry = BACKBONES[name]
        target = folder / os.path.basename(entry.weights.url)
        if not target.exists():
            torch.manual_seed(seed)
            torch.save(entry.constructor(weights=None).state_dict(), target)


@pytest.fixture(scope="session")
def imagenet_cache() -> Path:
    """A TORCH_HOME whose hub cache holds random "ImageNet" weights for every backbone."""
    home = Path(os.environ["TORCH_HOME"])
    write_fake_imagenet(home)
    return home


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    return _SESSION_TMP
