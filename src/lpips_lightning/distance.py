"""``lpips-lightning distance A B``: the LPIPS distance between two image files.

``--model`` takes any checkpoint or export (see `lpips_lightning.export.load`); without it,
the official v0.1 heads over an ImageNet backbone.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .errors import LPIPSLightningError


def main(argv: Sequence[str]) -> int:
    """``lpips-lightning distance``."""
    p = argparse.ArgumentParser(prog="lpips-lightning distance", description="LPIPS distance between two images.")
    p.add_argument("img0")
    p.add_argument("img1")
    p.add_argument("--backbone", default="alex", help="alex, vgg or squeeze (default alex)")
    p.add_argument("--version", default="0.1")
    p.add_argument("--heads", default="official", help="official, none, or an lpips-format .pth")
    p.add_argument("--model", default=None, help="a checkpoint or export to use instead (see `export`)")
    p.add_argument("--backbone-weights", default=None, help="torchvision state dict file of the backbone")
    p.add_argument("--resize", type=int, default=None, help="resize both images to N x N first")
    args = p.parse_args(argv)

    import torch

    from .lpips import LPIPS
    from .pack import load_image

    images = [torch.from_numpy(load_image(f, args.resize)).permute(2, 0, 1)[None] for f in (args.img0, args.img1)]
    if images[0].shape != images[1].shape:
        raise LPIPSLightningError(
            f"{args.img0} is {tuple(images[0].shape[-2:])} and {args.img1} is {tuple(images[1].shape[-2:])} "
            "(H, W): pass --resize N to compare them at N x N"
        )
    if args.model:
        from .export import load

        model = load(args.model)
    else:
        heads = None if args.heads.lower() == "none" else args.heads
        model = LPIPS(args.backbone, args.version, heads=heads, backbone_weights=args.backbone_weights).eval()
    with torch.no_grad():
        print(f"{model(*images).item():.6f}")
    return 0
