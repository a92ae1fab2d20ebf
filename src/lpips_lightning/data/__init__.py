"""Judgments on their way to training: the file format, the dataset, the data module, the demo set.

Nothing is imported here: ``lpips-lightning demo-data --help`` answers without loading torch.
"""
