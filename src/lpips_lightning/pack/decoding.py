"""The decoding pool: images and judgments decoded in order, in worker processes or in this one, memory bounded.

A task is a `FileTask` (an item of a folder tree or CSV: its image files and its judgment, a
number or a ``.npy`` file) or a `MemberTask` (the bytes of one archive member). `Decoder`
hands lists of tasks (chunks) to a `concurrent.futures.ProcessPoolExecutor`, at most `ahead`
chunks in flight (`Executor.map` submits everything at once: its workers would run ahead of
a slow writer, and memory with them), and yields the results in task order. With one worker
it decodes in this process.

- Every wait polls `check`, so that a Ctrl-C or SIGTERM recorded by `interrupts.Signals` ends it.
- A worker that dies (the OOM killer, ``kill -9``) breaks the pool: one `PackError` naming the
  signal, never a hang (`multiprocessing.Pool` would replace the worker and wait forever for
  its lost task).
- Workers run in a process group of their own, so that a Ctrl-C in a terminal or a
  ``kill -TERM -PGID`` reaches the parent alone, which stops them. `Decoder.close` drops the
  queued chunks and lets each worker finish the one it holds; only a worker still busy after
  `CLOSE_GRACE` is killed. (A worker killed while it writes a result leaves half a message in
  the result pipe: the pool's manager thread would wait for the rest forever, and the
  interpreter's exit with it.)
- Workers exit when their parent is gone, even one killed outright (`_watch_parent`): a pool
  worker waiting on its call queue never sees it close, since every worker holds a copy of
  the queue's write end.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import NamedTuple

import numpy as np

from ..errors import PackError
from ..images import load_image
from .bapps import load_fraction

POLL = 0.05  # seconds between looks at `check` while waiting for a worker
PARENT_POLL = 0.5  # seconds between a worker's looks at its parent
CLOSE_GRACE = 10.0  # seconds a closing pool's workers have to finish the chunk they hold


class FileTask(NamedTuple):
    """One item of a folder tree or a CSV: its image files, its judgment (a number or a .npy file), the size."""

    paths: tuple[str, ...]
    target: float | str
    size: int


class MemberTask(NamedTuple):
    """One archive member to decode: its bytes, its name for messages, image or judgment, and where it goes."""

    data: bytes
    name: str
    image: bool
    size: int
    tag: tuple[int, int, int]  # (group index, folder index, row)


def _decode_file(task: FileTask) -> tuple[np.ndarray, float]:
    images = np.stack([load_image(p, task.size).transpose(2, 0, 1) for p in task.paths])
    value = load_fraction(task.target) if isinstance(task.target, str) else float(task.target)
    return images, value


def _decode_member(task: MemberTask) -> tuple[tuple[int, int, int], np.ndarray | float]:
    if task.image:
        value = np.ascontiguousarray(load_image(task.data, task.size, name=task.name).transpose(2, 0, 1))
    else:
        value = load_fraction(task.data, name=task.name)
    return task.tag, value


def decode(task: FileTask | MemberTask):
    """One task's result: ``(images (k, 3, S, S), judgment)`` of a file item, ``(tag, value)`` of a member."""
    return _decode_member(task) if isinstance(task, MemberTask) else _decode_file(task)


def _decode_chunk(tasks: list) -> list:
    """A worker's job: a chunk of tasks decoded; an error that cannot travel back (unpicklable) as a `PackError`."""
    try:
        return [decode(t) for t in tasks]
    except Exception as err:
        try:
            pickle.dumps(err)
        except Exception:
            raise PackError(f"decoding failed: {type(err).__name__}: {err}") from None
        raise


def chunks(tasks: Iterable, items: int, nbytes: int = 0) -> Iterator[list]:
    """`tasks` in lists of at most `items` (and, when `nbytes`, of about `nbytes` of member data)."""
    chunk: list = []
    held = 0
    for task in tasks:
        chunk.append(task)
        held += len(task.data) if nbytes else 0
        if len(chunk) >= items or (nbytes and held >= nbytes):
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


def _watch_parent(parent: int) -> None:
    """Exit this process as soon as its parent is gone (reparented: `os.getppid` changes)."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL)
    os._exit(1)


def _start_worker() -> None:
    """A worker's set-up: signals to the parent's group left to the parent, SIGTERM kills, death with the parent."""
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True, name="pack-parent").start()


class Decoder:
    """Decodes tasks in order, in `workers` processes (or in this one), with bounded memory (module docstring).

    `source` names the input in the error for a worker that died.
    """

    def __init__(self, workers: int, check: Callable[[], None], source: str = "pack") -> None:
        self.check = check
        self.source = source
        self.workers = workers if workers >= 2 else 1
        self.pool: ProcessPoolExecutor | None = None
        if self.workers > 1:
            self.pool = ProcessPoolExecutor(workers, initializer=_start_worker)
            self.pool.submit(int)  # start the workers now (all of them, when forked): before any file is open

    def _processes(self) -> list:
        # The workers themselves: ProcessPoolExecutor shows them only here (Python 3.14 adds kill_workers()).
        return list((getattr(self.pool, "_processes", None) or {}).values())

    def close(self) -> None:
        """Drop what the workers still had to do, let each finish its chunk (killed after `CLOSE_GRACE`), wait."""
        if self.pool is None:
            return
        procs = self._processes()
        self.pool.shutdown(wait=False, cancel_futures=True)  # the manager thread reads what is sent and stops them
        deadline = time.monotonic() + CLOSE_GRACE
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.exitcode is None:  # stuck in a decode (not writing a result): safe to kill
                proc.kill()
        self.pool.shutdown(wait=True)
        self.pool = None

    def _died(self) -> PackError:
        """The error for a broken pool: which signal (or status) ended the worker that died first."""
        procs = self._processes()
        self.pool.shutdown(wait=True)  # its manager thread has reaped every worker: all exit codes are known
        self.pool = None
        codes = [p.exitcode for p in procs if p.exitcode]
        # the pool terminates the other workers (SIGTERM) once one has died
        code = next((c for c in codes if c != -signal.SIGTERM), codes[0] if codes else None)
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"status {code}"
        return PackError(
            f"{self.source}: a decoding worker process ended unexpectedly ({how}: killed, or out of memory?)"
        )

    def _submit(self, tasks: list) -> Future:
        try:
            return self.pool.submit(_decode_chunk, tasks)
        except BrokenProcessPool:
            self.check()
            raise self._died() from None

    def _result(self, future: Future) -> list:
        while not wait((future,), timeout=POLL).done:
            self.check()
        self.check()
        try:
            return future.result()
        except BrokenProcessPool:
            raise self._died() from None

    def decoded(self, tasks: Iterable, chunk: int = 16, ahead: int = 64) -> Iterator:
        """Decoded items in order, with at most `ahead` chunks of `chunk` tasks in flight."""
        return self.decoded_chunks(chunks(tasks, chunk), ahead)

    def decoded_chunks(self, chunks: Iterable[list], ahead: int = 64) -> Iterator:
        """Decoded items of `chunks` (lists of tasks, taken as they come) in order, `ahead` chunks in flight at most."""
        if self.pool is None:
            for tasks in chunks:
                for task in tasks:
                    self.check()
                    yield decode(task)
            return
        pending: deque[Future] = deque()
        for tasks in chunks:
            self.check()
            pending.append(self._submit(tasks))
            if len(pending) >= ahead:
                yield from self._result(pending.popleft())
        while pending:
            yield from self._result(pending.popleft())
