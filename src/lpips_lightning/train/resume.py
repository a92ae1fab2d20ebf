"""What a resumed run may change: a checkpoint given with ``--ckpt_path`` and the model options beside it.

The checkpoint must be a plain checkpoint of this project (read without running code), and
model options given on the command line or in a --config file may not contradict it:
LightningCLI would silently take the checkpoint's values. Options that change how fast a run
goes, not what it trains (`RUNTIME_OPTIONS`), may change.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import yaml

from ..backbones.specs import short_name
from ..errors import ConfigError
from ..model.checkpoint import read_checkpoint
from .module import LPIPSModule

# options that change how fast a run goes, not what it trains: a resumed run may change them
RUNTIME_OPTIONS = ("compile", "channels_last")
LISTED = 8  # runs named in the line of a `--ckpt_path last` that finds none to resume


def run_configuration(folder: Path) -> dict | None:
    """A run folder's variant, backbone and data file (from the ``config.yaml`` it started with), or None."""
    try:
        data = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    model = data.get("model") if isinstance(data, dict) else None
    dm = data.get("data") if isinstance(data, dict) else None
    if not isinstance(model, dict) or not isinstance(dm, dict):
        return None
    model, dm = model.get("init_args", model), dm.get("init_args", dm)
    return {"variant": model.get("variant", "lin"), "backbone": model.get("backbone", "alex"), "data": dm.get("path")}


def _key(configuration: dict) -> tuple[str, str, str]:
    backbone = configuration["backbone"]
    backbone = backbone if isinstance(backbone, str) else json.dumps(backbone, sort_keys=True, default=str)
    data = str(configuration["data"] or "demo")
    return str(configuration["variant"]), backbone, os.path.realpath(data) if data != "demo" else data


def _words(configuration: dict) -> str:
    return f"{configuration['variant']}, {short_name(configuration['backbone'])}, {configuration['data'] or 'demo'}"


def _described(name: str, configuration: dict | None) -> str:
    return f"{name} ({_words(configuration) if configuration is not None else 'no readable config.yaml'})"


def last_of_configuration(runs_dir: Path, config) -> tuple[str, str]:
    """(run name, a note) of the newest run under `runs_dir` with a ``last.ckpt`` and `config`'s configuration.

    The configuration: the model's variant and backbone and the data file (`run_configuration`).
    The note says how many other runs of it there are; when none has it, one line lists the runs.
    """
    lasts = sorted(runs_dir.glob("*/last.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not lasts:
        raise ConfigError(f"--ckpt_path last: no run in {runs_dir}/ has a last.ckpt")
    wanted = {"variant": config.model.variant, "backbone": config.model.backbone, "data": config.data.get("path")}
    found = {last.parent.name: run_configuration(last.parent) for last in lasts}
    matching = [name for name, c in found.items() if c is not None and _key(c) == _key(wanted)]
    if not matching:
        listed = [_described(name, c) for name, c in found.items()]
        more = f" and {len(listed) - LISTED} more" if len(listed) > LISTED else ""
        raise ConfigError(
            f"--ckpt_path last: no run in {runs_dir}/ has this fit's variant, backbone and data ({_words(wanted)}); "
            "runs there: "
            f"{', '.join(listed[:LISTED])}{more}; name the one to resume with --run_name NAME"
        )
    others = len(matching) - 1
    note = f" (the newest of {others + 1} runs of this configuration; --run_name picks another)" if others else ""
    return matching[0], note


def check_checkpoint(ckpt: str) -> tuple[dict, dict]:
    """(hyperparameters, info) of a plain lpips-lightning checkpoint; one clear line for anything else."""
    if Path(ckpt).is_dir():
        raise ConfigError(f"--ckpt_path {ckpt}: is a folder; give a checkpoint file (e.g. {Path(ckpt) / 'last.ckpt'})")
    if not Path(ckpt).is_file():
        raise ConfigError(f"--ckpt_path {ckpt}: no such checkpoint file")
    hp, _, info = read_checkpoint(ckpt)
    return hp, info


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def explicit_options(argv: list[str], config_files: list[str], section: str = "model") -> set[str]:
    """The `section` options a user gave: ``--model.X`` on the command line or ``model: {X: ...}`` in a --config."""
    given = set()
    for arg in argv:
        if arg.startswith(f"--{section}."):
            given.add(arg[len(section) + 3 :].split("=", 1)[0].split(".", 1)[0])
    for path in config_files:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        block = data.get(section) if isinstance(data, dict) else None
        if isinstance(block, dict):
            given |= set(block.get("init_args", block))
    return given


def refuse_conflicts(model_config, hp: dict, ckpt: str, explicit: set[str] = frozenset()) -> dict:
    """Raise if an option given for the model contradicts the checkpoint; return the runtime options to keep.

    An option counts as given when it is in `explicit` (on the command line or in a config
    file) or differs from `LPIPSModule`'s default.
    """
    defaults = {k: p.default for k, p in inspect.signature(LPIPSModule.__init__).parameters.items() if k != "self"}
    keep = {}
    for key, default in defaults.items():
        given = model_config.get(key, default)
        if (_same(given, default) and key not in explicit) or key not in hp or _same(given, hp[key]):
            continue
        if key in RUNTIME_OPTIONS:
            keep[key] = given
            continue
        raise ConfigError(
            f"model.{key} {given!r} (given on the command line or in a --config file) conflicts with the "
            f"checkpoint {ckpt}, trained with {key} {hp[key]!r}; "
            "drop the option, or train a new run without --ckpt_path"
        )
    return keep
