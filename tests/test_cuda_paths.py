"""The branches that run only on CUDA, run on the CPU with the CUDA calls replaced by recording stand-ins (issue 24,
item 4): what each branch decides and passes on is checked here; that the real CUDA calls do what the stand-ins
pretend is checked by the named steps of benchmarks/gpu_check.py. docs/performance.md ("CUDA-only code paths")
lists every such branch with the test or the gpu_check step that covers it.

Each test takes well under a second, except the two that build a tiny trainer (about a second each).
"""

from __future__ import annotations

import dataclasses
import json
import types

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_batch_gpu_auto import INJECT, FakeGauge, Run, make_config

import gen_images
import gen_video
import train
from metrics import features
from torch_utils import custom_ops, distributed
from torch_utils.ops import filtered_lrelu as FL
from torch_utils.ops import upfirdn2d
from training import batch_memory, training_loop
from training.layers import block_dtype
from training.training_loop import Progress, TrainingStopped

CUDA0, CUDA1 = torch.device("cuda", 0), torch.device("cuda", 1)


class Stop(Exception):
    """Raised by a stand-in to end the code under test once it has made the call the test looks at."""


class Calls:
    """Records calls as (name, args...) and answers with fixed values."""

    def __init__(self, **answers):
        self.log: list[tuple] = []
        self.answers = answers

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("log", "answers"):
            raise AttributeError(name)

        def call(*args, **kwargs):
            self.log.append((name, *args, *kwargs.values()))
            return self.answers.get(name)

        return call


def record_pin_memory(monkeypatch) -> list[bool]:
    """Replace torch's DataLoader by one that notes its `pin_memory` argument, then stops the code under test."""
    seen: list[bool] = []

    def loader(*args, **kwargs):
        seen.append(kwargs["pin_memory"])
        raise Stop

    monkeypatch.setattr(torch.utils.data, "DataLoader", loader)
    return seen


@pytest.fixture
def cuda(monkeypatch) -> Calls:
    """torch.cuda as a machine with two GPUs would show it: is_available, device_count and current_device answer,
    and the calls that would touch a device are recorded."""
    calls = Calls(device_count=2, current_device=1, get_device_capability=(9, 0), max_memory_allocated=3 * 2**29)
    for name in ("set_device", "reset_peak_memory_stats", "max_memory_allocated"):  # Recorded.
        monkeypatch.setattr(torch.cuda, name, getattr(calls, name))
    for name in ("device_count", "current_device", "get_device_capability"):  # Answered, not recorded.
        monkeypatch.setattr(torch.cuda, name, lambda *args, name=name: calls.answers[name])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return calls


class FakeCudaRng:
    """The per-GPU random generators of torch.cuda: states by device index, seeded on the current device."""

    def __init__(self, monkeypatch, current: int = 0):
        self.states = {0: torch.tensor([10]), 1: torch.tensor([11])}
        self.current = current
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": self.states[self._index(device)])
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set_rng_state)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states.values()])
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", self.set_rng_state_all)
        monkeypatch.setattr(torch.cuda, "manual_seed", self.manual_seed)
        monkeypatch.setattr(torch.cuda, "device", self.device)

    def _index(self, device) -> int:
        return device if isinstance(device, int) else torch.device(device).index

    def set_rng_state(self, state: torch.Tensor, device="cuda") -> None:
        self.states[self._index(device)] = state.clone()

    def set_rng_state_all(self, states: list[torch.Tensor]) -> None:
        self.states = {i: s.clone() for i, s in enumerate(states)}

    def manual_seed(self, seed: int) -> None:
        self.states[self.current] = torch.tensor([seed])

    def device(self, device: torch.device):
        """torch.cuda.device: `device` is the current one inside the block."""
        rng = self

        class Current:
            def __enter__(self):  # torch.device("cuda") means the current GPU.
                self.previous = rng.current
                rng.current = rng.current if device.index is None else device.index

            def __exit__(self, *exc):
                rng.current = self.previous

        return Current()


# ----------------------------------------------------------------------------
# Devices and processes (torch_utils/distributed.py, gen_images.py, gen_video.py, train.py).


