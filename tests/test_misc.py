"""Tests for torch_utils.misc and the single-process behaviour of torch_utils.distributed."""

import itertools
import os
import signal
import socket
import threading

import pytest
import torch
import torch.multiprocessing as mp

from torch_utils import distributed, misc


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_infinite_sampler_covers_each_epoch_once_per_rank_split():
    size, replicas = 10, 3
    streams = [_take(misc.InfiniteSampler(size, rank=r, num_replicas=replicas, seed=5), 20) for r in range(replicas)]
    # Interleave the ranks back into the global stream: every epoch is a permutation of the dataset.
    merged = [streams[p % replicas][p // replicas] for p in range(60)]
    for epoch in range(6):
        assert sorted(merged[epoch * size : (epoch + 1) * size]) == list(range(size))
    # The ranks never draw the same position, and the epochs are shuffled differently.
    assert merged[:size] != merged[size : 2 * size]
    assert merged[:size] != list(range(size))


def test_infinite_sampler_is_seeded_and_resumable():
    a = _take(misc.InfiniteSampler(7, seed=1), 30)
    assert a == _take(misc.InfiniteSampler(7, seed=1), 30)
    assert a != _take(misc.InfiniteSampler(7, seed=2), 30)
    # Resuming at position 12 continues the stream exactly where it would have been.
    assert _take(misc.InfiniteSampler(7, seed=1, start_pos=12), 18) == a[12:]
    # With two ranks, resuming at a global position gives each rank its own continuation.
    with pytest.raises(AssertionError, match="multiple"):
        misc.InfiniteSampler(7, num_replicas=2, start_pos=3)
    full = [_take(misc.InfiniteSampler(7, rank=r, num_replicas=2, seed=1), 15) for r in range(2)]
    resumed = [_take(misc.InfiniteSampler(7, rank=r, num_replicas=2, seed=1, start_pos=10), 10) for r in range(2)]
    assert resumed[0] == full[0][5:] and resumed[1] == full[1][5:]


def test_infinite_sampler_blocks_match_one_rank_rounds():
    # Two ranks with blocks of 3 receive the blocks a single rank sees in alternating rounds.
    single = _take(misc.InfiniteSampler(11, seed=4, block_size=3), 36)
    ranks = [_take(misc.InfiniteSampler(11, rank=r, num_replicas=2, seed=4, block_size=3), 18) for r in range(2)]
    for k in range(6):
        assert ranks[k % 2][(k // 2) * 3 : (k // 2) * 3 + 3] == single[k * 3 : k * 3 + 3]
    resumed = _take(misc.InfiniteSampler(11, rank=1, num_replicas=2, seed=4, block_size=3, start_pos=12), 6)
    assert resumed == single[15:18] + single[21:24]


def test_infinite_sampler_without_shuffle_is_in_order():
    assert _take(misc.InfiniteSampler([0] * 4, shuffle=False), 6) == [0, 1, 2, 3, 0, 1]
    assert _take(misc.InfiniteSampler(4, rank=1, num_replicas=2, shuffle=False), 4) == [1, 3, 1, 3]


def test_assert_shape():
    x = torch.zeros(2, 3, 4)
    misc.assert_shape(x, [2, None, 4])
    with pytest.raises(AssertionError, match="dimension 1"):
        misc.assert_shape(x, [2, 5, 4])
    with pytest.raises(AssertionError, match="number of dimensions"):
        misc.assert_shape(x, [2, 3])


class _Net(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc0 = torch.nn.Linear(4, width)
        self.fc1 = torch.nn.Linear(width, 2)
        self.register_buffer("w_avg", torch.zeros(width))

    def forward(self, x):
        return self.fc1(torch.relu(self.fc0(x)))


def test_copy_params_and_buffers():
    src, dst = _Net(8), _Net(8)
    src.w_avg.fill_(3.0)
    copied = misc.copy_params_and_buffers(src, dst, require_all=True)
    assert sorted(copied) == ["fc0.bias", "fc0.weight", "fc1.bias", "fc1.weight", "w_avg"]
    for (name, a), (_, b) in zip(misc.named_params_and_buffers(src), misc.named_params_and_buffers(dst), strict=True):
        assert torch.equal(a, b), name
    assert dst.fc0.weight.requires_grad

    with pytest.raises(ValueError, match="fc0.weight.*\\[8, 4\\].*\\[6, 4\\]"):
        misc.copy_params_and_buffers(src, _Net(6))
    bigger = torch.nn.Sequential()
    bigger.add_module("fc0", torch.nn.Linear(4, 8))
    with pytest.raises(ValueError, match="lacks 3 tensors"):
        misc.copy_params_and_buffers(bigger, _Net(8), require_all=True)
    assert misc.copy_params_and_buffers(bigger, _Net(8)) == ["fc0.weight", "fc0.bias"]


def test_print_module_summary(capsys):
    net = _Net(8)
    out = misc.print_module_summary(net, [torch.zeros(5, 4)])
    assert out.shape == (5, 2)
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines if line and not line.startswith("-")}
    assert rows["fc0"][1:3] == ["40", "0"] and rows["fc0"][3:5] == ["[5,", "8]"]
    assert rows["fc1"][1] == "18"
    assert rows["<top-level>"][1:3] == ["0", "8"]  # Only the buffer is left for the top level.
    assert rows["Total"][1:3] == ["58", "8"]


def test_distributed_single_process_defaults(capsys):
    distributed.init()  # No WORLD_SIZE in the environment: nothing to join.
    assert distributed.get_rank() == 0 and distributed.get_world_size() == 1
    assert distributed.is_main() and not distributed.is_distributed()
    distributed.barrier()
    distributed.print0("hello from rank 0")
    assert capsys.readouterr().out == "hello from rank 0\n"
    x = torch.ones(2)  # Every collective is the identity with one process.
    assert distributed.all_reduce_sum(x) is x and distributed.all_reduce_max(x) is x and distributed.broadcast(x) is x
    assert distributed.all_gather(x) == [x] and distributed.all_gather_object("a") == ["a"]
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.select_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def _blocked_signals(tid: int) -> set[int]:
    """The signals thread `tid` of this process blocks, from /proc."""
    with open(f"/proc/self/task/{tid}/status") as f:
        mask = int(next(line for line in f if line.startswith("SigBlk:")).split()[1], 16)
    return {n for n in range(1, 65) if mask >> (n - 1) & 1}


def _signal_mask_worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    before = set(os.listdir("/proc/self/task"))
    distributed.init(backend="gloo")
    try:
        distributed.barrier()
        started = [int(tid) for tid in set(os.listdir("/proc/self/task")) - before]  # By the process group.
        results.put((rank, _blocked_signals(threading.get_native_id()), [_blocked_signals(t) for t in started]))
    finally:
        distributed.shutdown()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads thread signal masks from Linux's /proc")
def test_stop_signals_reach_only_the_main_thread_of_a_process_group_member():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.get_context("spawn").Queue()
    mp.start_processes(_signal_mask_worker, args=(port, results), nprocs=2, start_method="spawn")
    for _ in range(2):
        rank, main, started = results.get(timeout=60)
        stop = {signal.SIGINT, signal.SIGTERM}
        assert not stop & main, f"rank {rank}: the main thread must receive the stop signals"
        assert len(started) >= 2, f"rank {rank}: gloo runs threads of its own; found {len(started)} new ones"
        assert all(stop <= blocked for blocked in started), f"rank {rank}: a gloo thread accepts a stop signal"


def test_process_count_error_names_the_torchrun_job_size(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "--gpus=4 but torchrun started 2 processes" in distributed.process_count_error(4)
    assert distributed.process_count_error(2) is None
