"""Weight files, in one place: reading them safely, fitting them to a model, and their formats.

Formats this module knows:

- plain ``torch.save`` state dicts (a network's own names; a ``{"state_dict": ...}`` wrapper is
  unwrapped), read with ``weights_only=True`` (`load_torch_file`, `load_state_dict_file`);
- a library's pretrained weights through that library's own cache: torchvision's weights API
  (``$TORCH_HOME/hub/checkpoints``) here (`torchvision_state_dict`); timm's Hugging Face hub cache
  in `backbones` (it needs the model), both refusing in the same one line (`unavailable`);
- the `lpips` package's names: heads ``lin{i}.model.1.weight``, the classic backbones as
  ``net.slice{k}.{j}.*``, and what a whole ``lpips.LPIPS().state_dict()`` repeats
  (`to_lpips_names`, `from_lpips_names`, `drop_lpips_aliases`);
- Lightning checkpoints of `LPIPSModule` (`read_checkpoint`);
- safetensors files with string metadata (`read_safetensors`, `write_safetensors`).

A state dict meant for a part of a network (a backbone cut at its taps, or without its
classifier) is fitted with `load_used`: every key the part uses must be there with its shape;
keys of the rest of that network are ignored; anything else is refused by name.
"""

from __future__ import annotations

import os
import pickle
import re
import struct
import warnings
import zipfile
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from .errors import WeightsError


# --- reading files ------------------------------------------------------------------------------
def check_readable(path: str | os.PathLike, what: str, error: type[Exception] = WeightsError) -> None:
    """Raise `error` naming `path` when it is missing, a folder, unreadable or empty."""
    if not str(path):
        raise error(f"no {what} file given (an empty path)")
    path = Path(path)
    if path.is_dir():
        raise error(f"{path} is a folder, not a {what} file")
    if path.exists() and not path.is_file():
        raise error(f"{path}: not a regular file (a device, pipe or socket), not a {what} file")
    if not path.is_file():
        raise error(f"{path}: no such {what} file")
    if not os.access(path, os.R_OK):
        raise error(f"{path}: {what} file is not readable (permission denied)")
    if path.stat().st_size == 0:
        raise error(f"{path}: empty file, not a {what} file")


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


