"""The command line: LightningCLI for fit/validate/test, plus the tool commands.

``lpips-lightning fit|validate|test ...`` is LightningCLI (configs in ``configs/``, data in
``datamodules/``); ``distance``, ``pack``, ``demo-data``, ``export`` and ``evaluate`` are
small argparse commands. Every user-facing error is printed as one line (exit status 2).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .errors import LPIPSLightningError

HELP = """usage: lpips-lightning COMMAND [options]

Train and use learned perceptual image-similarity metrics (LPIPS).

training (LightningCLI; `lpips-lightning fit --help` for every option):
  fit          train:     lpips-lightning fit --config configs/lin_alex.yaml --data datamodules/bapps.yaml
  validate     score a checkpoint on the validation groups
  test         score a checkpoint on the test groups

tools (`lpips-lightning COMMAND --help`):
  distance     LPIPS distance between two image files
  pack         BAPPS folders or a CSV of judgments -> one judgments.h5
  demo-data    build the bundled demo judgments file
  export       checkpoint -> lpips .pth / safetensors / TorchScript / ONNX
  evaluate     2AFC / JND table of any model on a judgments file
"""


def _distance(argv: Sequence[str]) -> int:
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


def _tool(module: str, name: str = "main") -> Callable[[Sequence[str]], int]:
    def run(argv: Sequence[str]) -> int:
        import importlib

        return getattr(importlib.import_module(f"lpips_lightning.{module}"), name)(argv)

    return run


TOOLS: dict[str, Callable[[Sequence[str]], int]] = {
    "distance": _distance,
    "pack": _tool("pack"),
    "demo-data": _tool("datamodules.demo"),
    "export": _tool("export"),
    "evaluate": _tool("evaluate"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lpips-lightning`` console script and of ``train.py``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv[0] in ("-h", "--help"):
            print(HELP)
            return 0
        if argv[0] in TOOLS:
            return TOOLS[argv[0]](argv[1:])
        from .training_cli import run_training

        run_training(argv)
        return 0
    except LPIPSLightningError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
