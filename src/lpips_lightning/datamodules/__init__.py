"""Data for training: the judgments data module, its datasets, and the demo set."""

from .judgments_datamodule import JudgmentsDataModule, JudgmentsDataset, UnpaddedDistributedSampler

__all__ = ["JudgmentsDataModule", "JudgmentsDataset", "UnpaddedDistributedSampler"]
