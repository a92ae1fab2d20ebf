"""The ``lpips-lightning`` command: a table of commands, each a function imported when it runs.

``fit``, ``validate`` and ``test`` are LightningCLI (`cli.training`: configs in ``configs/``,
data in ``datamodules/``); the tools are typed functions (`cli.tools`, `cli.distance`) whose
signatures are their options (`cli.parser`). A user-facing error is one ``error:`` line and
exit status 2; an interrupted command exits with 130 (Ctrl-C) or 143 (SIGTERM).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import signal
import sys
from collections.abc import Callable, Sequence

from ..errors import ConfigError, Interrupted, LPIPSLightningError, message_of
from . import help_cache
from .parser import run_tool
from .terms import in_terms, tool_options

HELP = """usage: lpips-lightning COMMAND [options]

Train and use learned perceptual image-similarity metrics (LPIPS).

training (LightningCLI; `lpips-lightning fit --help` for every option):
  fit          train:     lpips-lightning fit --config configs/lin_alex.yaml --data datamodules/bapps.yaml
  validate     score a checkpoint on the validation groups
  test         score a checkpoint on the test groups

tools (`lpips-lightning COMMAND --help`):
  distance     LPIPS distance between two image files
  download     download BAPPS (resumable, checked)
  pack         BAPPS folders or a CSV of judgments -> one judgments.h5
  demo-data    build the bundled demo judgments file
  export       checkpoint -> lpips .pth / safetensors / TorchScript / ONNX
  evaluate     2AFC / JND table of any model on a judgments file
"""

TRAINING = ("fit", "validate", "test")  # LightningCLI's subcommands: `run_training` gets the whole argv
# The command table: the one lazy place, so that `--help` answers before torch is imported.
COMMANDS = {
    **dict.fromkeys(TRAINING, "lpips_lightning.cli.training:run_training"),
    "distance": "lpips_lightning.cli.distance:distance_command",
    "download": "lpips_lightning.cli.tools:download_command",
    "pack": "lpips_lightning.cli.tools:pack_command",
    "demo-data": "lpips_lightning.cli.tools:demo_data_command",
    "export": "lpips_lightning.cli.tools:export_command",
    "evaluate": "lpips_lightning.cli.tools:evaluate_command",
}


def command(name: str) -> Callable[..., int]:
    """The function of command `name`, imported now."""
    module, function = COMMANDS[name].split(":")
    return getattr(importlib.import_module(module), function)


def _raise_terminated(signum, frame) -> None:
    raise Interrupted(signum)


def _training(argv: list[str]) -> int:
    """Run fit/validate/test; a bare ``--help`` from the help cache when it can be (see `help_cache`)."""
    path = help_cache.path_for(argv)
    if path is None:
        return command(argv[0])(argv)
    text = help_cache.cached(path)
    if text is not None:
        sys.stdout.write(text)
        return 0
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):
            status = command(argv[0])(argv)
    except SystemExit as done:  # argparse ends its help so
        status = done.code
    sys.stdout.write(said.getvalue())
    if not status:
        help_cache.remember(path, said.getvalue())
    return status or 0


def _run(argv: list[str]) -> int:
    if argv[0] not in COMMANDS and argv[0].startswith("-"):  # LightningCLI answers its own options
        return command("fit")(argv)
    if argv[0] not in COMMANDS:
        raise ConfigError(f"unknown command {argv[0]!r}; choose one of: {', '.join(COMMANDS)}")
    if argv[0] in TRAINING:
        return _training(argv)
    # SIGTERM (kill, a scheduler's time limit) cleans up like Ctrl-C; Lightning handles its own
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return run_tool(f"lpips-lightning {argv[0]}", command(argv[0]), argv[1:])
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lpips-lightning`` console script, ``python -m lpips_lightning.cli`` and ``train.py``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(HELP)
        return 0
    try:
        return _run(argv)
    except LPIPSLightningError as err:  # a training command prints its own (on rank 0 only)
        options = tool_options(command(argv[0])) if argv[0] in COMMANDS else {}
        print(f"error: {in_terms(message_of(err), options)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"interrupted: {err}" if str(err) else "interrupted", file=sys.stderr)
        return getattr(err, "status", 130)
