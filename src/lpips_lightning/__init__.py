"""lpips-lightning: train learned perceptual image-similarity metrics (LPIPS) with PyTorch Lightning."""

from .errors import LPIPSLightningError
from .lpips import LPIPS

__all__ = ["LPIPS", "LPIPSLightningError"]
__version__ = "0.1.0"