def load_torch_file(path: str | os.PathLike, what: str, error: type[Exception] = WeightsError) -> object:
    """`torch.load` on the CPU, ``weights_only=True``; raise `error` naming the file and what it is not.

    Refused in one line each: a missing file, a folder, an empty, truncated or damaged file, a
    TorchScript archive, a safetensors file, a zip that torch did not write, and a file holding
    pickled Python objects (anything but tensors and plain values: it could run code when loaded).
    """
    path = Path(path)
    check_readable(path, what, error)
    kind = sniff(path)
    if kind == "torchscript":
        raise error(f"{path}: a TorchScript export, not a {what} file (load it with lpips_lightning.load)")
    if kind == "safetensors":
        raise error(f"{path}: a safetensors file, not a {what} file (load it with lpips_lightning.load)")
    if kind == "onnx":
        raise error(f"{path}: an ONNX model, not a {what} file (load it with lpips_lightning.load)")
    if kind == "damaged zip":
        raise error(f"{path}: truncated or damaged (its zip archive has no directory), not a readable {what} file")
    if kind == "zip":
        raise error(f"{path}: a zip archive that torch did not write, not a {what} file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if "Weights only load failed" in str(err) and found:
            raise error(
                f"{path}: refused: holds pickled Python objects ({found.group(1)}), not a plain {what} file "
                "of tensors and plain values (loading such objects can run code)"
            ) from None
        raise error(f"{path}: not a {what} file (unreadable pickle data)") from None
    except (EOFError, RuntimeError):
        raise error(f"{path}: truncated or damaged, not a readable {what} file") from None
    except Exception:  # torch's unpickler fails in many ways on text and other foreign files
        raise error(f"{path}: not a {what} file (neither a torch file, safetensors, TorchScript nor ONNX)") from None


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a file: on the CPU, tensors only (``weights_only=True``).

    A torch file, or a safetensors file of tensors; ``{"state_dict": ...}`` is unwrapped.
    """
    if Path(path).is_file() and Path(path).stat().st_size and sniff(path) == "safetensors":
        return read_safetensors(path, WeightsError, "weights")[0]
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
    import contextlib
    import io
    import sys

    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):
            state = weights.get_state_dict(progress=False, weights_only=True, map_location="cpu")
    except Exception as err:  # urllib, ssl, socket or a damaged file: all mean "not available"
        raise unavailable(what, torchvision_cache_file(weights), err) from None
    sys.stderr.write(said.getvalue())
    return state


# --- the lpips package's names ----------------------------------------------------------------------
def official_heads_file(backbone: str) -> Path:
    """The official v0.1 linear weights of a classic backbone, as they ship inside torchmetrics."""
    return Path(str(resources.files("torchmetrics") / "functional" / "image" / "lpips_models" / f"{backbone}.pth"))


def to_lpips_names(
    heads: list[torch.Tensor], backbone: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Head weights (and a classic backbone's ``slices.{k}.{j}.*`` state) under the lpips package's names."""
    state = {f"lin{i}.model.1.weight": w.detach().clone() for i, w in enumerate(heads)}
    for key, value in (backbone or {}).items():
        _, k, rest = key.split(".", 2)
        state[f"net.slice{int(k) + 1}.{rest}"] = value.detach().clone()
    return state


def from_lpips_names(state: dict[str, torch.Tensor], n_heads: int, backbone_keys: Iterable[str]) -> tuple[list, dict]:
    """(head weights, backbone state under ``slices.{k}.{j}.*``) from lpips-named `state` (already checked)."""
    heads = [state[f"lin{i}.model.1.weight"] for i in range(n_heads)]
    backbone = {}
    for key in backbone_keys:
        _, k, rest = key.split(".", 2)
        backbone[key] = state[f"net.slice{int(k) + 1}.{rest}"]
    return heads, backbone


def drop_lpips_aliases(
    state: dict[str, torch.Tensor], source: str, shift: tuple[float, ...], scale: tuple[float, ...]
) -> dict[str, torch.Tensor]:
    """Drop what a whole `lpips.LPIPS().state_dict()` repeats: ``lins.{i}`` aliases and the scaling buffers.

    The scaling buffers must hold the standard LPIPS input scaling (`shift`, `scale`).
    """
    out = {}
    for key, value in state.items():
        if key.startswith("lins."):
            alias = "lin" + key[len("lins.") :]
            if alias in state and torch.equal(state[alias], value):
                continue
        if key in ("scaling_layer.shift", "scaling_layer.scale"):
            expected = torch.tensor(shift if key.endswith("shift") else scale)
            if torch.allclose(value.flatten().float(), expected):
                continue
            raise WeightsError(f"{source}: {key} is not the standard LPIPS input scaling")
        out[key] = value
    return out


# --- Lightning checkpoints of LPIPSModule -------------------------------------------------------------
CHECKPOINT_BACKBONE_KEY = "lpips_backbone"  # the resolved backbone spec, beside the hyperparameters


def _logged_step(ckpt: dict) -> int | None:
    """The step at which loggers last wrote (Lightning's count of training batches), or None.

    Equal to the optimizer step count since batches of several steps keep it so (`Steps.logs`);
    feature-cache checkpoints written before that counted batches of 64 steps as one.
    """
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"])
    except (KeyError, TypeError, ValueError):
        return ckpt.get("global_step")


def read_checkpoint(path: str | os.PathLike, error: type[Exception] = WeightsError) -> tuple[dict, dict, dict]:
    """(hyperparameters, LPIPS state dict, extra info) from a Lightning checkpoint of `LPIPSModule`.

    Extra info: ``scores`` (the best validation score a checkpoint callback kept), ``epoch`` and
    ``backbone`` (the resolved backbone spec the run saved, or None for older checkpoints).
    Raises `error` in one line naming the file for anything else (see `load_torch_file`).
    """
    ckpt = load_torch_file(path, "checkpoint", error)
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or not isinstance(state, dict) or "variant" not in hp or "backbone" not in hp:
        raise error(f"{path}: not a checkpoint of lpips-lightning (no LPIPSModule hyperparameters)")
    weights = {k[len("lpips.") :]: v for k, v in state.items() if k.startswith("lpips.")}
    weights = {k.replace("_orig_mod.", ""): v for k, v in weights.items()}  # left by torch.compile
    if not weights:
        raise error(f"{path}: a checkpoint of lpips-lightning without the metric's weights (no 'lpips.*' keys)")
    scores = {}
    for cb_state in (ckpt.get("callbacks") or {}).values():
        if isinstance(cb_state, dict) and cb_state.get("best_model_score") is not None:
            scores["best_val_2afc_mean"] = float(cb_state["best_model_score"])
    backbone = ckpt.get(CHECKPOINT_BACKBONE_KEY)
    info = {
        "scores": scores,
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
        # the loggers' step (see `_logged_step`): where a resumed run's metrics.csv is cut
        "logged_step": _logged_step(ckpt),
        "backbone": backbone if isinstance(backbone, dict) else None,
    }
    return dict(hp), weights, info


# --- safetensors ----------------------------------------------------------------------------------------
def read_safetensors(
    path: str | os.PathLike, error: type[Exception] = WeightsError, what: str = "safetensors"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, string metadata) of a safetensors file; `error` in one line when it cannot be read."""
    from safetensors import safe_open

    check_readable(path, what, error)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise error(f"{path}: truncated or damaged, not a readable safetensors file ({type(err).__name__})") from None
    return tensors, meta


def write_safetensors(state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Write `state` (made contiguous, on the CPU) with string `metadata` to `path`."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path), metadata=metadata)
