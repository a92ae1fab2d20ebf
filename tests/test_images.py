"""`images.load_image`: any image file (or its bytes) as RGB uint8, 16-bit samples scaled, not clipped."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pytest
import torch
from conftest import SAMPLES_16, rgb16_samples, write_png16
from PIL import Image, PngImagePlugin

from lpips_lightning.images import load_image
from lpips_lightning.pack.pack import pack

SAMPLES = np.array(SAMPLES_16, np.uint16)


def _pgm16(path, samples: np.ndarray, maxval: int = 65535) -> None:
    h, w = samples.shape
    path.write_bytes(b"P5\n%d %d\n%d\n" % (w, h, maxval) + samples.astype(">u2").tobytes())


def _to8(v) -> np.ndarray:
    """The expected 8-bit value of 16-bit samples: v * 255 / 65535, rounded."""
    return np.floor(np.asarray(v, np.float64) * 255 / 65535 + 0.5).astype(np.uint8)


@pytest.mark.parametrize(
    "kind",
    [
        "gray16-png",
        "gray16-pgm (mode I)",
        "gray12-pgm",
        "gray16-tiff-big-endian",
        "rgb16-png",
        "rgba16-png",
        "gray-alpha16-png",
        "rgb16-tiff",
    ],
)
def test_16_bit_images_are_scaled_not_clipped(tmp_path, kind):
    path = tmp_path / "im.png"
    rgb = rgb16_samples()
    expected = np.repeat(_to8(SAMPLES)[..., None], 3, axis=2)
    if kind == "gray16-png":
        Image.fromarray(SAMPLES).save(path)
        assert Image.open(path).mode == "I;16"
    elif kind == "gray16-pgm (mode I)":
        path = tmp_path / "im.pgm"
        _pgm16(path, SAMPLES)
        assert Image.open(path).mode == "I"  # 16-bit samples in a 32-bit PIL image
    elif kind == "gray12-pgm":
        path = tmp_path / "im.pgm"
        twelve = SAMPLES // 16
        _pgm16(path, twelve, maxval=4095)
        expected = np.repeat(np.floor(twelve.astype(float) * 255 / 4095 + 0.5).astype(np.uint8)[..., None], 3, axis=2)
    elif kind == "gray16-tiff-big-endian":
        tifffile = pytest.importorskip("tifffile")
        path = tmp_path / "im.tif"
        tifffile.imwrite(path, SAMPLES.astype(">u2"), byteorder=">")
        assert Image.open(path).mode == "I;16B"
    elif kind == "rgb16-png":
        write_png16(path, rgb, 2)
        expected = _to8(rgb)
    elif kind == "rgba16-png":
        write_png16(path, np.concatenate([rgb, np.full((2, 4, 1), 65535, np.uint16)], axis=2), 6)
        expected = _to8(rgb)
    elif kind == "gray-alpha16-png":
        write_png16(path, np.stack([SAMPLES, np.full_like(SAMPLES, 65535)], axis=-1), 4)
    elif kind == "rgb16-tiff":
        tifffile = pytest.importorskip("tifffile")
        path = tmp_path / "im.tif"
        tifffile.imwrite(path, rgb, photometric="rgb")
        expected = _to8(rgb)
    np.testing.assert_array_equal(load_image(path), expected)
    np.testing.assert_array_equal(load_image(path.read_bytes(), name=path.name), expected)  # an archive member
    # and through pack, at the image's own size: the stored pixels are the same numbers
    (tmp_path / "j.csv").write_text(f"ref,p0,p1,judge\n{path.name},{path.name},{path.name},0.5\n")
    out = pack(tmp_path / "j.csv", tmp_path / "o.h5", size=4, workers=1, progress=False)
    resized = np.asarray(Image.fromarray(expected).resize((4, 4), Image.BILINEAR)).transpose(2, 0, 1)
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["2afc/train/j/ref"][0], resized)


def test_16_bit_png_opened_as_mode_i(tmp_path, monkeypatch):
    """Older Pillow releases open a 16-bit gray PNG as a 32-bit "I" image: still scaled as 16-bit."""
    Image.fromarray(SAMPLES).save(tmp_path / "g.png")
    monkeypatch.setitem(PngImagePlugin._MODES, (16, 0), ("I", "I;16B"))
    assert Image.open(tmp_path / "g.png").mode == "I"
    np.testing.assert_array_equal(load_image(tmp_path / "g.png")[..., 0], _to8(SAMPLES))


def test_load_image_returns_a_writable_array(tmp_path):
    Image.fromarray(np.full((8, 8, 3), 0, np.uint8)).save(tmp_path / "im0.png")
    for size in (None, 4):
        image = load_image(tmp_path / "im0.png", size)
        assert image.flags.writeable and image.dtype == np.uint8 and image.shape[2] == 3
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            torch.from_numpy(image)  # no "array is not writable" warning
