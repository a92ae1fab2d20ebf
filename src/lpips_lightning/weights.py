"""Weight files, read safely: what a file holds, loading it without running code, fitting it to a model.

- plain ``torch.save`` state dicts (a network's own names; a ``{"state_dict": ...}`` wrapper is
  unwrapped), read with ``weights_only=True`` (`load_torch_file`, `load_state_dict_file`); what
  a file is, told from its first bytes (`sniff`);
- fitting: `strict_load`/`check_fits` refuse missing, unexpected or misshapen keys by name; a
  state dict of a whole network meant for a part of it (a backbone cut at its taps, or without
  its classifier) is fitted with `load_used`: keys of the rest of that network are ignored;
- a library's pretrained weights through that library's own cache: torchvision's weights API
  (``$TORCH_HOME/hub/checkpoints``, `torchvision_state_dict`), refusing in one line (`unavailable`);
- safetensors files with string metadata (`read_safetensors`, `write_safetensors`).

Every failure is one `WeightsError` naming the file; callers that report another class wrap it.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import struct
import sys
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .errors import WeightsError


# --- reading files ------------------------------------------------------------------------------
def check_readable(path: str | os.PathLike, what: str) -> None:
    """Raise `WeightsError` naming `path` when it is missing, a folder, unreadable or empty."""
    if not str(path):
        raise WeightsError(f"no {what} file given (an empty path)")
    path = Path(path)
    if path.is_dir():
        raise WeightsError(f"{path} is a folder, not a {what} file")
    if path.exists() and not path.is_file():
        raise WeightsError(f"{path}: not a regular file (a device, pipe or socket), not a {what} file")
    if not path.is_file():
        raise WeightsError(f"{path}: no such {what} file")
    if not os.access(path, os.R_OK):
        raise WeightsError(f"{path}: {what} file is not readable (permission denied)")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: empty file, not a {what} file")


def sniff(path: str | os.PathLike) -> str:
    """What a file holds, from its first bytes and zip directory.

    ``torchscript``, ``torch zip`` (`torch.save`), ``zip`` (another zip archive), ``damaged zip``
    (truncated: no directory), ``safetensors``, ``onnx`` (an ONNX model's first protobuf field) or
    ``other`` (e.g. a legacy torch pickle).
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            return "damaged zip"
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "damaged zip"
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            return "torch zip"
        return "zip"
    if len(head) >= 9:
        (length,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 0 < length <= path.stat().st_size - 8:
            return "safetensors"
    # an ONNX ModelProto: field 1 (ir_version, a small varint), then another of its fields
    # (producer_name 0x12, producer_version 0x1a, domain 0x22, model_version 0x28, doc 0x32, graph 0x3a, opset 0x42)
    if len(head) >= 3 and head[0] == 0x08 and 0 < head[1] < 0x80 and head[2] in ONNX_SECOND_FIELDS:
        return "onnx"
    return "other"


ONNX_SECOND_FIELDS = frozenset({0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42})


def load_torch_file(path: str | os.PathLike, what: str, kind: str | None = None) -> object:
    """`torch.load` on the CPU, ``weights_only=True``; raise `WeightsError` naming the file and what it is not.

    Refused in one line each: a missing file, a folder, an empty, truncated or damaged file, a
    TorchScript archive, a safetensors file, a zip that torch did not write, and a file holding
    pickled Python objects (anything but tensors and plain values: it could run code when loaded).
    `kind`: what `sniff` said of the file, when the caller has checked and sniffed it already.
    """
    path = Path(path)
    if kind is None:
        check_readable(path, what)
        kind = sniff(path)
    if kind == "torchscript":
        raise WeightsError(f"{path}: a TorchScript export, not a {what} file (load it with lpips_lightning.load)")
    if kind == "safetensors":
        raise WeightsError(f"{path}: a safetensors file, not a {what} file (load it with lpips_lightning.load)")
    if kind == "onnx":
        raise WeightsError(f"{path}: an ONNX model, not a {what} file (load it with lpips_lightning.load)")
    if kind == "damaged zip":
        raise WeightsError(
            f"{path}: truncated or damaged (its zip archive has no directory), not a readable {what} file"
        )
    if kind == "zip":
        raise WeightsError(f"{path}: a zip archive that torch did not write, not a {what} file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if "Weights only load failed" in str(err) and found:
            raise WeightsError(
                f"{path}: refused: holds pickled Python objects ({found.group(1)}), not a plain {what} file "
                "of tensors and plain values (loading such objects can run code)"
            ) from None
        raise WeightsError(f"{path}: not a {what} file (unreadable pickle data)") from None
    except (EOFError, RuntimeError):
        raise WeightsError(f"{path}: truncated or damaged, not a readable {what} file") from None
    except Exception:  # torch's unpickler fails in many ways on text and other foreign files
        raise WeightsError(
            f"{path}: not a {what} file (neither a torch file, safetensors, TorchScript nor ONNX)"
        ) from None


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a file: on the CPU, tensors only (``weights_only=True``).

    A torch file, or a safetensors file of tensors; ``{"state_dict": ...}`` is unwrapped.
    """
    if Path(path).is_file() and Path(path).stat().st_size and sniff(path) == "safetensors":
        return read_safetensors(path, "weights")[0]
    state = load_torch_file(path, "weights")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        held = type(state).__name__ if not isinstance(state, dict) else "dict with values that are not tensors"
        raise WeightsError(f"{path}: holds a {held}, not a state dict")
    return state


# --- fitting weights to a model -------------------------------------------------------------------
def check_fits(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str) -> None:
    """Raise `WeightsError` naming the keys unless `state` has exactly `own`'s keys and shapes."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    _raise_problems(own, state, missing, unexpected, source)


def _raise_problems(own: dict, state: dict, missing: list[str], unexpected: list[str], source: str) -> None:
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if shapes:
        problems.append(
            "wrong shapes " + _few([f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in shapes])
        )
    if problems:
        raise WeightsError(f"{source}: does not fit this model: {'; '.join(problems)}")


def strict_load(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `module`, refusing missing, unexpected or misshapen keys by name."""
    check_fits(module.state_dict(), state, source)
    module.load_state_dict(state, strict=True)


def load_used(part: nn.Module, network_keys: Iterable[str], state: dict[str, torch.Tensor], source: str) -> None:
    """Load a whole network's state dict into `part`, the piece of it that is used.

    `network_keys`: every key of the whole network. Keys of `part` must all be in `state` with their
    shapes; keys of the network that `part` does not use (a classifier, blocks after the last tap)
    are ignored; keys the network does not have are refused.
    """
    own = part.state_dict()
    network_keys = set(network_keys) | set(own)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - network_keys)
    _raise_problems(own, state, missing, unexpected, source)
    part.load_state_dict({k: state[k] for k in own}, strict=True)


def _few(items: list[str], n: int = 6) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


# --- pretrained weights from a library's cache ----------------------------------------------------
def unavailable(what: str, target: Path, err: BaseException | None = None, hint: str = "") -> WeightsError:
    """The one-line error for pretrained weights that are neither cached nor downloadable."""
    state = "is damaged" if target.exists() and target.is_file() else "is missing"
    why = f" ({type(err).__name__})" if err is not None else ""
    return WeightsError(
        f"{what} are not available: {target.name} {state} in {target.parent} and could not be downloaded{why}; "
        f"put the file there{hint}, or pass backbone_weights=PATH, or pretrained=False"
    )


def torchvision_cache_file(weights) -> Path:
    """Where torchvision's weights API keeps the file of `weights` (a `WeightsEnum` member)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def torchvision_state_dict(weights, what: str) -> dict[str, torch.Tensor]:
    """Load `weights` (a `WeightsEnum` member) through torchvision's weights API: cache, else download.

    torch.hub's "Downloading: ..." line (which it writes to stdout) goes to stderr, and only when the
    download succeeds: stdout stays for results, and a failure is the one line of `unavailable`.
    """
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):
            state = weights.get_state_dict(progress=False, weights_only=True, map_location="cpu")
    except Exception as err:  # urllib, ssl, socket or a damaged file: all mean "not available"
        raise unavailable(what, torchvision_cache_file(weights), err) from None
    sys.stderr.write(said.getvalue())
    return state


# --- safetensors ----------------------------------------------------------------------------------------
def read_safetensors(
    path: str | os.PathLike, what: str = "safetensors"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, string metadata) of a safetensors file; `WeightsError` in one line when it cannot be read."""
    check_readable(path, what)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise WeightsError(
            f"{path}: truncated or damaged, not a readable safetensors file ({type(err).__name__})"
        ) from None
    return tensors, meta


def write_safetensors(state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Write `state` (made contiguous, on the CPU) with string `metadata` to `path`."""
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path), metadata=metadata)
