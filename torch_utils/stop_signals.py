"""Stop signals (SIGTERM, SIGINT) belong to the process that trains, never to its helper processes and threads.

SLURM, `timeout`, `kill -- -PGID`, container stops and Ctrl-C deliver a stop signal to every process of a job or
process group, DataLoader workers included. Left to their defaults, the workers die at once (torch's worker handler
re-raises any SIGTERM that its parent did not send) and the main process fails wherever it happens to be, in the
middle of the step or of writing the training state. So:

- Threads and processes are started with the stop signals blocked (`blocked`): they inherit the mask, so a signal
  is only ever delivered to the main thread of the training process, where training.preemption handles it.
- A DataLoader worker (`worker_init_fn`) keeps them blocked and hands them to a small thread that drops them,
  except a SIGTERM sent by the process that made the DataLoader: that is the DataLoader (or multiprocessing at exit)
  ending the worker, which ends as torch's own handler would end it. A worker whose parent dies still exits on its
  own (torch's watchdog).

`loader_batches` puts both together for one pass over a DataLoader. A tool without step boundaries (dataset_tool.py)
uses `StopOnSignal` instead: the signal becomes an exception that unwinds the tool's clean-up.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # dataset_tool.py uses this module and must start without importing torch.
    import torch

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_status(signum: int) -> int:
    """The exit status of a process stopped by signal `signum` after saving: 128 + signum, as shells report."""
    return 128 + signum


STOP_STATUSES = frozenset(exit_status(signum) for signum in STOP_SIGNALS)  # 143 and 130.


@contextlib.contextmanager
def blocked() -> Iterator[None]:
    """Block the stop signals in this thread while inside; threads and processes started inside inherit the mask.

    A signal that arrives meanwhile stays pending and is delivered when the mask is restored on leaving. A no-op
    where the platform has no signal masks (Windows).
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def worker_init_fn() -> Callable[[int], None]:
    """The `worker_init_fn` for a DataLoader made in this process: in each worker, stop signals from others are
    dropped and a SIGTERM from this process ends the worker (see the module docstring).

    Where the platform cannot tell who sent a signal (no `sigwaitinfo`, e.g. macOS), workers only ignore SIGINT and
    SIGTERM keeps torch's handling.
    """
    return functools.partial(_init_worker, os.getpid())


def _init_worker(owner_pid: int, worker_id: int = 0) -> None:
    """See `worker_init_fn`; `owner_pid` is the process that made the DataLoader (or the process pool: the
    partial also serves as a ProcessPoolExecutor `initializer`, which passes no worker id)."""
    if not hasattr(signal, "sigwaitinfo"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # Already so when started inside `blocked`.
    threading.Thread(target=_drop_stop_signals, args=(owner_pid,), name="stop-signals", daemon=True).start()


def _drop_stop_signals(owner_pid: int) -> None:
    """Body of a worker's signal thread: wait for stop signals (blocked in every thread, so they queue up for this
    `sigwaitinfo`), end the worker on its owner's SIGTERM, drop the rest."""
    while True:
        info = signal.sigwaitinfo(STOP_SIGNALS)
        if info.si_signo == signal.SIGTERM and info.si_pid in (owner_pid, os.getppid()):
            os._exit(0)  # The DataLoader's own shutdown, or multiprocessing's at exit: nothing left to do.


_END = object()  # What `next` returns after the last batch.


def loader_batches(loader: torch.utils.data.DataLoader) -> Iterator[Any]:
    """The batches of one pass over `loader`, made with `worker_init_fn=worker_init_fn()` when it has workers.

    The workers start with the stop signals blocked, so no signal reaches one before its `worker_init_fn` has run;
    they are shut down as soon as the pass ends or the generator is closed. A tool's `Stopped` comes between batches:
    raised while the iterator is made, it would leave a half-made one (whose __del__ fails); while a batch is
    received, it would cut the connection over which a worker hands over the batch's shared memory (and the worker's
    thread would print the error).
    """
    with blocked(), deferred():
        batches = iter(loader)
    try:
        while True:
            with deferred():
                batch = next(batches, _END)
            if batch is _END:
                return
            yield batch
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)  # torch's own clean-up; it also runs when collected.
        if shutdown is not None:
            shutdown()


# ----------------------------------------------------------------------------------------------------------------
# Tools without step boundaries.


class Stopped(BaseException):
    """A stop signal, raised in the main thread inside `StopOnSignal`. A BaseException, like KeyboardInterrupt, so
    that only clean-up code (`finally`, `except BaseException: ...; raise`) sees it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.status = exit_status(signum)
        self.complete = False  # Set by code that finished its work inside `deferred()` before this was raised.


_active: StopOnSignal | None = None  # The handler in place, if any.
_deferring = 0  # How many `deferred()` blocks the main thread is inside.


class StopOnSignal:
    """`with StopOnSignal():` makes SIGTERM and SIGINT raise `Stopped` in the main thread, for a tool that has no step
    boundary at which to stop and whose clean-up runs as the exception unwinds. Inside `deferred()` the signal waits
    for the block to end. Repeats are ignored: the clean-up runs once. Main thread only; the previous handlers come
    back on leaving."""

    def __init__(self) -> None:
        self.stopped = False  # `Stopped` was raised.
        self.pending: int | None = None  # A signal that came inside `deferred()`.
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        global _active
        self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        _active = self
        return self

    def __exit__(self, *exc_info: object) -> None:
        global _active
        _active = None
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.stopped:  # A repeat (the group's signal, then a launcher's copy of it).
            return
        if _deferring:
            self.pending = self.pending or signum
            return
        self._raise(signum)

    def _raise(self, signum: int) -> None:
        self.stopped = True
        raise Stopped(signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block that a stop signal must not cut (constructing a DataLoader iterator, a rename that must finish once
    begun): under `StopOnSignal`, a signal that arrives inside is raised as `Stopped` when the block ends (unless the
    block fails); elsewhere a no-op. Signals are handled in the main thread whatever its signal mask, so `blocked`
    alone does not keep them out of a block."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring and _active is not None and _active.pending is not None and not _active.stopped:
        _active._raise(_active.pending)
