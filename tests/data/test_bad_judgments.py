"""Judgments files that read back wrong, change under a fit, or block: read right or refused in one line.

HDF5 storage the project's writer never makes (checksums, scale-offset, chunks never written), a
file replaced or rewritten while a dataset reads it, and named pipes where a file belongs (an
image, ``--data``): each either reads the same images as the packed file or is refused in one
line naming the file, never zeros, a traceback or a hang.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import assert_refused, make_bapps, training_args
from PIL import Image

from lpips_lightning.cli.main import main
from lpips_lightning.data.datamodule import JudgmentsDataModule
from lpips_lightning.data.dataset import JudgmentsDataset
from lpips_lightning.errors import JudgmentsError, PackError
from lpips_lightning.images import load_image
from lpips_lightning.pack.pack import pack

TRAIN, VAL = "2afc/train/trad", "2afc/val/cnn"


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """A tiny judgments file written by the project's own writer (`pack`)."""
    root = tmp_path_factory.mktemp("bad_judgments")
    make_bapps(root / "b", n=6, size=32)
    return pack(root / "b", root / "good.h5", size=32, workers=1, progress=False)


def _rewritten(good: Path, out: Path, key: str, how: str, groups=(TRAIN, VAL)) -> Path:
    """A copy of `good` whose `key` datasets in `groups` are stored another way (`how`)."""
    shutil.copyfile(good, out)
    with h5py.File(out, "r+") as f:
        for group in groups:
            g = f[group]
            data = g[key][()]
            del g[key]
            chunks = (1, *data.shape[1:]) if data.ndim > 1 else None
            options = {
                "fletcher32": dict(fletcher32=True, chunks=chunks),
                "scaleoffset": dict(scaleoffset=0, chunks=chunks),
                "shuffle+gzip": dict(shuffle=True, compression="gzip", chunks=chunks),
                "unwritten chunks": dict(chunks=chunks),
                "unwritten column": {},
            }[how]
            d = g.create_dataset(key, shape=data.shape, dtype=data.dtype, **options)
            if how == "unwritten chunks":
                d[:2] = data[:2]  # chunks 2.. are never written
            elif how != "unwritten column":
                d[...] = data
    return out


READABLE = ["fletcher32", "scaleoffset", "shuffle+gzip"]
UNWRITTEN = {"unwritten chunks": "p1", "unwritten column": "judge"}


def _images(path: Path, group: str) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[group][k][()] for k in ("ref", "p0", "p1")}


@pytest.mark.parametrize("in_memory", [False, True])
@pytest.mark.parametrize("how", READABLE)
def test_filtered_images_read_as_the_packed_file(packed, tmp_path, how, in_memory):
    """Lazily read through the raw-chunk path they would be checksums and packed bytes: h5py decodes them."""
    variant = _rewritten(packed, tmp_path / "v.h5", "p1", how)
    with h5py.File(variant, "r") as f:
        assert f[TRAIN]["p1"].id.get_create_plist().get_nfilters() >= 1  # the variant is really filtered
    dm = JudgmentsDataModule(str(variant), batch_size=4, in_memory=in_memory, on_device=False)
    dm.setup("fit")
    for ds, group in ((dm.datasets["train"][0], TRAIN), (dm.datasets["val"][0], VAL)):
        expected = _images(packed, group)
        batch = ds.__getitems__(list(range(len(ds))))
        for k, v in expected.items():
            np.testing.assert_array_equal(batch[k].numpy(), v, err_msg=f"{how} {group} {k}")
        assert expected["p1"].any()  # real images, not zeros


@pytest.mark.parametrize("in_memory", [False, True])
@pytest.mark.parametrize("how", list(UNWRITTEN))
def test_data_never_written_is_refused_at_open(packed, tmp_path, how, in_memory):
    """HDF5 reads unallocated storage as zeros: black images (or judgments of 0) would train, exit 0."""
    key = UNWRITTEN[how]
    variant = _rewritten(packed, tmp_path / "v.h5", key, how)
    with pytest.raises(JudgmentsError) as caught:
        JudgmentsDataModule(str(variant), batch_size=4, in_memory=in_memory, on_device=False).setup("fit")
    line = str(caught.value)
    assert "\n" not in line
    assert line.startswith(f"{variant}: group {TRAIN}: {key} has ") and "never written" in line, line
    with pytest.raises(JudgmentsError, match="never written"):
        JudgmentsDataset(variant, [VAL], in_memory=in_memory)


@pytest.mark.parametrize("how", READABLE + list(UNWRITTEN))
def test_evaluate_scores_filtered_files_as_the_packed_one_and_refuses_unwritten_ones(packed, tmp_path, capfd, how):
    key = UNWRITTEN.get(how, "p1")
    variant = _rewritten(packed, tmp_path / "v.h5", key, how, groups=(VAL,))
    args = ["evaluate", "l2", "--groups", VAL, "--quiet", "--data"]
    if how in UNWRITTEN:
        line = assert_refused([*args, str(variant)], capfd, tmp_path)
        assert f"{variant}: group {VAL}: {key} has " in line and "never written" in line, line
        return
    capfd.readouterr()
    assert main([*args, str(packed)]) == 0
    expected = capfd.readouterr().out
    assert main([*args, str(variant)]) == 0
    assert capfd.readouterr().out == expected


