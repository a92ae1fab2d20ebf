"""Data for training: the judgments data module, its datasets, and the demo set.

Imported lazily: ``lpips-lightning demo-data --help`` answers without loading torch.
"""

__all__ = ["JudgmentsDataModule", "JudgmentsDataset", "UnpaddedDistributedSampler"]


def __getattr__(name: str):
    if name in __all__:
        from . import judgments_datamodule

        return getattr(judgments_datamodule, name)
    raise AttributeError(f"module 'lpips_lightning.datamodules' has no attribute {name!r}")
