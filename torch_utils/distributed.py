"""Rank logic in one place. Every helper works unchanged with one process, `--gpus=N` and torchrun."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import torch


def init(backend: str | None = None) -> None:
    """Join the process group described by the environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).

    torchrun sets these variables for every process; the `--gpus=N` launcher sets them the same way. With no
    WORLD_SIZE, or WORLD_SIZE=1, this does nothing and the helpers below report rank 0 of 1.

    Args:
        backend: 'nccl' or 'gloo'; None picks NCCL when CUDA is available and gloo otherwise.
    """
    if torch.distributed.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(get_local_rank())
    torch.distributed.init_process_group(backend=backend, init_method="env://")


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
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


@contextlib.contextmanager
def ddp_sync(module: torch.nn.Module, sync: bool) -> Iterator[None]:
    """Suppress DistributedDataParallel's gradient all-reduce unless `sync` (the last accumulation round)."""
    if sync or not isinstance(module, torch.nn.parallel.DistributedDataParallel):
        yield
    else:
        with module.no_sync():
            yield


def under_torchrun() -> bool:
    """Whether an external launcher (torchrun, or a SLURM script setting the same variables) started us."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch(fn: Callable[..., Any], args: tuple, num_processes: int) -> None:
    """Run `fn(*args)` in every process of the job, with the process group joined.

    Under torchrun this process is one member and runs `fn` itself. Otherwise `num_processes` > 1 spawns that
    many local processes (ranks 0..N-1, one per GPU, or CPU processes on gloo when there is no GPU).
    """
    if under_torchrun() or num_processes == 1:
        init()
        try:
            fn(*args)
        finally:
            shutdown()
        return
    port = _free_port()
    torch.multiprocessing.start_processes(
        _spawned_worker, args=(fn, args, num_processes, port), nprocs=num_processes, start_method="spawn"
    )


def _spawned_worker(local_rank: int, fn: Callable[..., Any], args: tuple, num_processes: int, port: int) -> None:
    """Body of a process started by `launch`: describe the job in the environment as torchrun would, then run."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(num_processes),
        LOCAL_WORLD_SIZE=str(num_processes),
    )
    init()
    try:
        fn(*args)
    finally:
        shutdown()


def _free_port() -> int:
    """A TCP port that is free on this machine right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
