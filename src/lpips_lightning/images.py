"""An image file as RGB uint8: the one decoder every command uses (pack, distance).

`load_image` opens a file, or the encoded bytes of one (an archive member), with PIL and
returns RGB uint8 (H, W, 3), resized when asked (PIL bilinear, as the original loader).
16-bit images (PNG, TIFF, PGM/PPM; gray or colour) are scaled to 8 bits, not clipped: PIL
keeps only the high byte of 16-bit colour, so those are decoded a second time with the
tiles' raw mode swapped to the other byte order to recover the low byte. 32-bit integer and
floating-point images have no fixed white level and are refused, as is anything PIL cannot
decode, in one `PackError` line naming the file; so is a pipe, device or socket, before it is
opened (a pipe would block forever).
"""

from __future__ import annotations

import io
import os
import stat
import sys
import warnings

import numpy as np
from PIL import Image

from .errors import LPIPSLightningError, PackError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}

_SIXTEEN_BIT_GRAY = {"I;16", "I;16L", "I;16B", "I;16N"}
# 16-bit colour: PIL keeps the high byte of each sample; the same data decoded with the other
# byte order gives the low byte. (Gray + alpha: its 32 bits read as RGBA are Lhi, Llo, Ahi, Alo.)
_NATIVE = "L" if sys.byteorder == "little" else "B"
_LOW_BYTES = {
    **{f"{m};16{e}": f"{m};16{'B' if e == 'L' else 'L'}" for m in ("RGB", "RGBA") for e in "LB"},
    **{f"{m};16N": f"{m};16{'B' if _NATIVE == 'L' else 'L'}" for m in ("RGB", "RGBA")},
    "LA;16B": "RGBA",
}


def _rawmodes(im: Image.Image) -> set[str]:
    """The raw modes PIL will decode `im`'s tiles with (read before `load`, which clears them)."""
    found = set()
    for tile in getattr(im, "tile", None) or ():
        args = tile[3]
        raw = args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args else None
        if isinstance(raw, str):
            found.add(raw)
    return found


def _to_8bit(values: np.ndarray) -> np.ndarray:
    """16-bit samples (0..65535) to 8 bits: value * 255 / 65535, rounded (never a tie)."""
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _open_image(source: str | os.PathLike | bytes) -> Image.Image:
    """PIL's lazy open of a file, or of an image's encoded bytes (an archive member)."""
    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)


def _check_regular(path: str | os.PathLike) -> None:
    """Refuse a pipe, device or socket before it is opened (a pipe would block the open forever).

    A missing file or a folder is left to the open, which names it.
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # missing, or a name the system cannot take
        return
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise PackError(f"{path}: not a regular file (a device, pipe or socket), not an image file")


def _sixteen_bit_colour(source: str | os.PathLike | bytes, high: np.ndarray, raw: str) -> np.ndarray:
    """RGB uint8 of a 16-bit colour image PIL decoded to `high` (its high bytes), correctly rounded.

    Decodes the image again with the low bytes; if PIL cannot, the high bytes stand (within one
    level of the rounded value, never clipped).
    """
    try:
        with _open_image(source) as im:
            im.tile = [(*t[:3], _swap_raw(t[3])) for t in im.tile]
            im.load()
            low = np.array(im)
    except Exception:
        return high
    if raw == "LA;16B":  # low = (Lhi, Llo, Ahi, Alo)
        gray = _to_8bit(low[..., 0].astype(np.uint32) * 256 + low[..., 1])
        return np.repeat(gray[..., None], 3, axis=2)
    if low.shape[:2] != high.shape[:2] or low.ndim != 3:
        return high
    return _to_8bit(high[..., :3].astype(np.uint32) * 256 + low[..., :3])


def _swap_raw(args):
    if isinstance(args, str):
        return _LOW_BYTES[args]
    return (_LOW_BYTES[args[0]], *args[1:])


def _rgb8(im: Image.Image, source: str | os.PathLike | bytes, path: str | os.PathLike) -> np.ndarray:
    """Any decodable image as RGB uint8 (H, W, 3), 16-bit samples scaled (not clipped) to 8 bits.

    `source` is what `im` was opened from (to decode it again), `path` its name in messages.
    """
    raws = _rawmodes(im)
    mode = im.mode
    if mode in _SIXTEEN_BIT_GRAY or (
        mode == "I" and (im.format in ("PNG", "PPM") or any(r.startswith("I;16") and r[-1:] != "S" for r in raws))
    ):
        values = np.array(im)
        if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
            raise PackError(f"{path}: 16-bit image with values outside 0..65535")
        return np.repeat(_to_8bit(values)[..., None], 3, axis=2)
    if mode == "I":
        values = np.array(im)
        lo, hi = (values.min(), values.max()) if values.size else (0, 0)
        raise PackError(
            f"{path}: signed or 32-bit integer pixels (values {lo}..{hi}) have no fixed white level; "
            "save the image as 8- or 16-bit"
        )
    if mode == "F":
        raise PackError(
            f"{path}: floating-point pixels (mode F) have no fixed white level; save the image as 8- or 16-bit"
        )
    colour16 = next((r for r in raws if r in _LOW_BYTES), None)
    try:
        rgb = np.array(im.convert("RGB"))
    except ValueError as err:  # e.g. LAB, HSV
        raise PackError(f"{path}: cannot convert PIL mode {mode} to RGB ({err})") from None
    if colour16 is not None:
        rgb = _sixteen_bit_colour(source, rgb, colour16)
    return rgb


def load_image(path: str | os.PathLike | bytes, size: int | None = None, name: str | None = None) -> np.ndarray:
    """Decode an image to RGB uint8 (H, W, 3), resized to size x size (PIL bilinear) when given.

    `path` is a file, or the encoded bytes of one (an archive member; `name` names it in
    messages). 16-bit images (PNG, TIFF, PGM/PPM; gray or colour) are scaled to 8 bits
    (value * 255 / 65535, rounded); 32-bit integer and floating-point images are refused. The
    array is writable.
    """
    source, path = path, name or path
    if not isinstance(source, bytes):
        _check_regular(source)
    try:
        with warnings.catch_warnings():  # PIL warns (twice, over several lines) above 89M pixels: they decode
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open_image(source) as im:
                rgb = _rgb8(im, source, path)
        if size and rgb.shape[:2] != (size, size):
            rgb = np.array(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))
        return rgb
    except LPIPSLightningError:
        raise
    except Image.DecompressionBombError as err:
        raise PackError(f"{path}: image too large to decode safely ({str(err).split(',')[0]})") from None
    except FileNotFoundError:
        raise PackError(f"{path}: no such image file") from None
    except IsADirectoryError:
        raise PackError(f"{path}: is a folder, not an image file") from None
    except Exception as err:  # PIL raises many kinds for broken files
        empty = source == b"" if isinstance(source, bytes) else _is_empty(source)
        raise PackError(
            f"{path}: "
            + ("empty file (0 bytes), not an image" if empty else f"image does not decode ({type(err).__name__})")
        ) from None


def _is_empty(path: str | os.PathLike) -> bool:
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False
