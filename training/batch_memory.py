"""--batch-gpu=auto: the memory probe before the first step, and phases that survive running out of memory.

Before the first step of a new run on a GPU, `probe_batch_gpu` runs one step's forward and backward passes (every
phase, regularization included) at each candidate per-GPU batch, largest first, and takes the first that fits with a
margin; it changes nothing of the run. During training, `accumulate_or_undo` catches an out-of-memory error of a
phase's accumulation, makes every rank agree, and undoes what the attempt changed, so the training loop can redo the
phase with smaller rounds. Only the accumulation is guarded: it holds the activations, the memory that depends on
`batch_gpu`; the gradient reduction and the optimizer step need the same memory at any `batch_gpu`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import torch

from torch_utils import distributed, training_stats
from training.config import TrainingConfig, batch_gpu_candidates
from training.loss import Chunk, ChunkMaker, Phase, StyleGAN2Loss

if TYPE_CHECKING:  # The training loop imports this module.
    from training.training_loop import PhaseRunner, Trainer

# The probe's peak, plus the optimizer state a new run has not allocated yet, must stay under this share of the memory
# available to the process. The rest covers what the peak of allocated memory does not show: the caching allocator's
# fragmentation (reserved exceeds allocated by some percent), cuDNN's autotuned workspaces, and steps that need more
# than the probe's (another path through augmentation); a later out-of-memory error still halves batch_gpu.
PROBE_MEMORY_FRACTION = 0.85

INJECT_OOM_VARIABLE = "GANFORGE_INJECT_OOM"  # Test-only: see inject_oom.


def smaller_batch_gpu(batch_gpu: int, mbstd_group: int) -> int | None:
    """The per-GPU batch to go on with after `batch_gpu` ran out of memory: half of it, or when half is not a multiple
    of `mbstd_group`, the largest divisor below half that is; None when there is none."""
    return next((b for b in batch_gpu_candidates(batch_gpu, mbstd_group) if b <= batch_gpu // 2), None)


def inject_oom(step: int, phase: Phase, images: int, where: str) -> None:
    """Test-only: raise torch.OutOfMemoryError where the environment variable GANFORGE_INJECT_OOM says, so that
    --batch-gpu=auto can be tested without a GPU. Unset, as outside the tests, it does nothing.

    The variable holds comma-separated rules `STEP:PHASE:IMAGES:WHERE[:RANK]`: from step STEP on (the probe runs at
    the step the run starts from), phase PHASE (a Phase name, or `any`) with rounds of more than IMAGES images fails
    at WHERE, `start` (before the accumulation: nothing changed yet, the phase's collective not made) or `end` (after
    it: every effect made, all to be undone), on rank RANK only when it is given. `3:Dmain:8:end` makes a device on
    which, from step 3 on, Dmain fits at most 8 images per round.

    Args:
        images: The phase's images per round (batch_gpu).
        where:  'start' or 'end'.
    """
    spec = os.environ.get(INJECT_OOM_VARIABLE)
    for rule in spec.split(",") if spec else []:
        first_step, phase_name, limit, at, *rank = rule.split(":")
        if (
            step >= int(first_step)
            and phase_name in ("any", phase.value)
            and images > int(limit)
            and at == where
            and (not rank or int(rank[0]) == distributed.get_rank())
        ):
            raise torch.OutOfMemoryError(f"{INJECT_OOM_VARIABLE}={spec}: {phase.value} with {images} images, {where}")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` says the device ran out of memory: torch.OutOfMemoryError from PyTorch's allocator, or the
    RuntimeError of a library that allocates on its own (cuBLAS, cuDNN, a CUDA call)."""
    text = str(error)
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in text or "CUBLAS_STATUS_ALLOC_FAILED" in text


class PhaseUndo:
    """What a phase's accumulation changes besides gradients, copied before it on the tensors' own devices: the
    loss's state (path length mean), the pending signs of the ADA controller the loss feeds, G's and D's buffers
    (tracked statistics such as w_avg) and the reported statistics. `restore` puts them back."""

    def __init__(self, loss: StyleGAN2Loss):
        self.loss = loss
        self.loss_state = loss.snapshot()
        self.ada_state = loss.ada.snapshot() if loss.ada is not None else None
        self.buffers = [(b, b.clone()) for module in (loss.G, loss.D) for b in module.buffers()]
        self.stats = training_stats.default_recorder.snapshot()

    def restore(self) -> None:
        """Undo every change made since the copy."""
        self.loss.restore(self.loss_state)
        if self.loss.ada is not None:
            self.loss.ada.restore(self.ada_state)
        with torch.no_grad():
            for buffer, saved in self.buffers:
                buffer.copy_(saved)
        training_stats.default_recorder.restore(self.stats)


def accumulate_or_undo(
    loss: StyleGAN2Loss,
    phase: Phase,
    make_chunk: ChunkMaker,
    num_chunks: int,
    gain: float,
    cur_nimg: int,
    step: int,
    images: int,
) -> bool:
    """`loss.accumulate_gradients`, except that running out of memory on any rank leaves no trace on any rank.

    A rank that runs out of memory first makes the collective calls the others' accumulation still waits for (with
    nothing to add), then all ranks agree on one flag over the CPU group, so they never diverge in their collectives.
    Collective: every rank calls it for the same phase.

    Args:
        make_chunk, num_chunks, gain, cur_nimg: As for `StyleGAN2Loss.accumulate_gradients`.
        step:   The step's index, for the test-only `inject_oom`.
        images: The images per chunk (batch_gpu), for the same.

    Returns:
        True when every rank accumulated its gradients. False when some rank ran out of memory: every rank has then
        put back what the attempt changed (see PhaseUndo) except the gradients, which the caller drops.
    """
    undo = PhaseUndo(loss)
    failed = False
    try:
        inject_oom(step, phase, images, "start")
        loss.accumulate_gradients(phase, make_chunk, num_chunks, gain=gain, cur_nimg=cur_nimg)
        inject_oom(step, phase, images, "end")
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        failed = True  # Recovered below, outside the handler, whose traceback still holds the attempt's tensors.
    if failed:
        loss.join_collectives(phase)
    (failed,) = distributed.agree([failed])
    if failed:
        undo.restore()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # The attempt's blocks, cut to its sizes, would fragment the smaller rounds'.
    return not failed


