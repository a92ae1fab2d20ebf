"""Ctrl-C, SIGTERM and SIGHUP acted on at safe points: recorded when they arrive, raised where clean-up can run.

A long command (``pack``) wraps its work in ``with Signals() as signals:`` and calls
``signals.check()`` between blocks of work; ``check`` raises `Interrupted` (exit status 130 for
SIGINT, 143 for SIGTERM, 129 for SIGHUP: the terminal closed) and the usual ``finally``/``except``
clean-up removes what is half written. While nothing needs cleaning up, ``raise_now`` makes the
first signal raise at once.
"""

from __future__ import annotations

import signal
import threading

from .errors import Interrupted


class Signals:
    """Record SIGINT, SIGTERM and SIGHUP; `check` raises `Interrupted` at a point where that is safe.

    The handler never raises by itself (unless `raise_now`): an exception raised from a signal
    handler while a ``__del__`` or an h5py callback runs is printed and ignored, and the command
    would finish as if nothing happened. Signals ignored by the parent (a background job's
    SIGINT) stay ignored. Outside the main thread nothing is installed. The previous handlers
    come back on exit.
    """

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

    def __init__(self) -> None:
        self.received: int | None = None
        self.raise_now = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        first = self.received is None
        if first:
            self.received = signum
        if first and self.raise_now:
            self.raise_now = False
            raise Interrupted(signum)

    def check(self) -> None:
        """Raise `Interrupted` if a signal arrived."""
        if self.received is not None:
            raise Interrupted(self.received)

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                previous = signal.getsignal(sig)
                if previous is not signal.SIG_IGN:
                    self._previous[sig] = previous
                    signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
