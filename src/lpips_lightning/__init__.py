"""lpips-lightning: train learned perceptual image-similarity metrics (LPIPS) with PyTorch Lightning."""

from .errors import LPIPSLightningError
from .lpips import LPIPS


def load(path, backbone=None, version="0.1"):
    """Any trained metric (checkpoint, safetensors, lpips .pth, TorchScript, ONNX) as an eval-mode module."""
    from .export import load as _load

    return _load(path, backbone, version)


__all__ = ["LPIPS", "LPIPSLightningError", "load"]
__version__ = "0.1.0"
