"""Which items share a reference image: each stored ``ref`` image hashed once, identical bytes being one reference.

The images decide, not the names: a MOS group's ``names`` name the distorted images, and a
2AFC CSV that lists one reference file on several rows stores it once per row, byte for byte
the same. Two references that differ in one pixel are two references.
"""

from __future__ import annotations

import hashlib

import h5py
import numpy as np

from . import judgments

CHUNK = 256  # images read per block


def reference_digests(f: h5py.File, group: str) -> list[bytes]:
    """The 16-byte BLAKE2b digest of each item's ``ref`` image of `group`, in item order (one pass over them)."""
    n = f[group]["ref"].shape[0]
    digests: list[bytes] = []
    for start in range(0, n, CHUNK):
        block = judgments.read(f, group, "ref", np.s_[start : start + CHUNK])
        digests += [hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).digest() for image in block]
    return digests


def reference_ids(digests: list[bytes]) -> np.ndarray:
    """int64 (N,): each item's reference numbered by first appearance (0, 1, ...); equal digests, equal ids."""
    seen: dict[bytes, int] = {}
    return np.array([seen.setdefault(d, len(seen)) for d in digests], np.int64)
