"""The exceptions a user sees: one clear sentence each, printed by the CLI without a traceback."""

from __future__ import annotations

import signal


class LPIPSLightningError(Exception):
    """Base class of every user-facing error; the CLI prints its message and exits with status 2."""


class ConfigError(LPIPSLightningError, ValueError):
    """An unknown choice or an invalid combination of options."""


class WeightsError(LPIPSLightningError):
    """Weights that are missing, or do not fit the model they are loaded into."""


class JudgmentsError(LPIPSLightningError):
    """A judgments file that is missing, not of this format, or damaged."""


class PackError(LPIPSLightningError):
    """Bad input found while packing judgments into a file."""


class TrainingError(LPIPSLightningError):
    """A run that cannot go on, e.g. a loss that became NaN."""


class OutputError(LPIPSLightningError):
    """An output file that cannot or must not be written."""


class ExportError(LPIPSLightningError):
    """A checkpoint or export that cannot be read, or an output that cannot be written."""


class DownloadError(LPIPSLightningError):
    """A download that failed: unreachable server, HTTP error, short or damaged archive."""


def message_of(err: LPIPSLightningError) -> str:
    """The one line to print for `err`.

    An error raised in a DataLoader worker process comes back re-raised by torch with the
    worker's whole traceback as its message ("Caught JudgmentsError in DataLoader worker
    process 0. Original Traceback ..."): its last line holds the original message.
    """
    text = str(err)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        prefix = f"{type(err).__module__}.{type(err).__name__}: "
        text = last[len(prefix) :] if last.startswith(prefix) else last.split(": ", 1)[-1]
    return text


def check_choice(name: str, value: object, valid: list[str] | tuple[str, ...]) -> None:
    """Raise `ConfigError` listing the valid choices when `value` is not one of them."""
    if value not in valid:
        raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(map(str, valid))}")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: clean-up runs and nothing half-written stays; exit status 128 + signal (130, 143).

    Without a message the CLI prints a bare ``interrupted``; with one, ``interrupted: <message>``.
    """

    def __init__(self, signum: int = 2, message: str = "") -> None:
        self.signum = int(signum)
        self.status = 128 + self.signum
        super().__init__(*([message] if message else []))

    def __repr__(self) -> str:
        return f"Interrupted({self.signum})"


class DownloadInterrupted(Interrupted):
    """Ctrl-C during a download; its message says where the partial data was kept."""

    def __init__(self, message: str) -> None:
        super().__init__(signal.SIGINT, message)
