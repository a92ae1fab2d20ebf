"""``lpips-lightning distance A B``: the LPIPS distance between two image files.

``--model`` takes any checkpoint or export (see `lpips_lightning.export.load`); without it,
the official v0.1 heads over an ImageNet backbone. Every model gets the images as uint8, so
every format of the same metric prints the same number.
"""

from __future__ import annotations

import argparse
from typing import Annotated

from ..errors import ConfigError, LPIPSLightningError, check_choice
from .parser import Arg

MAX_SIZE = 4096  # as pack's --size: larger images exhaust memory before they are compared


def pixels(text: str) -> int:
    """--resize N: a number of pixels from 1 to `MAX_SIZE` (a usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels, got {text!r}") from None
    if not 1 <= value <= MAX_SIZE:
        raise argparse.ArgumentTypeError(f"must be a number of pixels from 1 to {MAX_SIZE}, got {value}")
    return value


def _check_given(model: str | None, heads: str | None, backbone_weights: str | None) -> None:
    """The model file says what it is: an option that would describe another model is refused."""
    options = (("--heads", heads), ("--backbone-weights", backbone_weights))
    given = [flag for flag, value in options if value is not None]
    if model and given:
        raise ConfigError(
            f"{', '.join(given)} cannot be combined with --model {model} (the model file holds its own weights)"
        )


def _check_model(model, path: str, backbone: str | None, version: str | None) -> None:
    """Refuse --backbone / --version that contradict the model file."""
    if backbone is not None and backbone != model.backbone_name:
        raise ConfigError(
            f"--backbone {backbone} contradicts --model {path}, a metric over backbone "
            f"{model.backbone_name}; leave --backbone out"
        )
    found = getattr(model, "version", None)
    if version is not None and found is not None and str(found) != version:
        raise ConfigError(
            f"--version {version} contradicts --model {path}, a version {found} metric; leave --version out"
        )


def distance_command(
    img0: str,
    img1: str,
    *,
    backbone: str | None = None,
    version: str | None = None,
    heads: str | None = None,
    model: str | None = None,
    backbone_weights: str | None = None,
    resize: Annotated[int | None, Arg(parse=pixels)] = None,
    trust_code: bool = False,
) -> int:
    """LPIPS distance between two images.

    Args:
        img0: the first image file
        img1: the second image file
        backbone: alex, vgg or squeeze (default alex)
        version: 0.1 (default) or 0.0 (needs --heads FILE or none)
        heads: official (default), none, or an lpips-format .pth
        model: a checkpoint or export to use instead (see `export`)
        backbone_weights: torchvision state dict file of the backbone
        resize: resize both images to N x N first
        trust_code: build a custom backbone that --model names (runs its code)
    """
    import torch

    from .. import backbones, export, images
    from ..model import lpips

    _check_given(model, heads, backbone_weights)
    backbone = backbone or ("alex" if not model else None)
    chosen = version or "0.1"  # `version` stays as given: a model file's own is checked against it only if given
    heads = heads or "official"
    heads = None if heads.lower() == "none" else heads
    if not model:  # options first: no image is read for a command that cannot run
        check_choice("backbone", backbone, list(backbones.classic.BACKBONES))
        check_choice("version", chosen, lpips.VERSIONS)
        if heads == "official" and chosen != "0.1":
            raise ConfigError(
                f"--version {version} has no official heads (only 0.1's are released); "
                "pass --heads FILE.pth or --heads none"
            )
    pair = []
    for path in (img0, img1):
        array = images.load_image(path, resize)
        if not array.flags.writeable:  # torch warns on read-only arrays
            array = array.copy()
        pair.append(torch.from_numpy(array).permute(2, 0, 1)[None])
    if pair[0].shape != pair[1].shape:
        raise LPIPSLightningError(
            f"{img0} is {tuple(pair[0].shape[-2:])} and {img1} is {tuple(pair[1].shape[-2:])} "
            "(H, W): pass --resize N to compare them at N x N"
        )
    if model:
        metric = export.load(model, backbone=backbone, version=chosen, trust_code=trust_code)
        _check_model(metric, model, backbone, version)
        min_size, name = metric.min_size, metric.backbone_name
    else:
        min_size, name = backbones.classic.BACKBONES[backbone].min_size, backbone
    try:  # before any weights of the metric are read
        lpips.check_image_size(*pair[0].shape[-2:], min_size, name, f"{img0}, {img1}")
    except ConfigError as err:
        raise ConfigError(f"{err}; pass --resize N with N >= {min_size}") from None
    if not model:
        metric = lpips.LPIPS(backbone, chosen, heads=heads, backbone_weights=backbone_weights).eval()
    try:
        with torch.no_grad():
            value = metric(*pair).item()
    except RuntimeError as err:
        if not lpips.out_of_memory(err):
            raise
        height, width = pair[0].shape[-2:]
        raise ConfigError(
            f"{img0}, {img1}: not enough memory to compare {height}x{width} images with backbone {name}; "
            f"pass --resize N (e.g. --resize {max(min_size, min(1024, max(height, width) // 2))})"
        ) from None
    print(f"{value:.6f}")
    return 0
