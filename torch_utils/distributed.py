"""Rank logic in one place. Every helper works unchanged with one process, `--gpus=N` and torchrun."""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from torch_utils import stop_signals

DEFAULT_TIMEOUT_SEC = 600.0  # How long a collective waits for a rank that stopped answering.
TORCHRUN_SHUTDOWN_TIMEOUT_SEC = 120  # run_torchrun: within the 180 s of warning docs/training.md's SLURM script asks.
TORCHRUN_SHUTDOWN_TIMEOUT_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"  # torchrun's own default for --shutdown-timeout.
_TIMED_OUT_KEY = "ganforge/timed-out/"  # + rank: set in the rendezvous store by a rank whose collective timed out.


class _Job:
    """What `init` set up beyond the process group: the control group, the store and the timeout."""

    control_group: Any = None  # A gloo group: agreeing on flags costs no GPU synchronization.
    store: Any = None  # A client of the rendezvous store, where timed-out ranks say so.
    timeout_sec: float = DEFAULT_TIMEOUT_SEC


class RankTimeout(RuntimeError):
    """A collective waited longer than the timeout, or lost its connection to a rank whose process ended: some rank
    stopped answering (the message names it)."""


# How the backends word a connection to a rank whose process or machine has gone (gloo's "Connection reset by peer",
# "Connection closed by peer", "Broken pipe"; NCCL's "remote process exited"), in lower case.
_LOST_CONNECTION = (
    "connection reset",
    "connection closed",
    "broken pipe",
    "connection refused",
    "remote process exited",
)


def init(backend: str | None = None, timeout_sec: float = DEFAULT_TIMEOUT_SEC) -> None:
    """Join the process group described by the environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).

    torchrun sets these variables for every process; the `--gpus=N` launcher sets them the same way. With no
    WORLD_SIZE, or WORLD_SIZE=1, this does nothing and the helpers below report rank 0 of 1.

    Args:
        backend:     'nccl' or 'gloo'; None picks NCCL when CUDA is available and gloo otherwise.
        timeout_sec: How long any collective may wait for the other ranks before it fails (both backends).
    """
    if torch.distributed.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(get_local_rank())
    timeout = datetime.timedelta(seconds=timeout_sec)
    # The backends' network and worker threads start with the stop signals blocked, so a signal meant for the training
    # loop's handler (training.preemption) never interrupts a socket call in the middle of a collective.
    with stop_signals.blocked():
        torch.distributed.init_process_group(backend=backend, init_method="env://", timeout=timeout)
        _Job.control_group = torch.distributed.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
        # Short store timeout: if the store's host (rank 0) is the rank that stopped, naming it must not take as long.
        _Job.store = torch.distributed.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=False,
            timeout=datetime.timedelta(seconds=min(timeout_sec, 30)),
        )
    _Job.timeout_sec = timeout_sec


def agree(flags: list[bool]) -> list[bool]:
    """Each flag OR-ed over all ranks, on the CPU (no GPU synchronization); unchanged with one process.

    A flag only rank 0 decides (a wall-clock interval, say) is passed as False on the other ranks.
    """
    if not is_distributed():
        return flags
    values = torch.tensor([int(f) for f in flags], dtype=torch.int32)
    with naming_stalled_ranks("for the others to agree on the step's flags"):
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX, group=_Job.control_group)
    return [bool(v) for v in values.tolist()]


def stalled_ranks(wait_sec: float = 3.0) -> list[int]:
    """After this rank's collective timed out: the ranks that did not time out too within `wait_sec`.

    Every rank still running waits in a collective for the one that stopped, so all of them time out at about
    the same moment and say so in the rendezvous store; the ranks that never do are the ones that stopped.
    """
    if _Job.store is None:
        return []
    _Job.store.set(f"{_TIMED_OUT_KEY}{get_rank()}", "1")
    deadline = time.monotonic() + wait_sec
    while True:
        missing = [r for r in range(get_world_size()) if not _Job.store.check([f"{_TIMED_OUT_KEY}{r}"])]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.1)


@contextlib.contextmanager
def naming_stalled_ranks(what: str) -> Iterator[None]:
    """Around code that runs collectives (the training loop): a collective that timed out, or lost its connection
    to a rank that ended (killed, or its machine lost), becomes a RankTimeout naming the ranks that stopped
    answering. A no-op with one process."""
    if not is_distributed():
        yield
        return
    start = time.monotonic()
    try:
        yield
    except RuntimeError as error:  # Gloo's and NCCL's errors (DistBackendError, DistNetworkError) are RuntimeErrors.
        text = str(error).lower()
        if isinstance(error, RankTimeout):
            raise
        if "timed out" in text or "timeout" in text:
            raise RankTimeout(describe_timeout(what, min(time.monotonic() - start, _Job.timeout_sec))) from error
        if any(words in text for words in _LOST_CONNECTION):
            raise RankTimeout(describe_lost_connection(what)) from error
        raise


