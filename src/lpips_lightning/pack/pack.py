"""``pack``: the group plans of a SOURCE decoded and written into one judgments file.

``lpips-lightning pack SOURCE OUT.h5 [--size 64] [--workers N] [--group G] [--lower-is-better] [--min-votes N]
[--overwrite]``

Every input problem is found before anything is written where it can be (`sources.plan_source`:
folder layout, stems, CSV columns and values, a damaged archive; the output checked once,
`outputs.check_output`: its folder, an output that is one of the inputs); images and ``.npy``
judgments are checked as they are decoded, in parallel (`decoding.Decoder`), and streamed into
the file in blocks. The output appears under its name only when complete (`judgments.write`).

Archives are read a second time here (pass 2; pass 1 is `archive_index.plan_archives`): the
stream decompressed and cut where pass 1 found each member (`archives.cut_members`), each
member's bytes to a decoding worker and its image straight into its row of the group
(datasets hold one image per chunk). Memory: the index, and the members in flight (a few MB a
worker). The file is the one packing the unpacked tree gives (same groups, arrays, names;
``source`` reads ``ARCHIVE:PREFIX``).

Ctrl-C and SIGTERM are recorded while packing (`interrupts.Signals`) and acted on between
blocks and before the final rename: the temporary file is removed, the output is left as it
was, and the command exits with status 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import outputs
from ..data import judgments
from ..errors import PackError
from ..interrupts import Signals
from .archive_index import member_name
from .archives import Archive, cut_members, shown_name
from .bapps import FOLDERS
from .decoding import Decoder, FileTask, MemberTask, chunks
from .plans import GroupPlan
from .sources import named_archives, plan_source

BLOCK = 256  # items decoded per write, at most (fewer for large images: a block stays near BLOCK_BYTES)
BLOCK_BYTES = 64 << 20
IN_FLIGHT_BYTES = 256 << 20  # decoded images waiting for the writer, at most (about)
MAX_SIZE = 4096  # --size: 3 x 4096^2 bytes per image chunk; beyond, memory and HDF5 chunk limits bite
MEMBER_CHUNK = 32  # archive members per message to a decoding worker, at most ...
MEMBER_CHUNK_BYTES = 4 << 20  # ... and about this many encoded bytes
WHAT = "judgments file"


def pack(
    source: str | os.PathLike,
    out: str | os.PathLike,
    size: int = 64,
    workers: int | None = None,
    group: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    lower_is_better: bool = False,
    min_votes: int | None = None,
) -> Path:
    """Pack SOURCE into the judgments file OUT; return OUT. See the module docstring.

    `lower_is_better`: a MOS CSV of DMOS scores; `min_votes`: a NIGHTS root's triplets with fewer
    votes are left out (default 6). What a source left out is said on stderr once OUT is written.

    Raises `Interrupted` (a KeyboardInterrupt carrying the exit status) on SIGINT or SIGTERM.
    """
    if not 1 <= size <= MAX_SIZE:
        raise PackError(f"--size must be a number of pixels from 1 to {MAX_SIZE}, got {size}")
    if workers is not None and workers < 1:
        raise PackError(f"--workers must be at least 1, got {workers}")
    # Archives are known before they are read (a minute for BAPPS): the output is checked now. Other
    # sources' inputs are known once planned (an input that exists must not get "pass --overwrite").
    named = named_archives(Path(source))
    if named:
        out = outputs.check_output(out, overwrite, inputs=[source, *named], what=WHAT)
    with Signals() as signals:
        signals.raise_now = True  # planning holds nothing to clean up
        plans = plan_source(source, group, progress, lower_is_better, min_votes)
        signals.raise_now = False
        signals.check()
        if not named:  # `pack j.csv j.csv --overwrite`, or an output that is one of the images or .npy files
            inputs = [source, *(p for plan in plans for p in plan.files())]
            out = outputs.check_output(out, overwrite, inputs=inputs, what=WHAT)
        _check_free_space(out, plans, size)
        archives = list(dict.fromkeys(p.archive for p in plans if p.archive))
        item_bytes = max(len(judgments.image_keys(judgments.kind_of(p.group))) for p in plans) * 3 * size * size
        block = max(1, min(BLOCK, BLOCK_BYTES // item_bytes))
        chunk = min(16, block)
        if archives:  # members to decode, in chunks of MEMBER_CHUNK
            members = sum(p.n * len(FOLDERS[judgments.kind_of(p.group)]) for p in plans)
            workers = min(workers or os.cpu_count() or 1, math.ceil(members / MEMBER_CHUNK))
            bar_options = dict(total=sum(a.stamp[0] for a in archives), unit="B", unit_scale=True)
        else:
            workers = min(workers or os.cpu_count() or 1, math.ceil(sum(p.n for p in plans) / chunk))
            bar_options = dict(total=sum(p.n for p in plans), unit="item", desc=f"pack {out.name}")
        decoder = Decoder(workers, signals.check, str(source))  # before the HDF5 file is open: workers fork without it
        try:
            with (
                judgments.write(out, overwrite, before_rename=signals.check, checked=True) as writer,
                tqdm(disable=not progress, **bar_options) as bar,
            ):
                if archives:
                    _write_archives(writer, plans, archives, decoder, size, signals.check, bar)
                else:
                    ahead = max(2, min(64, IN_FLIGHT_BYTES // (chunk * item_bytes)))
                    for plan in plans:
                        _write_group(writer, plan, decoder, size, block, chunk, ahead, signals.check, bar)
        finally:
            decoder.close()
    signals.check()  # a signal after the rename: the file is complete, the command still stops
    for note in (p.note for p in plans if p.note):
        print(note, file=sys.stderr)
    return out


def _check_free_space(out: Path, plans: list[GroupPlan], size: int) -> None:
    """Refuse up front when the output's folder lacks the space the file will take (about)."""
    need = 1 << 20
    for plan in plans:
        per_item = len(judgments.image_keys(judgments.kind_of(plan.group))) * 3 * size * size + 4
        optional = (2 if plan.votes is not None else 0) + (4 if plan.std is not None else 0) + (24 if plan.names else 0)
        need += plan.n * (per_item + optional)
    try:
        st = os.statvfs(out.parent)
    except (OSError, AttributeError):  # no statvfs (Windows), or it failed: the write itself will tell
        return
    free = st.f_bavail * st.f_frsize
    if st.f_blocks and free < need:  # (pseudo file systems report no size at all)
        raise PackError(
            f"{out}: the judgments file needs about {outputs.size_text(need)} and {out.parent} has "
            f"{outputs.size_text(free)} free"
        )


