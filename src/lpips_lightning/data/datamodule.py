"""JudgmentsDataModule: a judgments file served to Lightning as uint8 batches, one loader per val/test group.

Training groups are 2AFC groups as stored, or MOS groups as 2AFC triplets of two distorted images
of one reference (`mos_pairs`); `val_fraction` holds out a share of them for validation, by
reference image (`holdout`). Both are an index built once (`training_set`), never a copy.

What a model needs of its training batches arrives as init arguments, never by asking the
model: `index_only` (batches without images) and `steps_per_batch` (minibatches per batch).
``lpips-lightning fit`` sets both from the model's and the trainer's options (`train.links`);
they are logged with the run's hyperparameters (``hparams.yaml``).
"""

from __future__ import annotations

import dataclasses
import os
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ..errors import ConfigError
from . import group_checks, judgments
from .dataset import EpochShuffleSampler, JudgmentsDataset, UnpaddedDistributedSampler, keep_batch
from .demo import demo_path, ensure_demo
from .holdout import check_fraction, heldout_names
from .mos_pairs import DEFAULT_PAIRS_PER_REF
from .training_set import TrainingSet, training_set

DEFAULT_VAL = ("2afc/val/*", "jnd/val/*", "mos/val/*")


def _available_memory() -> int:
    """Bytes of memory available to load data into (Linux MemAvailable, else free pages)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class JudgmentsDataModule(pl.LightningDataModule):
    """Batches of human judgments from a judgments file (see `lpips_lightning.data.judgments`).

    Args:
        path: the judgments file, or ``demo`` for the bundled demo set (built on first use).
        train: groups (or globs, ``2afc/train/*``) to train on: 2AFC groups, and MOS groups as 2AFC
            triplets (two distorted images of one reference; see `mos_pairs` for the judgment's rule);
            both kinds mix in one training set and batches are 2AFC batches either way.
        val: groups to validate on, one loader each; 2AFC, JND and MOS (SRCC). By default every val
            group the file has (none is fine with `val_fraction`).
        test: groups to test on, one loader each.
        val_fraction: the share of each training group's items held out as a validation subset of
            its own (``2afc/train/mine`` -> ``2afc/val/mine_heldout``), by reference image: no
            reference image on both sides (`holdout`). With val groups as well, both are validated.
            A MOS group's held-out part is scored as MOS (SRCC), before any pairs are made.
        split_seed: seeds the held-out split and the sample of MOS pairs.
        mos_pairs_per_ref: at most this many pairs of one reference's distorted images become
            triplets (a seeded sample where there are more; ``None``: every pair, n(n-1)/2).
        batch_size: items per minibatch, one optimizer step each (the paper's recipe: 50).
        num_workers: loader processes (0: load in the main process).
        in_memory: ``True`` loads the groups' images into RAM, ``False`` reads them from the
            file as needed, ``"auto"`` loads them when they take less than half the free memory.
        on_device: keep the training images on the accelerator as uint8, with no loader at all
            (when they fit): training batches then hold indices, and the model gathers their images
            with `gather_images`. ``"auto"`` does so on a GPU when they take less than a quarter of
            its free memory.
        index_only: training batches hold indices, judgments and groups, never images (for a model
            that reads its training features elsewhere: LPIPSModule's feature cache).
        steps_per_batch: minibatches of `batch_size` per training batch, for a model that takes one
            optimizer step on each (LPIPSModule: 64 with its feature cache, 8 for its captured CUDA
            step); the epoch visits the same items in the same order either way.
    """

    def __init__(
        self,
        path: str = "demo",
        train: list[str] | None = None,
        val: list[str] | None = None,
        test: list[str] | None = None,
        batch_size: int = 50,
        num_workers: int = 0,
        in_memory: bool | str = "auto",
        on_device: bool | str = "auto",
        index_only: bool = False,
        steps_per_batch: int = 1,
        val_fraction: float = 0.0,
        split_seed: int = 0,
        mos_pairs_per_ref: int | None = DEFAULT_PAIRS_PER_REF,
    ) -> None:
        super().__init__()
        if in_memory not in (True, False, "auto"):
            raise ConfigError(f"in_memory must be true, false or auto, got {in_memory!r}")
        if on_device not in (True, False, "auto"):
            raise ConfigError(f"on_device must be true, false or auto, got {on_device!r}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"num_workers must be 0 (load in this process) or more, got {num_workers!r}")
        if steps_per_batch < 1:
            raise ConfigError(f"steps_per_batch must be at least 1, got {steps_per_batch}")
        if mos_pairs_per_ref is not None and (isinstance(mos_pairs_per_ref, bool) or mos_pairs_per_ref < 1):
            raise ConfigError(f"mos_pairs_per_ref must be at least 1 (or null: every pair), got {mos_pairs_per_ref!r}")
        self.val_fraction = check_fraction(val_fraction)
        self.split_seed = int(split_seed)
        self.mos_pairs_per_ref = mos_pairs_per_ref
        self.save_hyperparameters()
        self.train_patterns = list(train if train is not None else ["2afc/train/*"])
        # by default every val group of either kind: a file may hold only 2AFC or only JND groups
        self.default_val = val is None
        self.val_patterns = list(val if val is not None else DEFAULT_VAL)
        self.test_patterns = list(test or [])
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.in_memory = in_memory
        self.on_device = on_device
        self.index_only = index_only
        self.steps_per_batch = steps_per_batch
        self.path = Path(path) if path != "demo" else None
        self.train_groups: list[str] = []
        self.val_groups: list[str] = []
        self.test_groups: list[str] = []
        self.datasets: dict[str, list[JudgmentsDataset]] = {}
        self._device_store: dict[str, torch.Tensor] | None = None
        self._device_rows: dict[str, torch.Tensor] | None = None  # training items as rows into the store
        self._training: TrainingSet | None = None  # built once (`training_set`)
        self._source: dict[str, str] = {}  # a held-out subset's name -> its training group
        self._better: dict[str, bool] = {}  # each MOS group's higher_is_better
        if self.path is not None:  # fail early, before any model is built
            self._resolve()

    @property
    def file(self) -> Path:
        """The judgments file this module serves."""
        return demo_path() if self.path is None else self.path

    def _resolve(self) -> None:
        with judgments.open_file(self.file) as f:
            self.train_groups = group_checks.resolve(f, self.train_patterns)
            other = [g for g in self.train_groups if judgments.kind_of(g) == "jnd"]
            if other:
                raise ConfigError(
                    f"{self.file}: training needs 2AFC or MOS groups; {', '.join(other)} "
                    f"{'is' if len(other) == 1 else 'are'} JND"
                )
            patterns = self.val_patterns
            if self.default_val:
                patterns = [g for g in judgments.groups(f) if any(fnmatchcase(g, p) for p in DEFAULT_VAL)]
            self.val_groups = group_checks.resolve(f, patterns)
            self.test_groups = group_checks.resolve(f, self.test_patterns)
            chosen = dict.fromkeys(self.train_groups + self.val_groups + self.test_groups)
            self._source = heldout_names(self.file, self.train_groups, judgments.groups(f)) if self.val_fraction else {}
            self.val_groups += list(self._source)
            self._image_sizes = {
                g: tuple(f[g][judgments.image_keys(judgments.kind_of(g))[0]].shape[-2:]) for g in chosen
            }
            self._image_sizes.update({name: self._image_sizes[g] for name, g in self._source.items()})
            self._better = {g: judgments.higher_is_better(f, g) for g in chosen if judgments.kind_of(g) == "mos"}
            self._better.update({n: self._better[g] for n, g in self._source.items() if g in self._better})
            if self._training is None:  # once: the index of MOS pairs and the held-out split
                self._training = training_set(
                    f, self.train_groups, self.val_fraction, self.split_seed, self.mos_pairs_per_ref
                )

    def higher_is_better(self, group: str) -> bool:
        """Whether a higher score of MOS group `group` (a held-out one too) is better: MOS True, DMOS False."""
        if not hasattr(self, "_image_sizes"):
            self._resolve()
        if group not in self._better:
            raise ConfigError(f"{self.file}: {group} is not a selected MOS group")
        return self._better[group]

    def prepare_data(self) -> None:
        if self.path is None:
            ensure_demo()

    def _in_memory(self, groups: list[str]) -> bool:
        if self.in_memory != "auto":
            return bool(self.in_memory)
        stored = list(dict.fromkeys(self._source.get(g, g) for g in groups))
        return JudgmentsDataset.nbytes(self.file, stored) < _available_memory() // 2

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:  # safe to call twice
            return
        self._resolve()
        index = self._training.train if self._training is not None else None
        if self.train_groups:
            on_device = not self.index_only and self._store_on_device(self.train_groups)
            memory = on_device or self._in_memory(self.train_groups)
            # on the device the loader yields indices only; the images are gathered there
            only = on_device or self.index_only
            train = JudgmentsDataset(self.file, self.train_groups, memory, index_only=only, items=index)
            if on_device:
                self._device_store, self._device_rows = train.images, train.rows
            self.datasets["train"] = [train]
        for stage_name, groups in (("val", self.val_groups), ("test", self.test_groups)):
            if groups:
                memory = self._in_memory(groups)
                self.datasets[stage_name] = [self._eval_dataset(g, i, memory) for i, g in enumerate(groups)]
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.train_groups and world > 1 and len(self.datasets["train"][0]) < world * self.batch_size:
            raise ConfigError(
                f"{self.file}: {len(self.datasets['train'][0])} training items are fewer than one batch of "
                f"{self.batch_size} per process on {world} processes"
            )

    def _eval_dataset(self, group: str, i: int, memory: bool) -> JudgmentsDataset:
        """Loader `i`'s dataset: a stored group, or a subset held out of a training group."""
        if group not in self._source:
            return JudgmentsDataset(self.file, [group], memory, [i])
        items = self._training.heldout[group]
        items = dataclasses.replace(items, group=np.full(len(items), i, np.int64))
        return JudgmentsDataset(self.file, [], memory, items=items)

    def _loader(self, dataset: JudgmentsDataset, shuffle: bool, minibatches: int = 1) -> DataLoader:
        sampler: torch.utils.data.Sampler | None = None
        if shuffle:
            sampler = EpochShuffleSampler(len(dataset))
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            sampler = UnpaddedDistributedSampler(dataset)
        return DataLoader(
            dataset,
            batch_size=self.batch_size * minibatches,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=keep_batch,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        if "train" not in self.datasets:
            raise ConfigError(f"{self.file}: no training groups selected (data.train)")
        return self._loader(self.datasets["train"][0], shuffle=True, minibatches=self.steps_per_batch)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(d, False) for d in self.datasets.get("val", [])]

    def test_dataloader(self) -> list[DataLoader]:
        if "test" not in self.datasets:
            raise ConfigError(f"{self.file}: no test groups selected (data.test)")
        return [self._loader(d, False) for d in self.datasets["test"]]

    def image_sizes(self) -> dict[str, tuple[int, int]]:
        """(height, width) of the images of every selected group."""
        if not hasattr(self, "_image_sizes"):
            self._resolve()
        return dict(self._image_sizes)

    def groups(self, stage: str) -> list[str]:
        """The resolved groups of a stage (``train``, ``val``, ``test``), in loader order."""
        return {"train": self.train_groups, "val": self.val_groups, "test": self.test_groups}[stage]

    def _store_on_device(self, groups: list[str]) -> bool:
        if self.on_device != "auto":
            return bool(self.on_device)
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if device.type != "cuda":
            return False
        free, _ = torch.cuda.mem_get_info(device)
        return JudgmentsDataset.nbytes(self.file, groups) < free // 4

    def device_images(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The device-resident training images (ref, p0, p1: uint8), moved to `device` on first use.

        Training items given as rows (MOS pairs, a held-out split): one image pool that every key
        shares, moved once, and the rows (`_device_rows`) with it.
        """
        store = self._device_store
        if store is None:
            raise ConfigError(f"{self.file}: the training images are not kept on the device (on_device)")
        if next(iter(store.values())).device != device:
            moved: dict[int, torch.Tensor] = {}  # a tensor that several keys share moves once
            store = self._device_store = {k: moved.setdefault(id(v), v.to(device)) for k, v in store.items()}
            if self._device_rows is not None:
                self._device_rows = {k: v.to(device) for k, v in self._device_rows.items()}
        return store

    def on_after_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict[str, torch.Tensor]:
        """An index-only training batch reached its device: the store follows it there, once, before any step."""
        if self._device_store is not None and "index" in batch and "p0" not in batch:
            self.device_images(batch["index"].device)
        return batch

    def gather_images(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """ref, p0 and p1 of training items `index` from the device-resident store, on `index`'s device."""
        store = self.device_images(index.device)
        if self._device_rows is not None:
            return {k: v[self._device_rows[k][index]] for k, v in store.items()}
        return {k: v[index] for k, v in store.items()}