def describe_timeout(what: str, waited_sec: float) -> str:
    """The sentence for a collective that gave up: who stopped answering, and what to do."""
    return (
        f"rank {get_rank()} waited {waited_sec:.0f} s {what}: {_who_stopped()} stopped answering (hung, stopped or "
        f"dead; see its log). {_WHAT_NOW} --timeout-min sets how long ranks wait for each other."
    )


def describe_lost_connection(what: str) -> str:
    """The sentence for a collective whose connection to another rank broke: who it was, and what to do."""
    return (
        f"rank {get_rank()} lost its connection to {_who_stopped()} while waiting {what}: that process ended or its "
        f"machine went down (see its log). {_WHAT_NOW}"
    )


_WHAT_NOW = "The run's newest training state is intact: continue with --resume=<run dir> once every machine is healthy."


def _who_stopped() -> str:
    """The ranks that stopped answering, as words ("rank 1", "rank 1 and rank 3")."""
    try:
        return " and ".join(f"rank {r}" for r in stalled_ranks()) or "another rank"
    except Exception:  # noqa: BLE001 - no answer from the store: its host, rank 0, is the likely one.
        return "another rank (likely rank 0, whose rendezvous store did not answer)"


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    _Job.control_group = _Job.store = None
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def is_distributed() -> bool:
    """Whether this process is part of a process group with more than one member."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() and get_world_size() > 1


def get_rank() -> int:
    """This process's global rank: the process group's, else torchrun's RANK variable (before `init`), else 0."""
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def get_world_size() -> int:
    """The number of processes; 1 without a process group."""
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def get_local_rank() -> int:
    """This process's rank on its own machine (torchrun's LOCAL_RANK), which picks its GPU."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Whether this is rank 0, the only process that writes files and prints progress."""
    return get_rank() == 0


def print0(*args, **kwargs) -> None:
    """`print` on rank 0 only."""
    if is_main():
        print(*args, **kwargs)


def barrier() -> None:
    """Wait for every process; a no-op with one process."""
    if is_distributed():
        torch.distributed.barrier()


# Collectives of the default group. Each is a no-op with one process; every rank must make the same calls in the same
# order. Tensors live on `collective_device()` (NCCL reduces CUDA tensors, gloo CPU ones).


def collective_device() -> torch.device:
    """Where the default group's collectives take tensors: this process's CUDA device under NCCL, else the CPU."""
    if torch.distributed.is_initialized() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks, in place; returns it."""
    if is_distributed():
        torch.distributed.all_reduce(tensor)
    return tensor


def all_reduce_min(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise minimum of `tensor` over ranks, in place; returns it."""
    if is_distributed():
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MIN)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise maximum of `tensor` over ranks, in place; returns it."""
    if is_distributed():
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return tensor


def all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's `tensor` (same shape and dtype on all ranks), in rank order."""
    if not is_distributed():
        return [tensor]
    gathered = [torch.empty_like(tensor) for _ in range(get_world_size())]
    torch.distributed.all_gather(gathered, tensor)
    return gathered


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's picklable `obj`, in rank order."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def broadcast(tensor: torch.Tensor) -> torch.Tensor:
    """Overwrite `tensor` with rank 0's, in place; returns it."""
    if is_distributed():
        torch.distributed.broadcast(tensor, src=0)
    return tensor


def broadcast_object(obj: Any) -> Any:
    """Rank 0's picklable `obj`, on every rank."""
    if not is_distributed():
        return obj
    shared = [obj]
    torch.distributed.broadcast_object_list(shared, src=0)
    return shared[0]


# Device and process count, shared by the entry scripts.


def select_device() -> torch.device:
    """This process's GPU (made the current CUDA device), or the CPU when CUDA is unavailable."""
    if torch.cuda.is_available():
        device = torch.device("cuda", get_local_rank())
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def process_count_error(num_processes: int) -> str | None:
    """Why `--gpus=num_processes` cannot run here (a torchrun job of another size, too few CUDA devices), or None."""
    if under_torchrun() and int(os.environ["WORLD_SIZE"]) != num_processes:
        return (
            f"--gpus={num_processes} but torchrun started {os.environ['WORLD_SIZE']} processes; --gpus must be the "
            f"total number of processes (nnodes * nproc-per-node)"
        )
    if not under_torchrun() and torch.cuda.is_available() and num_processes > torch.cuda.device_count():
        return f"--gpus={num_processes} but this machine has {torch.cuda.device_count()} CUDA devices"
    return None


