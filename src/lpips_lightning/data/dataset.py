"""The items of a judgments file as PyTorch sees them: a dataset of whole batches, and its samplers.

`JudgmentsDataset` serves one or more groups of one kind as uint8 batches; `EpochShuffleSampler`
orders training items by (seed, epoch) only, so a resumed run sees the batches an uninterrupted
one would; `UnpaddedDistributedSampler` splits validation over processes without repeating items.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from ..errors import ConfigError, JudgmentsError
from . import group_checks, judgments
from .items import Items

POOL_BLOCK = 1024  # stored rows read at a time while the used ones are gathered into memory


class JudgmentsDataset(Dataset):
    """The items of one or more groups of one kind, in memory or read lazily from the file.

    Indexing with a list of indices (``__getitems__``, used by `DataLoader`) returns a whole
    batch: ``{"ref", "p0", "p1"}`` (or ``{"p0", "p1"}``) uint8 (B, 3, H, W), ``"judge"`` (or
    ``"same"``) float32 (B,), and ``"group"``, the index of each item's group in `group_ids`.
    The HDF5 file is opened on first use in each process and never pickled. ``"index"`` holds
    each item's index in the dataset; with `index_only` the images are left out.

    With `items` (`items.Items`: MOS pairs as triplets, a held-out split) the dataset serves those
    items, reading each item's images by their rows in the stored arrays (`groups` is then theirs).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        groups: Sequence[str],
        in_memory: bool = False,
        group_ids: Sequence[int] | None = None,
        index_only: bool = False,
        items: Items | None = None,
    ) -> None:
        groups = items.groups if items is not None else groups
        if not groups:
            raise ConfigError("a dataset needs at least one group")
        kinds = {judgments.kind_of(g) for g in groups}
        if len(kinds) != 1 and items is None:
            raise ConfigError(f"groups of different kinds cannot be mixed in one dataset: {', '.join(groups)}")
        self.path = str(path)
        self.groups = list(groups)
        self.kind = kinds.pop() if items is None else {"judge": "2afc", "mos": "mos"}[items.target_key]
        self.keys = judgments.image_keys(self.kind) if items is None else items.keys
        self.target_key = judgments.TARGET[self.kind] if items is None else items.target_key
        # items given as rows (MOS pairs, held-out splits): per key, rows of the sources read one after
        # another (`offsets`), or of the in-memory pool
        self.rows: dict[str, torch.Tensor] | None = None
        with judgments.open_file(self.path) as f:
            # what the file is now: a file replaced or rewritten under a running fit is noticed at its next read
            self.identity = _identity(self.path)
            lengths = [group_checks.validate_group(f, g) for g in self.groups]
            shapes = {f[g][judgments.image_keys(judgments.kind_of(g))[0]].shape[1:] for g in self.groups}
            if len(shapes) != 1:
                raise JudgmentsError(f"{self.path}: groups {', '.join(self.groups)} hold images of different sizes")
            self.image_shape = shapes.pop()
            self.images: dict[str, torch.Tensor] | None = None
            if items is not None:
                self._index(f, items, in_memory)
            else:
                self._stored(f, lengths, group_ids, in_memory)
        self._file: h5py.File | None = None
        self._datasets: list[list[tuple[h5py.Dataset, bool]]] = []
        # only indices, judgments and groups: the images are gathered elsewhere (on the device)
        self.index_only = index_only

    def _stored(self, f: h5py.File, lengths: list[int], group_ids: Sequence[int] | None, in_memory: bool) -> None:
        """Serve every item of the groups as stored, in order."""
        self.targets = torch.from_numpy(np.concatenate([judgments.read(f, g, self.target_key) for g in self.groups]))
        ids = group_ids if group_ids is not None else range(len(self.groups))
        self.group_of = torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in zip(ids, lengths)])
        self.offsets = np.cumsum([0, *lengths])
        if in_memory:
            self.images = {
                k: torch.from_numpy(np.concatenate([judgments.read(f, g, k) for g in self.groups])) for k in self.keys
            }

    def _index(self, f: h5py.File, items: Items, in_memory: bool) -> None:
        """Serve `items`: each stored source array once (in memory: one pool, every key a view of it)."""
        self.sources = list(items.sources)
        lengths = [f[g][k].shape[0] for g, k in self.sources]
        self.offsets = np.cumsum([0, *lengths])  # each source's first row in the pool
        self.rows = {k: torch.from_numpy(self.offsets[items.source[k]] + items.row[k]) for k in self.keys}
        self.targets = torch.from_numpy(np.ascontiguousarray(items.targets, np.float32))
        self.group_of = torch.from_numpy(np.ascontiguousarray(items.group, np.int64))
        if in_memory:  # one pool of the rows the items use, each once (not a held-out part's), every key a view
            used = np.unique(np.concatenate([v.numpy() for v in self.rows.values()]))
            pool, filled = np.empty((len(used), *self.image_shape), np.uint8), 0
            for (g, k), start, n in zip(self.sources, self.offsets, lengths):
                for block in range(start, start + n, POOL_BLOCK):
                    end = min(block + POOL_BLOCK, start + n)
                    take = used[np.searchsorted(used, block) : np.searchsorted(used, end)]
                    if len(take):
                        rows = judgments.read(f, g, k, np.s_[block - start : end - start])
                        pool[filled : filled + len(take)] = rows[take - block]
                        filled += len(take)
            tensor = torch.from_numpy(pool)
            self.images = {k: tensor for k in self.keys}
            self.rows = {k: torch.from_numpy(np.searchsorted(used, v.numpy())) for k, v in self.rows.items()}

    @staticmethod
    def nbytes(path: str | os.PathLike, groups: Sequence[str]) -> int:
        """Bytes of image data the groups hold (what `in_memory` would load)."""
        with judgments.open_file(path) as f:
            return sum(f[g][k].size for g in groups for k in judgments.image_keys(judgments.kind_of(g)))

    def __len__(self) -> int:
        return len(self.targets)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"], state["_datasets"] = None, []
        return state

    def _read(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        _check_unchanged(self.path, self.identity)  # one stat per batch (a few microseconds)
        if self._file is None:
            self._file = h5py.File(self.path, "r")
            if self.rows is not None:
                self._datasets = [[_with_raw(self._file[g][k])] for g, k in self.sources]
            else:
                self._datasets = [[_with_raw(self._file[g][k]) for k in self.keys] for g in self.groups]
        if self.rows is not None:
            return self._read_rows(indices)
        out = {k: np.empty((len(indices), *self.image_shape), np.uint8) for k in self.keys}
        which = np.searchsorted(self.offsets, indices, side="right") - 1
        for j, (i, gi) in enumerate(zip(indices, which)):
            local = int(i - self.offsets[gi])
            for k, (d, raw) in zip(self.keys, self._datasets[gi]):
                try:
                    out[k][j] = _read_sample(d, local, raw)
                except (OSError, RuntimeError) as err:
                    raise judgments.damaged(self.path, self.groups[gi], k, err) from None
        return {k: torch.from_numpy(v) for k, v in out.items()}

    def _read_rows(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        """Items given as rows (`rows`): each key's row looked up in its source array."""
        out = {}
        for k in self.keys:
            rows = self.rows[k][torch.as_tensor(indices)].numpy()
            which = np.searchsorted(self.offsets, rows, side="right") - 1
            out[k] = np.empty((len(rows), *self.image_shape), np.uint8)
            for j, (r, s) in enumerate(zip(rows, which)):
                d, raw = self._datasets[s][0]
                try:
                    out[k][j] = _read_sample(d, int(r - self.offsets[s]), raw)
                except (OSError, RuntimeError) as err:
                    raise judgments.damaged(self.path, self.sources[s][0], self.sources[s][1], err) from None
        return {k: torch.from_numpy(v) for k, v in out.items()}

    def read_images(self, indices: Sequence[int] | torch.Tensor) -> dict[str, torch.Tensor]:
        """The images of items `indices`, uint8 (B, 3, H, W) per key, from memory or the file."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        if self.images is not None:
            if self.rows is not None:
                return {k: v[self.rows[k][idx]] for k, v in self.images.items()}
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


def _with_raw(d: h5py.Dataset) -> tuple[h5py.Dataset, bool]:
    """`d`, and whether its chunks can be read raw: one sample each, stored as is.

    No filter at all: a checksum, scale-offset or compression changes the bytes on disk.
    """
    one_sample = d.chunks is not None and d.chunks[0] == 1 and d.chunks[1:] == d.shape[1:]
    return d, one_sample and d.id.get_create_plist().get_nfilters() == 0


def _read_sample(d: h5py.Dataset, i: int, raw: bool) -> np.ndarray:
    """One sample: the raw chunk when `raw` (7 us), else h5py indexing (10 us)."""
    if raw:
        _, data = d.id.read_direct_chunk((i,) + (0,) * (d.ndim - 1))
        return np.frombuffer(data, np.uint8).reshape(d.shape[1:])
    return d[i]


def _identity(path: str) -> tuple[int, int, int, int] | None:
    """What tells one file from another, or from itself rewritten: (device, inode, size, mtime); None if gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _check_unchanged(path: str, identity: tuple[int, int, int, int] | None) -> None:
    """Refuse to read on from a judgments file that was replaced, rewritten or removed since it was opened.

    HDF5 reads a file rewritten under it as zeros: training would go on, on black images.
    """
    now = _identity(path)
    if now == identity:
        return
    if now is None:
        how = "it was removed"
    elif identity is None or now[:2] != identity[:2]:
        how = "another file was put in its place"
    elif now[2] != identity[2]:
        how = f"rewritten: {identity[2]} bytes, now {now[2]}"
    else:
        how = "rewritten in place"
    raise JudgmentsError(f"{path} changed while it was being read ({how}): stop")


def keep_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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
