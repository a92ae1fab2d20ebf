"""Where `export` meets its limits: a capped ``--size``, a full disk, too little memory; one line each.

A full disk is simulated by the temporary file's write failing with ``ENOSPC`` after half the
bytes (a real file system cannot be filled here): every format writes its bytes with Python, so
the failure is an `OSError`, never a C++ abort, and nothing is left behind.
"""

from __future__ import annotations

import errno
import io
from pathlib import Path

import pytest
import torch
from conftest import assert_refused, snapshot

from lpips_lightning.cli.main import main
from lpips_lightning.export import torchscript_format
from lpips_lightning.export.write import MAX_SIZE

pytestmark = pytest.mark.usefixtures("one_thread")

FORMATS = [".pth", ".safetensors", ".pt", pytest.param(".onnx", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def ckpt(trained) -> Path:
    return trained["lin"][".ckpt"]


@pytest.mark.parametrize("size", [str(MAX_SIZE + 1), "20000", "0", "-3"])
def test_export_size_is_capped_in_one_line(ckpt, tmp_path, capfd, size):
    err = assert_refused(["export", str(ckpt), str(tmp_path / "m.pt"), "--size", size], capfd, tmp_path)
    assert f"--size must be a number of pixels from 1 to {MAX_SIZE}, got {size}" in err
    assert not list(tmp_path.iterdir())


def _half_then_disk_full(original):
    """`Path.write_bytes` that writes half of a temporary file's bytes, then fails as a full disk does."""

    def write_bytes(self: Path, data: bytes) -> int:
        if ".tmp-" not in self.name:
            return original(self, data)
        original(self, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    return write_bytes


def _disk_full_writers(monkeypatch, suffix: str) -> None:
    monkeypatch.setattr(Path, "write_bytes", _half_then_disk_full(Path.write_bytes))
    if suffix == ".onnx":  # onnx writes with its own open(): fail there too, after half the bytes
        import onnx

        original = onnx.save

        def save(proto, f, *args, **kwargs):
            buffer = io.BytesIO()
            original(proto, buffer, *args, **kwargs)
            Path(f).open("wb").write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(onnx, "save", save)


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_full_disk_is_one_line_and_leaves_nothing(ckpt, tmp_path, capfd, monkeypatch, suffix):
    out = tmp_path / f"m{suffix}"
    _disk_full_writers(monkeypatch, suffix)
    err = assert_refused(["export", str(ckpt), str(out)], capfd, tmp_path)
    assert f"{out}: the disk is full (No space left on device)" in err, err
    assert not list(tmp_path.iterdir()), "no temporary file and no output left behind"


@pytest.mark.parametrize("suffix", [".pth", ".pt"])
def test_a_full_disk_keeps_the_file_it_would_have_replaced(ckpt, tmp_path, capfd, monkeypatch, suffix):
    out = tmp_path / f"m{suffix}"
    out.write_bytes(b"the good export")
    _disk_full_writers(monkeypatch, suffix)
    assert "the disk is full" in assert_refused(["export", str(ckpt), str(out), "--overwrite"], capfd, tmp_path)
    assert out.read_bytes() == b"the good export" and [p.name for p in tmp_path.iterdir()] == [out.name]


def test_torchscript_is_saved_through_memory_never_by_torch_own_file_writer(ckpt, tmp_path, monkeypatch):
    """torch.jit.save writing a file itself aborts the interpreter when the disk fills (SIGABRT)."""
    targets = []
    original = torch.jit.save

    def save(module, f, *args, **kwargs):
        targets.append(f)
        return original(module, f, *args, **kwargs)

    monkeypatch.setattr(torchscript_format.torch.jit, "save", save)
    assert main(["export", str(ckpt), str(tmp_path / "m.pt")]) == 0
    assert targets and all(isinstance(f, io.BytesIO) for f in targets), targets
    assert torch.jit.load(str(tmp_path / "m.pt")) is not None


def test_other_write_errors_stay_one_line(ckpt, tmp_path, capfd, monkeypatch):
    def denied(self, data):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "write_bytes", denied)
    err = assert_refused(["export", str(ckpt), str(tmp_path / "m.pth")], capfd, tmp_path)
    assert "cannot write the lpips export (Permission denied)" in err
    assert not list(tmp_path.iterdir())


def test_export_out_of_memory_is_one_line_that_says_size(ckpt, tmp_path, capfd, monkeypatch):
    def trace(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")

    monkeypatch.setattr(torchscript_format.torch.jit, "trace", trace)
    before = snapshot(tmp_path)
    err = assert_refused(["export", str(ckpt), str(tmp_path / "m.pt"), "--size", "4000"], capfd, tmp_path)
    assert "out of memory for the torchscript export at --size 4000; pass a smaller --size" in err
    assert snapshot(tmp_path) == before