def under_torchrun() -> bool:
    """Whether an external launcher (torchrun, or a SLURM script setting the same variables) started us."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch(fn: Callable[..., Any], args: tuple, num_processes: int, timeout_sec: float = DEFAULT_TIMEOUT_SEC) -> None:
    """Run `fn(*args)` in every process of the job, with the process group joined.

    Under torchrun this process is one member and runs `fn` itself. Otherwise `num_processes` > 1 spawns that
    many local processes (ranks 0..N-1, one per GPU, or CPU processes on gloo when there is no GPU); SIGTERM and
    SIGINT sent to this launcher are passed on to them, so `kill` of the one process a user sees reaches all.

    Raises:
        SystemExit: A spawned process stopped for a stop signal (it said so): with its status, 143 or 130.
        torch.multiprocessing.ProcessExitedException: A spawned process failed otherwise.
    """
    if under_torchrun() or num_processes == 1:
        init(timeout_sec=timeout_sec)
        try:
            fn(*args)
        finally:
            shutdown()
        return
    port = _free_port()
    context = torch.multiprocessing.start_processes(
        _spawned_worker,
        args=(fn, args, num_processes, port, timeout_sec),
        nprocs=num_processes,
        start_method="spawn",
        join=False,
    )

    def forward(signum: int, frame: Any) -> None:
        for process in context.processes:
            if process.is_alive():
                with contextlib.suppress(ProcessLookupError):  # It ended just now.
                    os.kill(process.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in stop_signals.STOP_SIGNALS}
    try:
        _join(context)
    except torch.multiprocessing.ProcessExitedException as error:
        if error.exit_code in stop_signals.STOP_STATUSES:
            raise SystemExit(error.exit_code) from None
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_torchrun(argv: list[str]) -> None:
    """torchrun (`torch.distributed.run`) with the command-line arguments `argv`, for torch_utils/torchrun.py: a stop
    signal ends it with one line and 128 + the signal's number instead of a traceback and status 1, and it waits up
    to TORCHRUN_SHUTDOWN_TIMEOUT_SEC (not 30 s) for its training processes to save, unless told otherwise."""
    from torch.distributed import run  # Only this command needs torchrun's modules.
    from torch.distributed.elastic.multiprocessing.api import SignalException

    os.environ.setdefault(TORCHRUN_SHUTDOWN_TIMEOUT_ENV, str(TORCHRUN_SHUTDOWN_TIMEOUT_SEC))  # --shutdown-timeout wins.
    try:
        run.main(argv)
    except SignalException as stop:
        signum = int(stop.sigval)
        print(
            f"torchrun: stopped by {signal.Signals(signum).name}; its training processes have ended (their output "
            f"above says whether a training state was saved).",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(128 + signum)


def _join(context: Any) -> None:
    """Wait for the processes of a `start_processes` context; raise as its `join` does when one failed.

    A process that ended with a stop status (a stop signal, after saving: stop_signals.STOP_STATUSES) lets the others
    end on their own, since they are stopping too; any other failure ends the rest at once (torch's `join`).
    """
    while True:
        processes = context.processes
        codes = [p.exitcode for p in processes]
        failed = any(code not in (None, 0) and code not in stop_signals.STOP_STATUSES for code in codes)
        if failed or all(code is not None for code in codes):
            while not context.join():  # Raises for the first failed process (after ending the others, if any).
                pass
            return
        # From the same look as `codes`: one that ends meanwhile is still waited for, and its sentinel is ready.
        multiprocessing.connection.wait([p.sentinel for p, code in zip(processes, codes, strict=True) if code is None])


def _spawned_worker(
    local_rank: int, fn: Callable[..., Any], args: tuple, num_processes: int, port: int, timeout_sec: float
) -> None:
    """Body of a process started by `launch`: describe the job in the environment as torchrun would, then run."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(num_processes),
        LOCAL_WORLD_SIZE=str(num_processes),
    )
    init(timeout_sec=timeout_sec)
    try:
        fn(*args)
    finally:
        shutdown()


def _free_port() -> int:
    """A TCP port that is free on this machine right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