def test_each_process_takes_the_gpu_of_its_local_rank(cuda, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.select_device() == CUDA1
    assert cuda.log == [("set_device", CUDA1)]


def test_gpus_beyond_the_devices_are_refused_unless_torchrun_started_us(cuda, monkeypatch):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.process_count_error(2) is None
    assert distributed.process_count_error(3) == "--gpus=3 but this machine has 2 CUDA devices"


@pytest.mark.parametrize("gpu", [True, False])
def test_the_backend_is_nccl_on_gpus_with_a_gloo_group_for_flags(monkeypatch, gpu):
    calls = Calls(new_group="control group", TCPStore="store")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "set_device", calls.set_device)
    for name in ("init_process_group", "new_group", "TCPStore"):
        monkeypatch.setattr(torch.distributed, name, getattr(calls, name))
    for name in ("control_group", "store", "timeout_sec"):
        monkeypatch.setattr(distributed._Job, name, getattr(distributed._Job, name))  # Put back afterwards.
    env = dict(WORLD_SIZE="2", RANK="1", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    distributed.init(timeout_sec=60)
    names = [call[:2] for call in calls.log]
    if gpu:  # NCCL needs this process's GPU chosen first; flags are agreed on over gloo, without a GPU sync.
        assert names == [
            ("set_device", 1),
            ("init_process_group", "nccl"),
            ("new_group", "gloo"),
            ("TCPStore", "127.0.0.1"),
        ]
        assert distributed._Job.control_group == "control group"
    else:
        assert names == [("init_process_group", "gloo"), ("TCPStore", "127.0.0.1")]
        assert distributed._Job.control_group is None
    assert distributed._Job.store == "store" and distributed._Job.timeout_sec == 60


def test_collectives_take_the_current_gpu_under_nccl(cuda, monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_backend", lambda group=None: "nccl")
    assert distributed.collective_device() == CUDA1
    monkeypatch.setattr(torch.distributed, "get_backend", lambda group=None: "gloo")
    assert distributed.collective_device() == torch.device("cpu")


@pytest.mark.parametrize("tool", [gen_images, gen_video])
def test_the_image_tools_render_on_the_gpu_unless_told_otherwise(cuda, monkeypatch, tmp_path, tool):
    def load_generator(network, device):
        raise click.ClickException(f"would load {network} onto {device}")

    monkeypatch.setattr(tool, "load_generator", load_generator)
    out = ["--outdir", str(tmp_path)] if tool is gen_images else ["--output", str(tmp_path / "v.mp4")]
    args = ["--network=net.pkl", "--seeds=0-3", *out]
    assert "would load net.pkl onto cuda\n" in CliRunner().invoke(tool.main, args).output
    assert "would load net.pkl onto cpu\n" in CliRunner().invoke(tool.main, [*args, "--device=cpu"]).output


def test_train_notes_slow_metrics_only_without_a_gpu(tmp_path, shapes8, monkeypatch, capsys):
    c = make_config(tmp_path, shapes8, "--batch=16", "--metrics=swd")
    for gpu in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda gpu=gpu: gpu)
        train.print_config(c, dict(num_images=64, resolution=8))
        assert ("--metrics=none skips them" in capsys.readouterr().out) == (not gpu)


# ----------------------------------------------------------------------------
# The training loop (training/training_loop.py, training/batch_memory.py, training/layers.py).


def test_training_on_a_gpu_skips_the_cpu_set_up_and_turns_tf32_off(tmp_path, shapes8, monkeypatch, capsys):
    c = make_config(tmp_path, shapes8, "--batch=16", "--nobench=0")
    kept = []
    monkeypatch.setattr(distributed, "select_device", lambda: CUDA0)
    monkeypatch.setattr(training_loop.host_memory, "keep_freed_memory", lambda: kept.append(True))

    def dataset(**kwargs):  # The first thing after the device set-up.
        raise Stop

    monkeypatch.setattr(training_loop, "ImageFolderDataset", dataset)
    # The opposite of what training sets; monkeypatch puts the process's own values back afterwards.
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    with pytest.raises(Stop):
        training_loop.train(c, stop=None)
    assert "No CUDA device found" not in capsys.readouterr().out and not kept
    assert torch.backends.cudnn.benchmark is True  # --nobench=0
    assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False


def test_the_training_loader_pins_memory_for_a_gpu(tmp_path, shapes8, monkeypatch):
    c = make_config(tmp_path, shapes8, "--batch=16")
    dataset = training_loop.ImageFolderDataset(**training_loop.training_set_kwargs(c))
    seen = record_pin_memory(monkeypatch)
    for device in (CUDA0, torch.device("cpu")):
        with pytest.raises(Stop):
            next(training_loop.make_data_iterator(c, dataset, 0, device))
    assert seen == [True, False]


def test_the_tick_line_shows_the_peak_gpu_memory_and_starts_a_new_peak(cuda, capsys):
    progress = Progress(cur_nimg=8000, step=2000, cur_tick=2, tick_start_nimg=4000)
    t = types.SimpleNamespace(progress=progress, augment_p=0.25)
    c = types.SimpleNamespace(total_kimg=12.0, batch_gpu=4)
    training_loop.report_tick(t, 100.0, 140.0, 1.0, 0.0, CUDA0, {}, c)
    line = capsys.readouterr().out
    assert "gpumem 1.50  " in line and "sec/kimg 10.00" in line  # 3 * 2**29 bytes; 40 s for 4 kimg.
    assert cuda.log == [("max_memory_allocated", CUDA0), ("reset_peak_memory_stats", CUDA0)]

    cuda.log.clear()
    training_loop.report_tick(t, 100.0, 140.0, 1.0, 0.0, torch.device("cpu"), {}, c)
    assert "gpumem 0.00  " in capsys.readouterr().out and cuda.log == []


def test_mixed_precision_blocks_are_float16_on_a_gpu(monkeypatch):
    monkeypatch.delenv("GANFORGE_CPU_FP16", raising=False)
    assert block_dtype(True, False, CUDA0) == torch.float16
    assert block_dtype(True, True, CUDA0) == torch.float32  # --fp32
    assert block_dtype(False, False, CUDA0) == torch.float32


def test_the_gpu_memory_gauge_reads_the_caching_allocator(monkeypatch):
    calls = Calls(max_memory_allocated=5, mem_get_info=(30, 100), memory_reserved=12)
    for name in ("reset_peak_memory_stats", "max_memory_allocated", "mem_get_info", "memory_reserved"):
        monkeypatch.setattr(torch.cuda, name, getattr(calls, name))
    gauge = batch_memory.CudaMemory(CUDA1)
    gauge.reset()
    assert gauge.peak_bytes() == 5
    assert gauge.available_bytes() == 42  # What is free, and what the allocator holds already.
    assert [call[1] for call in calls.log] == [CUDA1] * 4


def test_the_probe_puts_back_every_gpus_random_state(monkeypatch):
    rng = FakeCudaRng(monkeypatch)
    cpu = torch.get_rng_state()
    with batch_memory.random_state_kept(CUDA0):
        torch.rand(3)
        rng.states = {0: torch.tensor([0]), 1: torch.tensor([1])}
    assert torch.equal(torch.get_rng_state(), cpu)
    assert {i: int(s) for i, s in rng.states.items()} == {0: 10, 1: 11}
    with pytest.raises(Stop), batch_memory.random_state_kept(torch.device("cpu")):  # The CPU's only.
        rng.manual_seed(3)
        raise Stop
    assert int(rng.states[0]) == 3


def test_batch_gpu_auto_probes_a_gpu_and_says_what_it_measured(tmp_path, shapes8, monkeypatch, capsys):
    monkeypatch.delenv(INJECT, raising=False)
    c = make_config(tmp_path, shapes8, "--batch=16", "--batch-gpu=auto")
    c = dataclasses.replace(c, run_dir=str(tmp_path))  # Where the choice is written (training_options.json).
    run = Run(c, steps=1)
    c = training_loop.settle_batch_gpu(c, run.t, False, run.labels, (3, 8, 8), FakeGauge([0.9, 0.5]))
    assert c.batch_gpu == run.t.batch_gpu == 8 and c.rounds == 2
    out = capsys.readouterr().out
    assert "--batch-gpu=auto: 8 per GPU x 2 rounds (probe: 16 needs 90%, 8 needs 50% of 0.9 GiB available" in out
    assert json.loads((tmp_path / "training_options.json").read_text())["batch_gpu"] == 8

    monkeypatch.setenv(INJECT, "0:any:0:start")  # Nothing fits.
    with pytest.raises(TrainingStopped, match=r"no per-GPU batch fits \(16 out of memory, 8 out of memory, 4 out"):
        training_loop.settle_batch_gpu(c, run.t, False, run.labels, (3, 8, 8), FakeGauge([]))


def test_running_out_of_gpu_memory_empties_the_cache_before_smaller_rounds(tmp_path, shapes8, monkeypatch):
    monkeypatch.delenv(custom_ops.ENV_ENABLE, raising=False)
    c = make_config(tmp_path, shapes8, "--batch=16", "--batch-gpu=auto")
    run = Run(c, steps=1)
    calls = Calls()
    monkeypatch.setattr(torch.cuda, "empty_cache", calls.empty_cache)
    accumulate_or_undo = batch_memory.accumulate_or_undo

    def on_a_gpu(*args, **kwargs):  # A GPU is seen in the accumulation only: the optimizer step needs a real one.
        with monkeypatch.context() as m:
            m.setattr(torch.cuda, "is_available", lambda: True)
            return accumulate_or_undo(*args, **kwargs)

    monkeypatch.setattr(batch_memory, "accumulate_or_undo", on_a_gpu)
    monkeypatch.setenv(INJECT, "0:Gmain:8:start")
    run.steps(1)
    assert run.t.batch_gpu == 8 and calls.log == [("empty_cache",)]  # Once: after the failed Gmain of 16.


# ----------------------------------------------------------------------------
# Metrics (metrics/features.py).


def test_the_metric_loader_pins_memory_for_a_gpu(monkeypatch):
    seen = record_pin_memory(monkeypatch)
    for device in (CUDA0, torch.device("cpu")):
        ctx = types.SimpleNamespace(device=device, num_workers=0, batch_size=2)
        with pytest.raises(Stop):
            next(features.real_batches(ctx, list(range(4)), np.arange(4)))
    assert seen == [True, False]


@pytest.mark.parametrize("device", [CUDA1, torch.device("cuda")])
def test_seeded_noise_seeds_and_restores_the_gpus_generator(cuda, monkeypatch, device):
    rng = FakeCudaRng(monkeypatch, current=1)
    cpu = torch.get_rng_state()
    with features.seeded_torch_rng(7, device):
        assert {i: int(s) for i, s in rng.states.items()} == {0: 10, 1: 7}  # cuda alone means the current GPU, 1.
        assert torch.equal(torch.get_rng_state(), torch.Generator().manual_seed(7).get_state())
        torch.rand(3)
    assert {i: int(s) for i, s in rng.states.items()} == {0: 10, 1: 11} and torch.equal(torch.get_rng_state(), cpu)


# ----------------------------------------------------------------------------
# The ops and their kernels (torch_utils/custom_ops.py, torch_utils/ops).


def test_the_kernels_build_for_the_gpu_present(cuda, monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    assert custom_ops.arch_list() == "9.0"
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    assert custom_ops.arch_list() == "8.0;9.0"


def test_the_kernels_serve_gpu_tensors_only(monkeypatch):
    module = types.ModuleType("kernel")
    monkeypatch.setattr(custom_ops, "get_kernel", lambda name: module)
    monkeypatch.setenv(custom_ops.ENV_ENABLE, "1")
    on_gpu, on_cpu = types.SimpleNamespace(is_cuda=True), types.SimpleNamespace(is_cuda=False)
    assert custom_ops.kernel_for("bias_act", on_gpu, on_gpu) is module
    assert custom_ops.kernel_for("bias_act", on_gpu, on_cpu) is None
    monkeypatch.setenv(custom_ops.ENV_ENABLE, "0")
    assert custom_ops.kernel_for("bias_act", on_gpu) is None


def test_filtered_lrelu_off_the_cpu_keeps_the_layout_and_always_clamps():
    # The meta device stands in for a GPU: every shape, layout and branch decision, and no values.
    f, x, b = upfirdn2d.setup_filter([1, 3, 3, 1]), torch.full([2, 4, 10, 10], 1e-3), torch.zeros([4])
    kwargs = dict(up=2, down=2, padding=2, clamp=256.0, impl="ref")
    assert FL._clamp_is_inactive(x, f, 2, 1.0, 0.2, 256.0)  # On the CPU a clamp that cannot bind is left out.
    on_cpu = FL.filtered_lrelu(x, f, f, b, **kwargs)
    f, x, b = f.to("meta"), x.to("meta"), b.to("meta")
    assert not FL._clamp_is_inactive(x, f, 2, 1.0, 0.2, 256.0)  # Reading a bound would stall a GPU's queue.
    y = FL.filtered_lrelu(x, f, f, b, **kwargs)
    assert y.device.type == "meta" and y.shape == on_cpu.shape and y.is_contiguous()  # Not channels-last.
