"""The demo judgments: real photographs, traditional distortions, a simulated panel of observers.

The photographs are the ones scikit-image ships in its wheel, so the demo needs no download.
Training triplets come from one set of photos, validation triplets and JND pairs from
others. Each distortion (noise, blur, JPEG, colour, lightness, contrast, small shifts) has a
strength in [0, 1] and a perceptual cost that grows with it; how much each kind costs, and
that small shifts cost less than noise although they move every pixel, is this simulation's
assumption. Each simulated observer sees the two costs with noise and picks the smaller, so
judgments are fractions with realistic disagreement (2 observers per training triplet and 5
per validation triplet, as in BAPPS; 3 per JND pair). **The judgments are simulated**: use
the demo to try the tool, not to report perceptual results.

``lpips-lightning demo-data OUT.h5 [--seed 0]`` writes it; `ensure_demo` builds the cached
copy that ``datamodules/demo.yaml`` (path ``demo``) uses.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ..errors import JudgmentsError
from ..outputs import cache_dir
from . import judgments

DEMO_VERSION = 1
TRAIN_PHOTOS = (
    "astronaut.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "camera.png",
    "brick.png",
    "grass.png",
    "moon.png",
    "page.png",
    "text.png",
)
VAL_PHOTOS = ("chelsea.png", "retina.jpg", "gravel.png", "coins.png")
# perceptual cost of each distortion at full strength (the simulation's assumption)
COSTS = {"noise": 1.0, "blur": 0.9, "jpeg": 0.8, "contrast": 0.45, "color": 0.5, "lightness": 0.35, "shift": 0.55}
OBSERVER_NOISE = 0.06  # spread of each observer's perceived cost
SIZE = 64


def _photo(name: str) -> np.ndarray:
    """A photograph from scikit-image's wheel (read from its data folder: never downloaded)."""
    import skimage.data  # heavy (about a second): only building the demo needs it

    with Image.open(Path(skimage.data.__file__).parent / name) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _patch(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = photo.shape[:2]
    side = int(rng.integers(SIZE, min(160, h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[y : y + side, x : x + side])
    return np.asarray(crop.resize((SIZE, SIZE), Image.BILINEAR))


def distort(img: np.ndarray, kind: str, s: float, rng: np.random.Generator) -> np.ndarray:
    """Apply distortion `kind` at strength `s` in [0, 1] to a uint8 (H, W, 3) image."""
    s = float(s)
    x = img.astype(np.float32)
    if kind == "noise":
        x = x + rng.normal(0, 45 * s, x.shape)
    elif kind == "blur":
        return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(0.3 + 2.7 * s)))
    elif kind == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=int(round(60 - 55 * s)))
        return np.asarray(Image.open(buf).convert("RGB"))
    elif kind == "contrast":
        x = (x - x.mean()) * (1 - 0.7 * s) + x.mean()
    elif kind == "color":
        x = x * (1 + 0.6 * s * rng.choice([-1, 1], 3) * rng.uniform(0.5, 1, 3))
    elif kind == "lightness":
        x = x + rng.choice([-1, 1]) * 70 * s
    elif kind == "shift":
        d = max(1, int(round(3 * s)))
        dy, dx = rng.choice([-1, 0, 1], 2) if rng.random() < 0.5 else (d * rng.choice([-1, 1]), 0)
        x = np.roll(np.pad(x, ((3, 3), (3, 3), (0, 0)), mode="reflect"), (int(dy), int(dx)), (0, 1))[3:-3, 3:-3]
    else:
        raise ValueError(f"unknown distortion {kind}")
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _cost(kind: str, s: float) -> float:
    return COSTS[kind] * s**0.8


def _triplets(photos: list[np.ndarray], n: int, observers: int, rng: np.random.Generator, same_kind: bool):
    kinds = list(COSTS)
    ref = np.empty((n, 3, SIZE, SIZE), np.uint8)
    p0, p1 = np.empty_like(ref), np.empty_like(ref)
    judge = np.empty(n, np.float32)
    for i in range(n):
        r = _patch(photos[int(rng.integers(len(photos)))], rng)
        k0 = kinds[int(rng.integers(len(kinds)))]
        k1 = k0 if same_kind else kinds[int(rng.integers(len(kinds)))]
        s0, s1 = rng.uniform(0.1, 1.0, 2)
        ref[i] = r.transpose(2, 0, 1)
        p0[i] = distort(r, k0, s0, rng).transpose(2, 0, 1)
        p1[i] = distort(r, k1, s1, rng).transpose(2, 0, 1)
        seen0 = _cost(k0, s0) + rng.normal(0, OBSERVER_NOISE, observers)
        seen1 = _cost(k1, s1) + rng.normal(0, OBSERVER_NOISE, observers)
        judge[i] = np.mean(seen1 < seen0)  # fraction who found p1 closer to the reference
    return {"ref": ref, "p0": p0, "p1": p1, "judge": judge}


def _jnd(photos: list[np.ndarray], n: int, observers: int, rng: np.random.Generator):
    kinds = list(COSTS)
    p0 = np.empty((n, 3, SIZE, SIZE), np.uint8)
    p1 = np.empty_like(p0)
    same = np.empty(n, np.float32)
    for i in range(n):
        r = _patch(photos[int(rng.integers(len(photos)))], rng)
        k, s = kinds[int(rng.integers(len(kinds)))], float(rng.uniform(0.0, 0.6))
        p0[i], p1[i] = r.transpose(2, 0, 1), distort(r, k, s, rng).transpose(2, 0, 1)
        seen = _cost(k, s) + rng.normal(0, OBSERVER_NOISE, observers)
        same[i] = np.mean(seen < 0.15)  # fraction who could not tell the two apart
    return {"p0": p0, "p1": p1, "same": same}


def build_demo(
    out: str | os.PathLike,
    seed: int = 0,
    n_train: int = 4000,
    n_val: int = 500,
    n_jnd: int = 500,
    overwrite: bool = False,
) -> Path:
    """Write the demo judgments file; the same seed gives the same file contents."""
    rng = np.random.default_rng(seed)
    train_photos = [_photo(p) for p in TRAIN_PHOTOS]
    val_photos = [_photo(p) for p in VAL_PHOTOS]
    parts = {
        "2afc/train/mixed": _triplets(train_photos, n_train, 2, rng, same_kind=False),
        "2afc/val/mixed": _triplets(val_photos, n_val, 5, rng, same_kind=False),
        "2afc/val/same_kind": _triplets(val_photos, n_val, 5, rng, same_kind=True),
        "jnd/val/traditional": _jnd(val_photos, n_jnd, 3, rng),
    }
    source = f"simulated demo v{DEMO_VERSION}, seed {seed}, scikit-image photos"
    with judgments.write(out, overwrite=overwrite) as w:
        for name, arrays in parts.items():
            n = len(arrays[judgments.TARGET[judgments.kind_of(name)]])
            g = w.create_group(name, n, (SIZE, SIZE), source)
            w.fill(g, 0, arrays)
            g.attrs["simulated"] = True
    return Path(out)


def demo_path(seed: int = 0) -> Path:
    """The cached demo file for `seed`."""
    return cache_dir() / f"demo-v{DEMO_VERSION}-seed{seed}.h5"


def ensure_demo(seed: int = 0) -> Path:
    """Build the cached demo file if it is not there yet; return its path."""
    path = demo_path(seed)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"building the demo judgments (simulated observers) into {path} ...")
        try:
            build_demo(path, seed)
        except JudgmentsError:
            if not path.exists():  # another process may have built it meanwhile
                raise
    return path