class MemoryGauge(Protocol):
    """What the probe measures with: CudaMemory, or a stand-in in tests."""

    def reset(self) -> None: ...
    def peak_bytes(self) -> int: ...
    def available_bytes(self) -> int: ...


class CudaMemory:
    """Memory of one CUDA device as the caching allocator counts it."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        """Start a new peak."""
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak_bytes(self) -> int:
        """The most memory allocated at once since `reset`."""
        return torch.cuda.max_memory_allocated(self.device)

    def available_bytes(self) -> int:
        """What this process can use: the device's free memory and what its allocator holds already."""
        free, _ = torch.cuda.mem_get_info(self.device)
        return free + torch.cuda.memory_reserved(self.device)


def unallocated_optimizer_bytes(phases: list[PhaseRunner]) -> int:
    """Adam's two moments of every trained parameter that has no optimizer state yet: a new run's first step
    allocates them, and they stay for the whole run."""
    total, seen = 0, set()
    for runner in phases:
        for param in runner.params:
            if id(param) not in seen and not runner.opt.state.get(param):
                total += 2 * param.numel() * param.element_size()
            seen.add(id(param))
    return total


@dataclasses.dataclass
class ProbeResult:
    """What the memory probe found."""

    batch_gpu: int | None  # The largest candidate that fits; None: not even the smallest does.
    tried: list[str]  # One note per candidate tried, largest first: '32 out of memory', '16 needs 61%'.
    available_bytes: int  # The memory available to the process when the probe began.


def probe_batch_gpu(
    t: Trainer, c: TrainingConfig, labels: torch.Tensor, image_shape: tuple[int, int, int], gauge: MemoryGauge
) -> ProbeResult:
    """Find the largest per-GPU batch that fits: at each candidate, largest first, one round of every phase's forward
    and backward passes (Gmain, Greg, Dmain, Dreg, whatever their interval). A candidate fits when no rank runs out of
    memory and the peak plus Adam's state still to be allocated stays under PROBE_MEMORY_FRACTION of the available
    memory on every rank.

    Nothing of the run changes: no optimizer steps, and the loss's state, G's and D's buffers, the reported statistics
    and torch's random generators are put back, so the run that follows equals a run started with the chosen
    --batch-gpu. Collective: the ranks probe the same candidates and agree on each.

    Args:
        labels:      Every label of the dataset [num_images, c_dim], from which generated labels are drawn.
        image_shape: [C, H, W] of the training images.
    """
    available = gauge.available_bytes()
    optimizer_bytes = unallocated_optimizer_bytes(t.phases)
    undo = PhaseUndo(t.loss)
    tried = []
    with random_state_kept(labels.device):
        try:
            for batch_gpu in batch_gpu_candidates(c.batch_size // c.gpus, c.mbstd_group):
                gauge.reset()
                ran = _probe_step(t, c, labels, image_shape, batch_gpu)
                share = (gauge.peak_bytes() + optimizer_bytes) / available if ran else None
                fits = ran and share <= PROBE_MEMORY_FRACTION
                (too_big,) = distributed.agree([not fits])  # The same choice on every rank.
                note = f"{batch_gpu} needs {share:.0%}" if ran else f"{batch_gpu} out of memory"
                tried.append(note + (" (too much on another rank)" if fits and too_big else ""))
                if not too_big:
                    return ProbeResult(batch_gpu, tried, available)
            return ProbeResult(None, tried, available)
        finally:
            undo.restore()
            gauge.reset()  # Tick 0's peak memory is the training's own.


@contextlib.contextmanager
def random_state_kept(device: torch.device) -> Iterator[None]:
    """Put torch's CPU random generator back as it was after the block, and on a CUDA `device` every GPU's too."""
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def _probe_step(
    t: Trainer, c: TrainingConfig, labels: torch.Tensor, image_shape: tuple[int, int, int], batch_gpu: int
) -> bool:
    """One round of `batch_gpu` images through every phase, gradients dropped after each; False on out of memory."""
    device = labels.device
    real_img = torch.zeros([batch_gpu, *image_shape], device=device)  # Memory does not depend on the pixels.
    real_c = torch.zeros([batch_gpu, labels.shape[1]], device=device)

    def make_chunk(index: int) -> Chunk:
        torch.manual_seed(index)  # Typical draws suffice: the generators are put back after the probe.
        gen_z = torch.randn([batch_gpu, t.G.z_dim], device=device)
        gen_c = labels[torch.randint(len(labels), [batch_gpu], device=device)]
        return Chunk(real_img, real_c, gen_z, gen_c)

    for runner in t.phases:
        for param in runner.params:
            param.requires_grad_(True)
        runner.opt.zero_grad(set_to_none=True)
        gain = runner.interval * batch_gpu / c.batch_size
        progress = t.progress
        ran = accumulate_or_undo(t.loss, runner.phase, make_chunk, 1, gain, progress.cur_nimg, progress.step, batch_gpu)
        runner.opt.zero_grad(set_to_none=True)
        for param in runner.params:
            param.requires_grad_(False)
        if not ran:
            return False
    return True
