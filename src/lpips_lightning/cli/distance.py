"""``lpips-lightning distance A B``: the LPIPS distance between two image files.

``--model`` takes any checkpoint or export (see `lpips_lightning.export.load`); without it,
the official v0.1 heads over an ImageNet backbone. Every model gets the images as uint8, so
every format of the same metric prints the same number.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..errors import ArgumentParser, ConfigError, LPIPSLightningError

MAX_SIZE = 4096  # as pack's --size: larger images exhaust memory before they are compared


def _pixels(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels, got {text!r}") from None
    if not 1 <= value <= MAX_SIZE:
        raise argparse.ArgumentTypeError(f"must be a number of pixels from 1 to {MAX_SIZE}, got {value}")
    return value


def _check_size(height: int, width: int, min_size: int, backbone: str, where: str) -> None:
    from ..lpips import check_image_size

    try:
        check_image_size(height, width, min_size, backbone, where)
    except ConfigError as err:
        raise ConfigError(f"{err}; pass --resize N with N >= {min_size}") from None


def distance_command(argv: Sequence[str]) -> int:
    """``lpips-lightning distance``."""
    p = ArgumentParser(prog="lpips-lightning distance", description="LPIPS distance between two images.")
    p.add_argument("img0")
    p.add_argument("img1")
    p.add_argument("--backbone", default=None, help="alex, vgg or squeeze (default alex)")
    p.add_argument("--version", default=None, help="0.1 (default) or 0.0 (needs --heads FILE or none)")
    p.add_argument("--heads", default=None, help="official (default), none, or an lpips-format .pth")
    p.add_argument("--model", default=None, help="a checkpoint or export to use instead (see `export`)")
    p.add_argument("--backbone-weights", default=None, help="torchvision state dict file of the backbone")
    p.add_argument("--resize", type=_pixels, default=None, help="resize both images to N x N first")
    p.add_argument(
        "--trust-code", action="store_true", help="build a custom backbone that --model names (runs its code)"
    )
    args = p.parse_args(argv)

    from ..errors import check_choice
    from ..lpips import VERSIONS

    if args.model:  # the model file says what it is: an option that would describe another model is refused
        given = [f"--{k}" for k in ("heads", "backbone_weights") if getattr(args, k) is not None]
        if given:
            raise ConfigError(
                f"{', '.join(given).replace('_', '-')} cannot be combined with --model {args.model} "
                "(the model file holds its own weights)"
            )
    args.backbone = args.backbone or ("alex" if not args.model else None)
    version_given, args.version = args.version, args.version or "0.1"
    args.heads = args.heads or "official"
    heads = None if args.heads.lower() == "none" else args.heads
    if not args.model:  # options first: no image is read for a command that cannot run
        from ..backbones import BACKBONES

        check_choice("backbone", args.backbone, list(BACKBONES))
        check_choice("version", args.version, VERSIONS)
        if heads == "official" and args.version != "0.1":
            raise ConfigError(
                f"--version {args.version} has no official heads (only 0.1's are released); "
                "pass --heads FILE.pth or --heads none"
            )

    import torch

    from ..pack import load_image

    images = []
    for f in (args.img0, args.img1):
        array = load_image(f, args.resize)
        if not array.flags.writeable:  # torch warns on read-only arrays
            array = array.copy()
        images.append(torch.from_numpy(array).permute(2, 0, 1)[None])
    if images[0].shape != images[1].shape:
        raise LPIPSLightningError(
            f"{args.img0} is {tuple(images[0].shape[-2:])} and {args.img1} is {tuple(images[1].shape[-2:])} "
            "(H, W): pass --resize N to compare them at N x N"
        )
    height, width = images[0].shape[-2:]
    where = f"{args.img0}, {args.img1}"
    if args.model:
        from ..export import load

        model = load(args.model, backbone=args.backbone, version=args.version, trust_code=args.trust_code)
        if args.backbone is not None and args.backbone != model.backbone_name:
            raise ConfigError(
                f"--backbone {args.backbone} contradicts --model {args.model}, a metric over backbone "
                f"{model.backbone_name}; leave --backbone out"
            )
        version = getattr(model, "version", None)
        if version_given is not None and version is not None and str(version) != version_given:
            raise ConfigError(
                f"--version {version_given} contradicts --model {args.model}, a version {version} metric; "
                "leave --version out"
            )
        _check_size(height, width, model.min_size, model.backbone_name, where)
    else:
        from ..backbones import BACKBONES
        from ..lpips import LPIPS

        _check_size(height, width, BACKBONES[args.backbone].min_size, args.backbone, where)  # before any weights
        model = LPIPS(args.backbone, args.version, heads=heads, backbone_weights=args.backbone_weights).eval()
    with torch.no_grad():
        print(f"{model(*images).item():.6f}")
    return 0
