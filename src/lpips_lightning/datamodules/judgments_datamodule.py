"""Serve a judgments file to Lightning: uint8 batches, one validation/test loader per group."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .. import judgments
from ..errors import ConfigError, JudgmentsError

DEFAULT_VAL = ("2afc/val/*", "jnd/val/*")


class JudgmentsDataset(Dataset):
    """The items of one or more groups of one kind, in memory or read lazily from the file.

    Indexing with a list of indices (``__getitems__``, used by `DataLoader`) returns a whole
    batch: ``{"ref", "p0", "p1"}`` (or ``{"p0", "p1"}``) uint8 (B, 3, H, W), ``"judge"`` (or
    ``"same"``) float32 (B,), and ``"group"``, the index of each item's group in `group_ids`.
    The HDF5 file is opened on first use in each process and never pickled. ``"index"`` holds
    each item's index in the dataset; with `index_only` the images are left out.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        groups: Sequence[str],
        in_memory: bool = False,
        group_ids: Sequence[int] | None = None,
    ) -> None:
        if not groups:
            raise ConfigError("a dataset needs at least one group")
        kinds = {judgments.kind_of(g) for g in groups}
        if len(kinds) != 1:
            raise ConfigError(f"groups of different kinds cannot be mixed in one dataset: {', '.join(groups)}")
        self.path = str(path)
        self.groups = list(groups)
        self.kind = kinds.pop()
        self.keys = judgments.image_keys(self.kind)
        self.target_key = judgments.TARGET[self.kind]
        with judgments.open_file(self.path) as f:
            lengths = [judgments.validate_group(f, g) for g in self.groups]
            shapes = {f[g][self.keys[0]].shape[1:] for g in self.groups}
            if len(shapes) != 1:
                raise JudgmentsError(f"{self.path}: groups {', '.join(self.groups)} hold images of different sizes")
            self.image_shape = shapes.pop()
            self.targets = torch.from_numpy(
                np.concatenate([judgments.read(f, g, self.target_key) for g in self.groups])
            )
            ids = group_ids if group_ids is not None else range(len(self.groups))
            self.group_of = torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in zip(ids, lengths)])
            self.offsets = np.cumsum([0, *lengths])
            self.images: dict[str, torch.Tensor] | None = None
            if in_memory:
                self.images = {
                    k: torch.from_numpy(np.concatenate([judgments.read(f, g, k) for g in self.groups]))
                    for k in self.keys
                }
        self._file: h5py.File | None = None
        # only indices, judgments and groups: the images are gathered elsewhere (on the device)
        self.index_only = False

    @staticmethod
    def nbytes(path: str | os.PathLike, groups: Sequence[str]) -> int:
        """Bytes of image data the groups hold (what `in_memory` would load)."""
        with judgments.open_file(path) as f:
            return sum(f[g][k].size for g in groups for k in judgments.image_keys(judgments.kind_of(g)))

    def __len__(self) -> int:
        return len(self.targets)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None
        return state

    def _read(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        out = {k: np.empty((len(indices), *self.image_shape), np.uint8) for k in self.keys}
        which = np.searchsorted(self.offsets, indices, side="right") - 1
        datasets = [[self._file[g][k] for k in self.keys] for g in self.groups]
        for j, (i, gi) in enumerate(zip(indices, which)):
            local = int(i - self.offsets[gi])
            for k, d in zip(self.keys, datasets[gi]):
                try:
                    out[k][j] = _read_sample(d, local)
                except OSError as err:
                    raise judgments.damaged(self.path, self.groups[gi], k, err) from None
        return {k: torch.from_numpy(v) for k, v in out.items()}

    def read_images(self, indices: Sequence[int] | torch.Tensor) -> dict[str, torch.Tensor]:
        """The images of items `indices`, uint8 (B, 3, H, W) per key, from memory or the file."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        if self.images is not None:
            return {k: v[idx] for k, v in self.images.items()}
        return self._read(idx.numpy())

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        batch = {} if self.index_only else self.read_images(idx)
        batch[self.target_key] = self.targets[idx]
        batch["group"] = self.group_of[idx]
        batch["index"] = idx
        return batch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}


def _read_sample(d: h5py.Dataset, i: int) -> np.ndarray:
    """One sample: the raw chunk when it is one uncompressed sample (7 us), else h5py indexing (10 us)."""
    if d.chunks is not None and d.chunks[0] == 1 and not d.compression and d.chunks[1:] == d.shape[1:]:
        _, raw = d.id.read_direct_chunk((i,) + (0,) * (d.ndim - 1))
        return np.frombuffer(raw, np.uint8).reshape(d.shape[1:])
    return d[i]


def _keep_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`DataLoader` collate for `JudgmentsDataset`: `__getitems__` already built the batch."""
    return batch


def epoch_seed(epoch: int) -> int:
    """The seed of one epoch's shuffling and dropout: depends only on the run's seed and `epoch`."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0)) * 1_000_003 + epoch


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """A random order that depends only on (seed, epoch): a resumed run sees the same batches.

    Lightning calls `set_epoch` before every epoch, also when it resumes from a checkpoint.
    """

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(epoch_seed(self.epoch))
        return iter(torch.randperm(self.n, generator=g).tolist())


class UnpaddedDistributedSampler(DistributedSampler):
    """Each rank takes every world_size-th item, without DistributedSampler's padding repeats.

    Validation must see every item exactly once: a repeated triplet changes the 2AFC score.
    Being a `DistributedSampler`, Lightning leaves it in place.
    """

    def __init__(self, dataset: Dataset, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(self.rank, len(dataset), self.num_replicas))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))  # type: ignore[arg-type]


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
    """Batches of human judgments from a judgments file (see `lpips_lightning.judgments`).

    Args:
        path: the judgments file, or ``demo`` for the bundled demo set (built on first use).
        train: groups (or globs, ``2afc/train/*``) to train on; 2AFC only.
        val: groups to validate on, one loader each; 2AFC and JND.
        test: groups to test on, one loader each.
        batch_size: items per batch (the paper's recipe: 50).
        num_workers: loader processes (0: load in the main process).
        in_memory: ``True`` loads the groups' images into RAM, ``False`` reads them from the
            file as needed, ``"auto"`` loads them when they take less than half the free memory.
        on_device: keep the training images on the accelerator as uint8 and gather batches
            there, with no loader at all (when they fit; see `LPIPSModule`). ``"auto"`` does
            so on a GPU when they take less than a quarter of its free memory.
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
    ) -> None:
        super().__init__()
        if in_memory not in (True, False, "auto"):
            raise ConfigError(f"in_memory must be true, false or auto, got {in_memory!r}")
        if on_device not in (True, False, "auto"):
            raise ConfigError(f"on_device must be true, false or auto, got {on_device!r}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
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
        self.path = Path(path) if path != "demo" else None
        self.train_groups: list[str] = []
        self.val_groups: list[str] = []
        self.test_groups: list[str] = []
        self.datasets: dict[str, list[JudgmentsDataset]] = {}
        self._device_store: dict[str, torch.Tensor] | None = None
        if self.path is not None:  # fail early, before any model is built
            self._resolve()

    @property
    def file(self) -> Path:
        """The judgments file this module serves."""
        if self.path is None:
            from .demo import demo_path

            return demo_path()
        return self.path

    def _resolve(self) -> None:
        with judgments.open_file(self.file) as f:
            self.train_groups = judgments.resolve(f, self.train_patterns)
            patterns = self.val_patterns
            if self.default_val:
                from fnmatch import fnmatchcase

                patterns = [g for g in judgments.groups(f) if any(fnmatchcase(g, p) for p in DEFAULT_VAL)]
            self.val_groups = judgments.resolve(f, patterns)
            self.test_groups = judgments.resolve(f, self.test_patterns)
            chosen = dict.fromkeys(self.train_groups + self.val_groups + self.test_groups)
            self._image_sizes = {g: tuple(f[g]["p0"].shape[-2:]) for g in chosen}
        jnd_train = [g for g in self.train_groups if judgments.kind_of(g) != "2afc"]
        if jnd_train:
            raise ConfigError(f"{self.file}: training needs 2AFC groups; {', '.join(jnd_train)} is JND")

    def prepare_data(self) -> None:
        if self.path is None:
            from .demo import ensure_demo

            ensure_demo()

    def _in_memory(self, groups: list[str]) -> bool:
        if self.in_memory != "auto":
            return bool(self.in_memory)
        return JudgmentsDataset.nbytes(self.file, groups) < _available_memory() // 2

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:  # safe to call twice
            return
        self._resolve()
        if self.train_groups:
            needs_images = getattr(self._trained_module, "needs_train_images", True)
            on_device = needs_images and self._store_on_device(self.train_groups)
            train = JudgmentsDataset(self.file, self.train_groups, on_device or self._in_memory(self.train_groups))
            if on_device:  # the loader yields indices only; images are gathered on the device
                self._device_store = train.images
            train.index_only = on_device or not needs_images
            self.datasets["train"] = [train]
        for stage_name, groups in (("val", self.val_groups), ("test", self.test_groups)):
            if groups:
                memory = self._in_memory(groups)
                self.datasets[stage_name] = [
                    JudgmentsDataset(self.file, [g], memory, [i]) for i, g in enumerate(groups)
                ]
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.train_groups and world > 1 and len(self.datasets["train"][0]) < world * self.batch_size:
            raise ConfigError(
                f"{self.file}: {len(self.datasets['train'][0])} training items are fewer than one batch of "
                f"{self.batch_size} per process on {world} processes"
            )

    def _loader(
        self, dataset: JudgmentsDataset, shuffle: bool, distributed_eval: bool = False, multiple: int = 1
    ) -> DataLoader:
        sampler: torch.utils.data.Sampler | None = None
        if shuffle:
            sampler = EpochShuffleSampler(len(dataset))
        elif distributed_eval and torch.distributed.is_available() and torch.distributed.is_initialized():
            sampler = UnpaddedDistributedSampler(dataset)
        return DataLoader(
            dataset,
            batch_size=self.batch_size * multiple,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=_keep_batch,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        if "train" not in self.datasets:
            raise ConfigError(f"{self.file}: no training groups selected (data.train)")
        multiple = getattr(
            self._trained_module, "train_batch_multiple", 1
        )  # the feature cache takes many minibatches at once
        return self._loader(self.datasets["train"][0], shuffle=True, multiple=multiple)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(d, False, True) for d in self.datasets.get("val", [])]

    def test_dataloader(self) -> list[DataLoader]:
        if "test" not in self.datasets:
            raise ConfigError(f"{self.file}: no test groups selected (data.test)")
        return [self._loader(d, False, True) for d in self.datasets["test"]]

    def image_sizes(self) -> dict[str, tuple[int, int]]:
        """(height, width) of the images of every selected group."""
        if not hasattr(self, "_image_sizes"):
            self._resolve()
        return dict(self._image_sizes)

    def groups(self, stage: str) -> list[str]:
        """The resolved groups of a stage (``train``, ``val``, ``test``), in loader order."""
        return {"train": self.train_groups, "val": self.val_groups, "test": self.test_groups}[stage]

    @property
    def _trained_module(self) -> pl.LightningModule | None:
        """The module being trained; it may ask for index-only batches (see `LPIPSModule`)."""
        return self.trainer.lightning_module if self.trainer is not None else None

    def _store_on_device(self, groups: list[str]) -> bool:
        if self.on_device != "auto":
            return bool(self.on_device)
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if device.type != "cuda":
            return False
        free, _ = torch.cuda.mem_get_info(device)
        return JudgmentsDataset.nbytes(self.file, groups) < free // 4

    def device_images(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The device-resident training images (ref, p0, p1: uint8), moved to `device` on first use."""
        store = self._device_store
        if store is None:
            raise ConfigError(f"{self.file}: the training images are not kept on the device (on_device)")
        if next(iter(store.values())).device != device:
            store = self._device_store = {k: v.to(device) for k, v in store.items()}
        return store

    def on_after_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict[str, torch.Tensor]:
        """Gather the images of an index-only training batch from the device-resident store.

        Unless the trained module gathers them itself (`gathers_images`: inside its captured step).
        """
        if self._device_store is not None and "index" in batch and "p0" not in batch:
            if getattr(self._trained_module, "gathers_images", False):
                self.device_images(batch["index"].device)  # the store moves to the device once, here
            else:
                batch.update(self.gather_images(batch["index"]))
        return batch

    def gather_images(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """ref, p0 and p1 of training items `index` from the device-resident store, on `index`'s device."""
        return {k: v[index] for k, v in self.device_images(index.device).items()}
