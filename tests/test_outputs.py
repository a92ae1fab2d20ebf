"""`outputs.atomic_output`: a temporary name beside the target, renamed when complete; only its own temps go."""

from __future__ import annotations

import os

import pytest

from lpips_lightning import outputs
from lpips_lightning.errors import OutputError


def test_clean_up_removes_only_this_process_temp_even_with_glob_characters(tmp_path):
    """``.o[1].h5.tmp-PID`` is removed on failure (its name is not a pattern), while another live
    process's ``.o[1].h5.tmp-PID7`` (same prefix) is kept."""
    out = tmp_path / "o[1].h5"
    other = outputs.temp_name(out, int(f"{os.getpid()}7"))
    with pytest.raises(RuntimeError):
        with outputs.atomic_output(out) as tmp:
            other.write_bytes(b"another writer's half file")
            tmp.write_bytes(b"half")
            (tmp.parent / (tmp.name + ".data")).write_bytes(b"an ONNX side file")
            raise RuntimeError("failed half-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name]


def test_outputs_get_the_usual_mode_for_new_files(tmp_path):
    mask = os.umask(0o027)
    try:
        with outputs.atomic_output(tmp_path / "o.bin") as tmp:
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)  # a writer that creates its file private
            os.close(fd)
    finally:
        os.umask(mask)
    assert (tmp_path / "o.bin").stat().st_mode & 0o777 == 0o640


def test_outputs_on_a_file_system_without_hard_links_or_modes(tmp_path, monkeypatch):
    """FAT/exFAT: chmod fails and there are no hard links; the output is still written, and still
    never replaces a file that appeared meanwhile."""

    def refused(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "chmod", refused)
    monkeypatch.setattr(os, "link", refused)
    with outputs.atomic_output(tmp_path / "o.bin") as tmp:
        os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600))
    assert [p.name for p in tmp_path.iterdir()] == ["o.bin"]
    with pytest.raises(OutputError, match="created by another process"):
        with outputs.atomic_output(tmp_path / "p.bin") as tmp:
            tmp.write_bytes(b"mine")
            (tmp_path / "p.bin").write_bytes(b"theirs")
    assert (tmp_path / "p.bin").read_bytes() == b"theirs"


def test_size_text():
    assert [outputs.size_text(n) for n in (None, 17, 3200, 12_000_000, 1_500_000_000)] == [
        "unknown size",
        "17 bytes",
        "3.2 kB",
        "12.0 MB",
        "1.5 GB",
    ]
