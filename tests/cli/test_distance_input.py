"""`distance` without a model file: bad images and options are refused in one line; good ones print one number."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import assert_refused
from PIL import Image

from lpips_lightning.cli.main import main

MIN_ALEX = "smaller than the 31x31 minimum of backbone alex"

pytestmark = pytest.mark.usefixtures("one_thread")


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def pngs(tmp_path):
    rng = np.random.default_rng(3)
    return [_png(tmp_path / f"{n}.png", rng.integers(0, 256, (44, 52, 3), dtype=np.uint8)) for n in ("a", "b")]


def test_distance_refuses_tiny_images(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights"))  # refused before any weights are needed
    a = _png(tmp_path / "a.png", np.zeros((1, 1, 3), np.uint8))
    b = _png(tmp_path / "b.png", np.full((1, 1, 3), 9, np.uint8))
    line = assert_refused(["distance", str(a), str(b)], capfd, tmp_path)
    assert "a.png" in line and "images of 1x1 pixels are " + MIN_ALEX in line and "--resize N with N >= 31" in line
    line = assert_refused(["distance", str(a), str(b), "--backbone", "vgg", "--resize", "15"], capfd, tmp_path)
    assert "images of 15x15 pixels are smaller than the 16x16 minimum of backbone vgg" in line


def test_distance_bad_input_one_line(pngs, tmp_path, capfd, imagenet_cache):
    a, b = map(str, pngs)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    cases = [
        (["distance", a, str(tmp_path / "nope.png")], "nope.png: no such image file"),
        (["distance", a, str(tmp_path / "broken.png")], "broken.png: image does not decode"),
        (["distance", a, b, "--backbone", "resnet"], "unknown backbone 'resnet'; choose one of: alex, vgg, squeeze"),
        (["distance", a, b, "--version", "0.0"], "--version 0.0 has no official heads"),
        (["distance", a, b, "--version", "0.2", "--heads", "none"], "unknown version '0.2'"),
        (["distance", a, b, "--resize", "0"], "must be a number of pixels from 1 to 4096, got 0"),
        (["distance", a, b, "--resize", "-3"], "must be a number of pixels from 1 to 4096, got -3"),
        (["distance", a, b, "--resize", "100000"], "must be a number of pixels from 1 to 4096, got 100000"),
        (["distance", a, b, "--model", str(tmp_path / "nope.pt")], "nope.pt: no such model file"),
        (["distance", a, b, "--heads", str(tmp_path / "nope.pth")], "nope.pth: no such weights file"),
    ]
    for argv, message in cases:
        line = assert_refused(argv, capfd, tmp_path)
        assert message in line, (argv, line)


def test_distance_works_without_warnings(pngs, capfd, imagenet_cache):
    assert main(["distance", *map(str, pngs), "--resize", "32"]) == 0
    out, err = capfd.readouterr()
    assert float(out) >= 0 and not err.strip(), err