def _write_group(writer, plan: GroupPlan, decoder: Decoder, size, block, chunk, ahead, check, bar) -> None:
    """One group of a folder tree or CSV: items decoded in order, written `block` at a time."""
    n = plan.n
    kind = judgments.kind_of(plan.group)
    g = writer.create_group(
        plan.group, n, (size, size), plan.source, votes=plan.votes is not None, names=plan.names is not None,
        std=plan.std is not None, higher_is_better=plan.higher_is_better,
    )  # fmt: skip
    tasks = [FileTask(images, target, size) for images, target in zip(plan.images, plan.targets)]
    results = decoder.decoded(tasks, chunk, ahead)
    keys = judgments.image_keys(kind)
    for start in range(0, n, block):
        items = [next(results) for _ in range(min(block, n - start))]
        stacked = np.stack([b[0] for b in items])
        arrays = {k: stacked[:, i] for i, k in enumerate(keys)}
        arrays[judgments.TARGET[kind]] = np.array([b[1] for b in items], np.float32)
        if plan.votes is not None:
            arrays["votes"] = np.array(plan.votes[start : start + len(items)], np.uint16)
        if plan.names is not None:
            arrays["names"] = np.array(plan.names[start : start + len(items)], dtype=object)
        if plan.std is not None:
            arrays["std"] = np.array(plan.std[start : start + len(items)], np.float32)
        check()
        writer.fill(g, start, arrays)
        bar.update(len(items))


def _member_tasks(plans: list[GroupPlan], archive: Archive, size: int, bar) -> Iterator[MemberTask]:
    """Pass 2's tasks: every indexed member of `archive`, its bytes cut from the stream, and where it goes."""
    name = functools.partial(member_name, plans, archive)
    for k, data in cut_members(archive, bar, name):
        i, f = archive.group[k], archive.folder[k]
        image = f < len(FOLDERS[judgments.kind_of(plans[i].group)]) - 1
        yield MemberTask(data, f"{archive.path}: {shown_name(name(k))}", image, size, (i, f, archive.row[k]))


def _write_archives(
    writer, plans: list[GroupPlan], archives: list[Archive], decoder: Decoder, size: int, check: Callable, bar
) -> None:
    """Pass 2: fill the groups of `plans` from their archives, read again: each member straight to its row."""
    datasets, targets, filled = [], [], []
    for plan in plans:
        kind = judgments.kind_of(plan.group)
        g = writer.create_group(plan.group, plan.n, (size, size), plan.source, names=True)
        writer.fill(g, 0, {"names": np.array(plan.names, dtype=object)})
        datasets.append((g, [_RowWriter(g[key]) for key in judgments.image_keys(kind)]))
        targets.append(np.zeros(plan.n, np.float32))
        filled.append(np.zeros((plan.n, len(FOLDERS[kind])), bool))
    ahead = max(2, min(4 * decoder.workers, IN_FLIGHT_BYTES // MEMBER_CHUNK_BYTES))
    for archive in archives:
        bar.set_description(f"pack {archive.path.name}")
        members = _member_tasks(plans, archive, size, bar)
        try:
            for (i, f, row), value in decoder.decoded_chunks(chunks(members, MEMBER_CHUNK, MEMBER_CHUNK_BYTES), ahead):
                filled[i][row, f] = True
                if isinstance(value, np.ndarray):
                    datasets[i][1][f].put(row, value)
                else:
                    targets[i][row] = value
                check()
        finally:
            members.close()
    for i, plan in enumerate(plans):
        if not filled[i].all():  # (cannot happen: pass 1 paired every stem)
            raise PackError(f"{plan.source}: not every member was found again; run pack again")
        writer.fill(datasets[i][0], 0, {judgments.TARGET[judgments.kind_of(plan.group)]: targets[i]})


class _RowWriter:
    """Writes one image at a time into a dataset of one image per chunk (straight into its chunk when it can)."""

    def __init__(self, ds) -> None:
        self.ds = ds
        self.direct = ds.chunks == (1, *ds.shape[1:]) and ds.id.get_create_plist().get_nfilters() == 0

    def put(self, row: int, image: np.ndarray) -> None:
        if self.direct:  # 20 us instead of 170 for ds[row] = image
            self.ds.id.write_direct_chunk((row, 0, 0, 0), np.ascontiguousarray(image, np.uint8).tobytes())
        else:
            self.ds[row] = image