def test_fit_refuses_unwritten_chunks_before_training(packed, tmp_path, capfd):
    variant = _rewritten(packed, tmp_path / "v.h5", "p1", "unwritten chunks")
    args = training_args(tmp_path / "runs", variant, "--data.val", f"[{VAL}]")
    line = assert_refused(["fit", *args], capfd, tmp_path)
    assert f"{variant}: group {TRAIN}: p1 has 4 of its 6 chunk(s) never written" in line, line


# --- a file replaced or rewritten while it is being read ---------------------------------------------
def _other_file(packed: Path, out: Path, same_size: bool) -> Path:
    """Another judgments file: the same layout with other judgments (and, unless `same_size`, more bytes)."""
    shutil.copyfile(packed, out)
    with h5py.File(out, "r+") as f:
        f[VAL]["judge"][...] = 1 - f[VAL]["judge"][()]
        if not same_size:
            f.attrs["note"] = "x" * 5000
    return out


def _replace_by_rename(live: Path, other: Path) -> None:
    tmp = live.with_name("incoming.tmp")
    shutil.copyfile(other, tmp)
    os.replace(tmp, live)


CHANGES = {
    "replaced (os.replace)": (_replace_by_rename, False, "another file was put in its place"),
    "copied over (cp other live)": (lambda live, other: shutil.copyfile(other, live), False, "rewritten: "),
    "rewritten in place, same size": (lambda live, other: shutil.copyfile(other, live), True, "rewritten in place"),
    "removed": (lambda live, other: live.unlink(), False, "it was removed"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_file_changed_under_a_lazy_dataset_stops_its_next_read(packed, tmp_path, change):
    do, same_size, how = CHANGES[change]
    live = tmp_path / "live.h5"
    shutil.copyfile(packed, live)
    old = live.stat().st_mtime_ns - 5 * 10**9  # the change is later than the file, even on a coarse clock
    os.utime(live, ns=(old, old))
    other = _other_file(packed, tmp_path / "other.h5", same_size)
    assert (other.stat().st_size == live.stat().st_size) == same_size
    dm = JudgmentsDataModule(str(live), batch_size=3, in_memory=False, on_device=False)
    dm.setup("fit")
    val = dm.val_dataloader()[0]
    batches = iter(val)
    first = next(batches)
    np.testing.assert_array_equal(first["p1"].numpy(), _images(packed, VAL)["p1"][:3])
    do(live, other)
    with pytest.raises(JudgmentsError) as caught:
        next(batches)
    line = str(caught.value)
    assert line.startswith(f"{live} changed while it was being read ({how}") and line.endswith("): stop"), line
    assert "\n" not in line
    with pytest.raises(JudgmentsError, match="changed while it was being read"):  # training reads stop too
        dm.datasets["train"][0].read_images([0, 1])


def test_an_unchanged_file_reads_on(packed, tmp_path):
    """The check has no false alarm: reading (and opening the file elsewhere to read) changes nothing."""
    ds = JudgmentsDataset(packed, [VAL])
    with h5py.File(packed, "r") as f:
        expected = f[VAL]["p0"][()]
    for _ in range(3):
        np.testing.assert_array_equal(ds.read_images(range(len(ds)))["p0"].numpy(), expected)


# --- named pipes where a file belongs ------------------------------------------------------------------
WATCHDOG = """
import os, sys, time
time.sleep(float(sys.argv[2]))
while True:
    try:
        os.close(os.open(sys.argv[1], os.O_WRONLY | os.O_NONBLOCK))  # only succeeds while a reader waits
        print("fired", flush=True)
    except OSError:
        pass
    time.sleep(0.1)
"""


@contextmanager
def _never_blocking(fifo: Path, seconds: float = 20):
    """Should the code under test open `fifo` and block, a writer opens and closes it, again and again
    after `seconds`: each open returns (end of file) and the test fails instead of hanging.

    A process, not a thread: h5py holds the GIL while HDF5 opens a file.
    """
    watchdog = subprocess.Popen([sys.executable, "-c", WATCHDOG, str(fifo), str(seconds)], stdout=subprocess.PIPE)
    try:
        yield
    finally:
        watchdog.kill()
        fired = watchdog.communicate()[0]
    assert not fired, f"{fifo} was opened and blocked"


@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "pipe.h5"
    os.mkfifo(path)
    return path


def test_distance_refuses_a_pipe_as_an_image(tmp_path, capfd, fifo):
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(img)
    for pair in ([fifo, img], [img, fifo]):
        with _never_blocking(fifo):
            line = assert_refused(["distance", *map(str, pair)], capfd, tmp_path)
        assert line == f"error: {fifo}: not a regular file (a device, pipe or socket), not an image file", line
    with _never_blocking(fifo), pytest.raises(PackError, match="not a regular file"):
        load_image(fifo)


def test_a_pipe_as_the_judgments_file_is_refused(tmp_path, capfd, fifo):
    expected = f"{fifo}: not a regular file (a device, pipe or socket), not a judgments file"
    with _never_blocking(fifo), pytest.raises(JudgmentsError) as caught:
        JudgmentsDataModule(str(fifo))
    assert str(caught.value) == expected
    with _never_blocking(fifo), pytest.raises(JudgmentsError, match="not a regular file"):
        JudgmentsDataset(fifo, [VAL])
    with _never_blocking(fifo):
        line = assert_refused(["evaluate", "l2", "--data", str(fifo), "--quiet"], capfd, tmp_path)
    assert line == f"error: {expected}", line
    with _never_blocking(fifo):
        line = assert_refused(["fit", *training_args(tmp_path / "runs", fifo)], capfd, tmp_path)
    assert line == f"error: {expected}", line
