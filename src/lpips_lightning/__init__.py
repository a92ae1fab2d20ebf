"""lpips-lightning: train learned perceptual image-similarity metrics (LPIPS) with PyTorch Lightning.

Importing the package is cheap (the command line answers ``--help`` without torch);
`LPIPS`, `EmbeddingDistance` and `load` import torch on first use.
"""

from .errors import LPIPSLightningError


def load(path, backbone=None, version="0.1", trust_code=False):
    """Any trained metric (checkpoint, safetensors, lpips .pth, TorchScript, ONNX) as an eval-mode module.

    A file whose backbone is custom code is refused unless ``trust_code=True``.
    """
    from .export.read import load as _load

    return _load(path, backbone, version, trust_code)


def __getattr__(name: str):
    if name == "LPIPS":
        from .model.lpips import LPIPS

        return LPIPS
    if name == "EmbeddingDistance":
        from .model.embedding import EmbeddingDistance

        return EmbeddingDistance
    raise AttributeError(f"module 'lpips_lightning' has no attribute {name!r}")


__all__ = ["LPIPS", "EmbeddingDistance", "LPIPSLightningError", "load"]
__version__ = "0.1.0"
