"""The training loop: alternate G and D phases over each batch, keep G's moving average, report and snapshot.

Randomness is a function of counters: every (step, phase, chunk) reseeds torch from the run seed, where a chunk
is one process's accumulation round. The data order is a function of the image count. So a run continued from
a training state, or split over a different number of processes with the same `--batch-gpu`, computes exactly
what an uninterrupted single-process run computes.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from typing import Any

import numpy as np
import psutil
import torch

import dnnlib
from torch_utils import distributed, host_memory, misc, stop_signals, training_stats
from training import batch_memory, checkpoint, plots, preemption
from training.augment import AUGMENT_PRESETS, AdaController, AugmentPipe
from training.config import TrainingConfig, construct_networks
from training.dataset import ImageFolderDataset, SkipDamaged
from training.legacy import newest_snapshot
from training.loss import Chunk, Phase, StyleGAN2Loss
from training.metric_runner import BestSnapshot, MetricRunner
from training.networks_stylegan2 import Discriminator
from training.run_log import RunLog, grid_shape, save_image_grid
from training.runs import prepare_run_dir, resume, write_training_options


@dataclasses.dataclass
class Progress:
    """Counters that place the run on its schedule; saved in training states."""

    cur_nimg: int = 0  # Real images shown to D so far, over all processes.
    step: int = 0  # Optimizer steps taken (each over one full batch).
    cur_tick: int = 0  # Index of the tick in progress.
    tick_start_nimg: int = 0  # cur_nimg when the tick in progress began.
    elapsed_sec: float = 0.0  # Training time of earlier sessions of this run, in seconds.

    def state_dict(self) -> dict:
        """The counters as a dict."""
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        """Restore the counters."""
        for name, value in state.items():
            setattr(self, name, value)


@dataclasses.dataclass
class PhaseRunner:
    """A loss phase together with the network it updates, that network's optimizer and its schedule."""

    phase: Phase
    module: torch.nn.Module
    params: list[torch.nn.Parameter]  # The parameters it trains (frozen layers excluded).
    opt: torch.optim.Optimizer
    interval: int  # Runs on steps divisible by this; the lazy regularization interval, or 1.


class GeneratorEma:
    """Exponential moving average of G's weights, whose half-life ramps up with the images seen (StyleGAN2-ADA)."""

    def __init__(self, G_ema: torch.nn.Module, ema_kimg: float, ema_rampup: float | None):
        """
        Args:
            G_ema:      The averaged copy of G, updated in place.
            ema_kimg:   Half-life of the average, in thousands of images.
            ema_rampup: Cap the half-life at this fraction of the images seen so far; None: no cap.
        """
        self.module = G_ema
        self.ema_kimg = ema_kimg
        self.ema_rampup = ema_rampup

    @torch.no_grad()
    def update(self, G: torch.nn.Module, cur_nimg: int, batch_size: int) -> None:
        """Blend G into the average after a step of `batch_size` images that began at `cur_nimg`; buffers are
        copied as they are."""
        ema_nimg = self.ema_kimg * 1000
        if self.ema_rampup is not None:
            ema_nimg = min(ema_nimg, cur_nimg * self.ema_rampup)
        beta = 0.5 ** (batch_size / max(ema_nimg, 1e-8))
        for p_ema, p in zip(self.module.parameters(), G.parameters(), strict=True):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.module.buffers(), G.buffers(), strict=True):
            b_ema.copy_(b.detach())

    def state_dict(self) -> dict:
        """The averaged weights."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore the averaged weights."""
        self.module.load_state_dict(state)


@dataclasses.dataclass
class Trainer:
    """Everything the loop updates; its state_dict is the training state saved next to each snapshot."""

    G: torch.nn.Module
    D: Discriminator
    ema: GeneratorEma
    phases: list[PhaseRunner]
    loss: StyleGAN2Loss
    progress: Progress
    augment_pipe: AugmentPipe | None  # None with --aug=noaug.
    ada: AdaController | None  # None unless --aug=ada.
    batch_gpu: int  # Images per round in effect: --batch-gpu, or what --batch-gpu=auto chose and lowered since.

    def state_dict(self) -> dict:
        """Networks, optimizers, loss state, augmentation probability, counters and the batch_gpu in effect."""
        optimizers = {runner.phase.network: runner.opt for runner in self.phases}
        state = {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.ema.state_dict(),
            "G_opt": optimizers["G"].state_dict(),
            "D_opt": optimizers["D"].state_dict(),
            "loss": self.loss.state_dict(),
            "progress": self.progress.state_dict(),
            "batch_gpu": self.batch_gpu,
        }
        if self.augment_pipe is not None:
            state["augment_pipe"] = self.augment_pipe.state_dict()
        if self.ada is not None:
            state["ada"] = self.ada.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned."""
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.ema.load_state_dict(state["G_ema"])
        optimizers = {runner.phase.network: runner.opt for runner in self.phases}
        optimizers["G"].load_state_dict(state["G_opt"])
        optimizers["D"].load_state_dict(state["D_opt"])
        self.loss.load_state_dict(state["loss"])
        self.progress.load_state_dict(state["progress"])
        self.batch_gpu = int(state.get("batch_gpu", self.batch_gpu))  # States before --batch-gpu=auto lack it.
        if self.augment_pipe is not None:
            self.augment_pipe.load_state_dict(state["augment_pipe"])
        if self.ada is not None:
            ada_state = state["ada"]
            if "real_signs" not in ada_state:  # Older states kept ADA's pending signs in the loss's state.
                ada_state = {**ada_state, "real_signs": state["loss"]["real_signs"]}
            self.ada.load_state_dict(ada_state)

    def gather_pending(self) -> None:
        """Collective, on every rank right before rank 0 writes a snapshot or state: ADA's pending signs of D on
        reals move to rank 0, whose state then holds them all."""
        if self.ada is not None:
            self.ada.gather_pending()

    @property
    def augment_p(self) -> float:
        """The current augmentation probability (0 without augmentation)."""
        return float(self.augment_pipe.p) if self.augment_pipe is not None else 0.0


# ----------------------------------------------------------------------------
# Set-up.


def training_set_kwargs(c: TrainingConfig) -> dict:
    """ImageFolderDataset arguments; stored in snapshots so tools can reopen the same data."""
    return dict(path=c.data, use_labels=c.cond, xflip=c.mirror, max_size=None, random_seed=c.seed)


def build_networks(c: TrainingConfig, dataset: ImageFolderDataset, device: torch.device):
    """Construct G, D and G_ema for the dataset's resolution, channels and labels, identically on every rank."""
    torch.manual_seed(c.seed)
    G, D = construct_networks(c, dataset.resolution, dataset.num_channels, dataset.label_dim)
    G = G.train().requires_grad_(False).to(device)
    D = D.train().requires_grad_(False).to(device)
    G_ema = copy.deepcopy(G).eval()
    return G, D, G_ema


def build_trainer(c: TrainingConfig, dataset: ImageFolderDataset, device: torch.device) -> Trainer:
    """Networks, augmentation, loss and phases for a new run, identically on every rank; counters at zero."""
    G, D, G_ema = build_networks(c, dataset, device)
    augment_pipe, ada = build_augmentation(c, device)
    loss = build_loss(c, G, D, augment_pipe, ada)
    ema = GeneratorEma(G_ema, c.ema_kimg, c.ema_rampup)
    return Trainer(G, D, ema, build_phases(c, G, D), loss, Progress(), augment_pipe, ada, c.batch_gpu)


def build_phases(c: TrainingConfig, G: torch.nn.Module, D: Discriminator) -> list[PhaseRunner]:
    """Gmain, Greg, Dmain, Dreg with lazy regularization (or Gboth, Dboth without), each with its Adam.

    The first `c.freezed` layers of D are left out of its optimizer and never receive gradients.
    """
    frozen = tuple(name + "." for name in D.layer_names()[: c.freezed])
    runners = []
    for name, module, lr, reg_interval in [("G", G, c.glr, c.G_reg_interval), ("D", D, c.dlr, c.D_reg_interval)]:
        params = [p for param_name, p in module.named_parameters() if not param_name.startswith(frozen)]
        if reg_interval == 0:
            opt = torch.optim.Adam(params, lr=lr, betas=c.betas, eps=c.eps)
            runners.append(PhaseRunner(Phase[name + "both"], module, params, opt, interval=1))
            continue
        # Lazy regularization (paper, Section 3.1): the main phase runs reg_interval / (reg_interval + 1) of the
        # updates, so its learning rate and betas are adjusted to keep the same effective schedule.
        ratio = reg_interval / (reg_interval + 1)
        betas = tuple(beta**ratio for beta in c.betas)
        opt = torch.optim.Adam(params, lr=lr * ratio, betas=betas, eps=c.eps)
        runners.append(PhaseRunner(Phase[name + "main"], module, params, opt, interval=1))
        runners.append(PhaseRunner(Phase[name + "reg"], module, params, opt, interval=reg_interval))
    return runners


def build_loss(
    c: TrainingConfig,
    G: torch.nn.Module,
    D: Discriminator,
    augment_pipe: AugmentPipe | None,
    ada: AdaController | None = None,
) -> StyleGAN2Loss:
    """The loss with the config's weights and the preset's rule for G's tracked statistics, feeding `ada`."""
    return StyleGAN2Loss(
        G,
        D,
        augment_pipe=augment_pipe,
        ada=ada,
        r1_gamma=c.gamma,
        style_mixing_prob=c.style_mixing_prob,
        pl_weight=c.pl_weight,
        pl_batch_shrink=c.pl_batch_shrink,
        pl_decay=c.pl_decay,
        blur_init_sigma=c.blur_init_sigma,
        blur_fade_kimg=c.blur_fade_kimg,
        G_stats_network=c.preset.G_stats_network,
    )


def build_augmentation(c: TrainingConfig, device: torch.device) -> tuple[AugmentPipe | None, AdaController | None]:
    """The 'bgc' augment pipe of StyleGAN2-ADA and, for --aug=ada, its p controller."""
    if c.aug == "noaug":
        return None, None
    pipe = AugmentPipe(**AUGMENT_PRESETS["bgc"]).train().requires_grad_(False).to(device)
    if c.aug == "fixed":
        pipe.p.fill_(c.p)
        return pipe, None
    return pipe, AdaController(pipe, target=c.target, interval=c.ada_interval, ada_kimg=c.ada_kimg)


def make_data_iterator(c: TrainingConfig, dataset: ImageFolderDataset, start_nimg: int, device: torch.device):
    """Endless batches of `batch_gpu` reals for this rank, starting where `start_nimg` images left off."""
    sampler = misc.InfiniteSampler(
        dataset,
        rank=distributed.get_rank(),
        num_replicas=distributed.get_world_size(),
        seed=c.seed,
        start_pos=start_nimg,
        block_size=c.batch_gpu,
    )
    loader = torch.utils.data.DataLoader(
        SkipDamaged(dataset),
        sampler=sampler,
        batch_size=c.batch_gpu,
        num_workers=c.workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=2 if c.workers > 0 else None,
        persistent_workers=c.workers > 0,
        worker_init_fn=stop_signals.worker_init_fn(),  # A stop signal to the whole group is this process's to handle.
    )
    for images, labels, skipped in stop_signals.loader_batches(loader):
        training_stats.report("Progress/damaged_images", skipped.sum())  # Counted per tick (Health).
        yield images.to(device).to(torch.float32) / 127.5 - 1, labels.to(device)


def chunk_seed(seed: int, step: int, phase_index: int, chunk: int) -> int:
    """The torch seed for one chunk of one phase of one step."""
    return int(np.random.SeedSequence([seed, step, phase_index, chunk]).generate_state(1)[0])


# ----------------------------------------------------------------------------
# One step.


def reduce_gradients(module: torch.nn.Module, network: str) -> None:
    """Sum gradients over ranks in one all-reduce, map non-finite values as published and count them.

    As in the published loop, a parameter that no rank's loss reached keeps `grad=None`, so Adam skips it
    (no step count, no decay of its moments): e.g. the toRGB biases in Greg, D's `b4.out.bias` in Dreg. The
    parameters reduced are those with a gradient on any rank, so the all-reduce layout is the same on every rank.
    After the reduction NaN becomes 0 and +-inf +-1e5 (`Progress/nonfinite_grads/{network}` counts them).
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return
    reached = [p.grad is not None for p in params]
    if distributed.is_distributed():  # Agree across ranks (one process needs no device round trip, so no sync).
        has_grad = torch.tensor(reached, dtype=torch.float32, device=params[0].device)  # [P]
        reached = [count > 0 for count in distributed.all_reduce_sum(has_grad).tolist()]
    params = [p for p, r in zip(params, reached, strict=True) if r]
    if not params:
        training_stats.report(f"Progress/nonfinite_grads/{network}", 0)
        return
    flat = distributed.all_reduce_sum(
        torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
    )
    training_stats.report(f"Progress/nonfinite_grads/{network}", (~torch.isfinite(flat)).sum())
    flat = torch.nan_to_num(flat, nan=0.0, posinf=1e5, neginf=-1e5)
    for p, grad in zip(params, flat.split([p.numel() for p in params]), strict=True):
        p.grad = grad.reshape(p.shape)


def run_phase(
    runner: PhaseRunner,
    phase_index: int,
    loss: StyleGAN2Loss,
    reals: list[tuple[torch.Tensor, torch.Tensor]],
    labels: torch.Tensor,
    z_dim: int,
    c: TrainingConfig,
    progress: Progress,
    split: int = 1,
) -> bool:
    """Accumulate one phase's gradients over this rank's rounds, reduce them over ranks and take the step.

    Args:
        phase_index: The runner's index in the step's phase list, part of every chunk's seed.
        reals:       This rank's rounds of real images [batch_gpu, C, H, W] and labels [batch_gpu, c_dim].
        labels:      Every label of the dataset [num_images, c_dim], from which generated labels are drawn.
        split:       Into how many consecutive rounds each of this rank's blocks of the data was split: 1, except in
                     the step in which --batch-gpu=auto lowered batch_gpu (`lower_batch_gpu`). Chunks are numbered
                     in the order of the data, so each seed goes with the images it has in a run that used the lower
                     batch_gpu from the start.

    Returns:
        True. False only with --batch-gpu=auto when some rank ran out of memory: then on every rank nothing has
        changed (see batch_memory.accumulate_or_undo), and the phase can be run again with smaller rounds.
    """
    rank, world = distributed.get_rank(), distributed.get_world_size()
    batch_gpu = len(reals[0][0])

    def make_chunk(round_index: int) -> Chunk:
        """Round `round_index` of this rank, after reseeding torch for it: remaking it repeats every draw."""
        real_img, real_c = reals[round_index]
        block, part = divmod(round_index, split)
        chunk = (block * world + rank) * split + part  # round_index * world + rank when split is 1.
        torch.manual_seed(chunk_seed(c.seed, progress.step, phase_index, chunk))
        gen_z = torch.randn([batch_gpu, z_dim], device=real_img.device)
        gen_c = labels[torch.randint(len(labels), [batch_gpu], device=labels.device)]
        return Chunk(real_img, real_c, gen_z, gen_c)

    for param in runner.params:
        param.requires_grad_(True)
    runner.opt.zero_grad(set_to_none=True)
    gain = runner.interval * batch_gpu / c.batch_size  # The chunks' mean losses add up to the batch mean.
    accumulated = True
    if c.batch_gpu_auto:
        accumulated = batch_memory.accumulate_or_undo(
            loss, runner.phase, make_chunk, len(reals), gain, progress.cur_nimg, progress.step, batch_gpu
        )
    else:
        loss.accumulate_gradients(runner.phase, make_chunk, len(reals), gain=gain, cur_nimg=progress.cur_nimg)
    if accumulated:
        reduce_gradients(runner.module, runner.phase.network)
        runner.opt.step()
    else:
        runner.opt.zero_grad(set_to_none=True)
    for param in runner.params:
        param.requires_grad_(False)
    return accumulated


def lower_batch_gpu(
    t: Trainer, c: TrainingConfig, phase: Phase, reals: list[tuple[torch.Tensor, torch.Tensor]], split: int
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    """After `phase` ran out of memory with --batch-gpu=auto: lower `t.batch_gpu` for the rest of the run (halve it,
    see batch_memory.smaller_batch_gpu) and split this step's rounds to it. Returns the rounds and their `split`.

    Raises:
        TrainingStopped: batch_gpu is already the smallest that --mbstd-group allows.
    """
    old = len(reals[0][0])
    new = batch_memory.smaller_batch_gpu(old, c.mbstd_group)
    where = f"{phase.value} at kimg {t.progress.cur_nimg / 1000:g}"
    if new is None:
        raise TrainingStopped(
            f"out of memory in {where} with --batch-gpu=auto at {old} per GPU, the least that --mbstd-group="
            f"{c.mbstd_group} allows. Lower --mbstd-group, make the networks smaller (--cbase, --cmax) or use GPUs "
            f"with more memory"
        )
    t.batch_gpu = new
    reals = [part for img, img_c in reals for part in zip(img.split(new), img_c.split(new), strict=True)]
    rounds = c.batch_size // (new * c.gpus)
    distributed.print0(
        f"--batch-gpu=auto: out of memory in {where} with {old} per GPU; {new} per GPU x {rounds} rounds from now on, "
        f"and {phase.value} is redone on the same images."
    )
    return reals, split * (old // new)


# ----------------------------------------------------------------------------
# The loop.


def train_step(t: Trainer, c: TrainingConfig, reals: list[tuple[torch.Tensor, torch.Tensor]], labels: torch.Tensor):
    """One step: every phase due at this step, the ADA update, G's moving average, then the counters.

    With --batch-gpu=auto, a phase that ran out of memory on some rank is redone on every rank with the step's rounds
    split to a lower batch_gpu, which `t.batch_gpu` keeps for the rest of the run: no step is lost, and the batch and
    its loss are the same.

    Args:
        reals:  This rank's rounds of real images [batch_gpu, C, H, W] and labels [batch_gpu, c_dim].
        labels: Every label of the dataset [num_images, c_dim], from which generated labels are drawn.
    """
    split = 1
    for phase_index, runner in enumerate(t.phases):
        if t.progress.step % runner.interval == 0:
            while not run_phase(runner, phase_index, t.loss, reals, labels, t.G.z_dim, c, t.progress, split):
                reals, split = lower_batch_gpu(t, c, runner.phase, reals, split)
    if t.ada is not None:
        t.ada.after_step(t.progress.step, c.batch_size)  # ADA (Karras et al. 2020, Section 3).
    t.ema.update(t.G, t.progress.cur_nimg, c.batch_size)
    t.progress.cur_nimg += c.batch_size
    t.progress.step += 1


class TrainingStopped(Exception):
    """Training cannot usefully go on (it diverged, or nothing fits in memory); the message says what happened and
    how to go on."""


def is_worker_death(error: BaseException) -> bool:
    """Whether `error` is torch's report that a DataLoader worker process died (raised in this process wherever it
    happens to be when the worker's end is noticed, even in the middle of writing a file)."""
    return isinstance(error, RuntimeError) and "DataLoader worker" in str(error)


def describe_worker_death(error: BaseException, c: TrainingConfig) -> str:
    """The sentence for a DataLoader worker that died: what happened, the likely cause and how to go on."""
    return (
        f"a DataLoader worker process died ({str(error).strip()}). Stop signals are handled by the training process "
        f"and never end a worker, so something else did: most often the system ran out of memory (try fewer "
        f"--workers than {c.workers}). Files written so far are complete; continue with "
        f"--resume={c.run_dir or 'latest'}."
    )


NONFINITE_LOSS_TICKS = 2  # Stop when G's or D's mean loss is non-finite in this many consecutive ticks.


def training_loop(c: TrainingConfig) -> None:
    """Train per `c` on this process's share of each batch; rank 0 writes everything under `c.run_dir`.

    A stop signal from the start on (while the networks are built, say) is acted on at the first step boundary.

    Raises:
        TrainingStopped: The weights or losses stopped being finite (see `Health`).
        SystemExit: A stop signal arrived; a training state was written first (see training.preemption).
    """
    with preemption.StopRequest() as stop:
        train(c, stop)


def train(c: TrainingConfig, stop: preemption.StopRequest) -> None:
    """The body of `training_loop`, with `stop` catching the stop signals."""
    start_time = time.time()
    device = distributed.select_device()
    if device.type == "cpu":
        distributed.print0("No CUDA device found: training on the CPU in float32 (slow, but it works).")
        host_memory.keep_freed_memory()  # No page faults on reused tensors (torch_utils/host_memory.py).
    torch.backends.cudnn.benchmark = c.cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = False  # Full float32 precision, as the published results used.
    torch.backends.cudnn.allow_tf32 = False

    dataset = ImageFolderDataset(**training_set_kwargs(c))
    labels = torch.from_numpy(np.stack([dataset.get_label(i) for i in range(len(dataset))])).to(device)
    t = build_trainer(c, dataset, device)
    G, D, G_ema = t.G, t.D, t.ema.module
    continuing = resume(c, t)
    for module in (G, D, G_ema):
        broadcast_module(module)

    log = RunLog(c.run_dir) if distributed.is_main() else None
    data = None  # The batches of reals, once training starts; closed on the way out, which ends its workers.
    try:
        if c.batch_gpu_auto:
            image_shape = (dataset.num_channels, dataset.resolution, dataset.resolution)
            c = settle_batch_gpu(c, t, continuing, labels, image_shape)
        t.batch_gpu = c.batch_gpu
        grid = SnapshotGrid(c, dataset, device)
        metric_runner = MetricRunner(
            c.metrics, training_set_kwargs(c), c.run_dir, device, c.detector_dir, c.workers, log
        )
        if not continuing:
            print_summaries(G, D, c, dataset, device)
            grid.save_reals()
            grid.save_fakes(G_ema, "fakes_init.png")
        distributed.print0(f"Training for {c.total_kimg:g} kimg from {t.progress.cur_nimg / 1000:g} kimg...")

        data = make_data_iterator(c, dataset, t.progress.cur_nimg, device)
        collector = training_stats.Collector(regex=".*")
        states = StateSchedule(c, t.progress.cur_nimg)
        health = Health(c.run_dir)
        best = BestSnapshot(c.run_dir, c.metrics[0]) if c.metrics else None  # best-<metric>.pkl, early stopping.
        tick_start_time = time.time()
        maintenance_sec = tick_start_time - start_time
        with distributed.naming_stalled_ranks("for the others in training"):
            while True:
                train_step(t, c, [next(data) for _ in range(c.rounds)], labels)
                if t.batch_gpu != c.batch_gpu:  # --batch-gpu=auto lowered it: record it, read rounds of its size.
                    c = adopt_batch_gpu(c, t.batch_gpu)
                    data.close()
                    data = make_data_iterator(c, dataset, t.progress.cur_nimg, device)

                done = t.progress.cur_nimg >= c.total_kimg * 1000
                tick_end_nimg = t.progress.tick_start_nimg + c.tick_kimg * 1000
                if done or t.progress.cur_tick == 0 or t.progress.cur_nimg >= tick_end_nimg:
                    # End of a tick: report, check health, then snapshot every snap_ticks ticks and at the end.
                    tick_end_time = time.time()
                    counts = health.counts_since_last_tick()
                    report_tick(t, tick_start_time, tick_end_time, maintenance_sec, start_time, device, counts, c)
                    collector.update()
                    if log is not None:
                        log.write_stats(collector.as_dict(), t.progress.cur_nimg / 1000)
                    health.check_weights(t)
                    health.check_losses(t, collector)
                    t.progress.cur_tick += 1
                    t.progress.tick_start_nimg = t.progress.cur_nimg
                    if done or (t.progress.cur_tick - 1) % c.snap_ticks == 0:
                        t.gather_pending()
                        snapshot_pkl = save_snapshot(c, t, grid, elapsed_sec=time.time() - start_time)
                        health.last_snapshot = snapshot_pkl
                        states.saved(t.progress.cur_nimg)
                        results = metric_runner.evaluate(t.ema.module, snapshot_pkl, t.progress.cur_nimg / 1000)
                        draw_progress(c.run_dir)
                        if best is not None:
                            best.update(results[0], snapshot_pkl)
                            if c.stop_patience and best.since_best >= c.stop_patience:
                                distributed.print0(
                                    f"Early stop: {best.metric} has not improved for {best.since_best} evaluations "
                                    f"({best.describe()})."
                                )
                                done = True
                    tick_start_time = time.time()
                    maintenance_sec = tick_start_time - tick_end_time
                if done:
                    break

                # Between steps: a state when one is due or a stop signal came, decided together by all ranks.
                stopping, state_due = distributed.agree([stop.requested, states.due(t.progress.cur_nimg)])
                if (stopping or state_due) and not states.written_at(t.progress.cur_nimg):
                    health.check_weights(t)  # A state with non-finite weights would only resume the divergence.
                    t.gather_pending()
                    save_training_state(c, t, elapsed_sec=time.time() - start_time)
                    states.saved(t.progress.cur_nimg)
                if stopping:
                    signum = stop.signum or preemption.STOP_SIGNALS[0]  # Another rank's signal stops this one too.
                    distributed.print0(
                        f"Stopped by a signal at kimg {t.progress.cur_nimg / 1000:g}; continue with the same command "
                        f"and --resume={c.run_dir} (or --resume=latest)."
                    )
                    distributed.barrier()  # No rank may exit (and so end the job) before rank 0 has written.
                    raise SystemExit(preemption.exit_status(signum))
        distributed.print0("Exiting...")
    finally:
        if data is not None:
            data.close()
        if log is not None:
            log.close()


class StateSchedule:
    """When the next training state beyond the snapshots' is due: every `state_min` minutes of training (rank
    0's clock decides, the ranks agree through `distributed.agree`) or every `state_kimg` kimg."""

    def __init__(self, c: TrainingConfig, cur_nimg: int):
        self.c = c
        self.saved(cur_nimg)

    def saved(self, cur_nimg: int) -> None:
        """A training state was just written at `cur_nimg`."""
        self.time, self.nimg = time.monotonic(), cur_nimg

    def written_at(self, cur_nimg: int) -> bool:
        """Whether the newest training state (written, or continued from) holds exactly `cur_nimg`: a stop signal
        that came while a snapshot's metrics ran finds the state already written."""
        return self.nimg == cur_nimg

    def due(self, cur_nimg: int) -> bool:
        """Whether a state should be written now (False on ranks other than 0 for the clock: see the class)."""
        by_kimg = self.c.state_kimg > 0 and cur_nimg - self.nimg >= self.c.state_kimg * 1000
        by_clock = self.c.state_min > 0 and time.monotonic() - self.time >= self.c.state_min * 60
        return by_kimg or (by_clock and distributed.is_main())


class Health:
    """Watches for divergence: non-finite gradient values (counted per tick), weights and losses.

    The run stops (TrainingStopped) when any weight of G, D or G_ema is not finite at the end of a tick, which
    also means no snapshot is ever written with non-finite weights, or when G's or D's mean loss is non-finite
    in NONFINITE_LOSS_TICKS consecutive ticks. The message names the last snapshot written with finite weights.
    """

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.last_snapshot: str | None = newest_snapshot(run_dir)
        self.nonfinite_loss_ticks = 0
        self._counted = {prefix: self._reported_total(prefix) for prefix in self.COUNTED}

    # Per-tick counts shown in the tick line when not zero: name -> statistics whose sums are added up. Every rank
    # counts the reduced gradients; damaged images are this rank's.
    COUNTED = {"nonfinite-grads": "Progress/nonfinite_grads/", "damaged-images": "Progress/damaged_images"}

    @classmethod
    def _reported_total(cls, name: str) -> float:
        """The sum of every value reported so far in this process under the statistics of COUNTED[name]."""
        prefix = cls.COUNTED[name]
        names = [n for n in training_stats.default_recorder.names() if n.startswith(prefix)]
        return sum(float(training_stats.default_recorder.cumulative(n)[1]) for n in names)

    def counts_since_last_tick(self) -> dict[str, int]:
        """Non-finite gradient values (zeroed before the optimizer steps) and damaged images skipped since the
        previous call."""
        counts = {}
        for name in self.COUNTED:
            total = self._reported_total(name)
            counts[name], self._counted[name] = int(total - self._counted[name]), total
        return counts

    def check_weights(self, t: Trainer) -> None:
        """Raise TrainingStopped if any weight of G, D or G_ema is not finite."""
        bad = {name: nonfinite_tensors(module) for name, module in (("G", t.G), ("D", t.D), ("G_ema", t.ema.module))}
        bad = {name: tensors for name, tensors in bad.items() if tensors}
        if bad:
            what = "; ".join(f"{len(v)} tensors of {k} (e.g. {v[0]})" for k, v in bad.items())
            raise TrainingStopped(
                f"training diverged at kimg {t.progress.cur_nimg / 1000:g}: {what} are not finite. "
                f"{self._how_to_go_on()}"
            )

    def check_losses(self, t: Trainer, collector: training_stats.Collector) -> None:
        """Raise TrainingStopped if G's or D's mean loss of the tick just collected is not finite, for the
        NONFINITE_LOSS_TICKS-th tick in a row."""
        where = f"kimg {t.progress.cur_nimg / 1000:g} (tick {t.progress.cur_tick})"
        losses = {name: collector.mean(f"Loss/{name}/loss") for name in ("G", "D")}
        if all(np.isfinite(v) or np.isnan(v) and collector.num(f"Loss/{k}/loss") == 0 for k, v in losses.items()):
            self.nonfinite_loss_ticks = 0
            return
        self.nonfinite_loss_ticks += 1
        if self.nonfinite_loss_ticks >= NONFINITE_LOSS_TICKS:
            shown = ", ".join(f"{k} {v:g}" for k, v in losses.items())
            raise TrainingStopped(
                f"training diverged at {where}: the mean losses were not finite for {self.nonfinite_loss_ticks} "
                f"ticks in a row ({shown}). {self._how_to_go_on()}"
            )

    def _how_to_go_on(self) -> str:
        """Where the last good weights are, and the command that goes on from them."""
        if self.last_snapshot is None:
            return (
                "No snapshot was written before; start again with lower learning rates (--glr, --dlr), a larger "
                "--gamma, or --fp32=1."
            )
        return (
            f"Nothing was saved after the last finite snapshot, {self.last_snapshot}. To go on from it, run the same "
            f"command with --resume={self.last_snapshot} and lower learning rates (for example half the --glr and "
            f"--dlr), a larger --gamma, or --fp32=1: a new run starts from its weights."
        )


def nonfinite_tensors(module: torch.nn.Module) -> list[str]:
    """Names of the module's parameters and buffers holding NaN or +-inf (one device sync for all)."""
    named = [(name, t) for name, t in misc.named_params_and_buffers(module) if t.is_floating_point()]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()
    return [name for (name, _), ok in zip(named, finite, strict=True) if not ok]


def speed_fields(
    cur_tick: int, tick_sec: float, tick_kimg: float, kimg_left: float, total_sec: float
) -> list[tuple[str, Any, str]]:
    """The tick line's speed fields: start-up time at tick 0, else sec/kimg and the time left to --kimg (eta)."""
    if cur_tick == 0:
        startup = dnnlib.util.format_time(training_stats.report0("Timing/startup_sec", total_sec))
        return [("start-up", startup, "{:<12s}")]
    sec_per_kimg = training_stats.report0("Timing/sec_per_kimg", tick_sec / max(tick_kimg, 1e-8))
    eta = dnnlib.util.format_time(max(kimg_left, 0.0) * sec_per_kimg)
    return [("sec/kimg", sec_per_kimg, "{:<7.2f}"), ("eta", eta, "{:<12s}")]


def report_tick(
    t: Trainer,
    tick_start_time: float,
    tick_end_time: float,
    maintenance_sec: float,
    start_time: float,
    device: torch.device,
    counts: dict[str, int],
    c: TrainingConfig,
) -> None:
    """Print the tick's status line and report its timings and resources as statistics.

    Tick 0 is a single step after start-up, so its line shows the start-up time instead of a speed; later ticks
    show sec/kimg and the time left to --kimg at that speed (eta).

    Args:
        counts: Troubles of this tick by name (Health.COUNTED), shown when not zero.
    """
    progress = t.progress
    kimg = progress.cur_nimg / 1000
    tick_kimg = (progress.cur_nimg - progress.tick_start_nimg) / 1000
    total_sec = progress.elapsed_sec + tick_end_time - start_time
    tick_sec = tick_end_time - tick_start_time
    cpu_mem_gb = psutil.Process(os.getpid()).memory_info().rss / 2**30
    gpu_mem_gb = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    fields = [
        ("tick", training_stats.report0("Progress/tick", progress.cur_tick), "{:<5d}"),
        ("kimg", training_stats.report0("Progress/kimg", kimg), "{:<8.1f}"),
        ("time", dnnlib.util.format_time(training_stats.report0("Timing/total_sec", total_sec)), "{:<12s}"),
        ("sec/tick", training_stats.report0("Timing/sec_per_tick", tick_sec), "{:<7.1f}"),
        *speed_fields(progress.cur_tick, tick_sec, tick_kimg, c.total_kimg - kimg, total_sec),
        ("maintenance", training_stats.report0("Timing/maintenance_sec", maintenance_sec), "{:<6.1f}"),
        ("cpumem", training_stats.report0("Resources/cpu_mem_gb", cpu_mem_gb), "{:<6.2f}"),
        ("gpumem", training_stats.report0("Resources/peak_gpu_mem_gb", gpu_mem_gb), "{:<6.2f}"),
        ("augment", training_stats.report0("Progress/augment", t.augment_p), "{:.3f}"),
    ]
    training_stats.report0("Progress/batch_gpu", c.batch_gpu)  # In stats.jsonl: when --batch-gpu=auto lowered it.
    # Shown only when they happen, so a healthy run's line stays as the published one.
    fields += [(name, count, "{:d}") for name, count in counts.items() if count]
    distributed.print0("  ".join(f"{name} {fmt.format(value)}" for name, value, fmt in fields))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


# ----------------------------------------------------------------------------
# Snapshots and start-up output (the run directory and --resume: training/runs.py).


class SnapshotGrid:
    """The fixed reals, latents and labels of the image grids written at start-up and with every snapshot."""

    def __init__(self, c: TrainingConfig, dataset: ImageFolderDataset, device: torch.device):
        self.c = c
        self.device = device
        self.grid = grid_shape(dataset.resolution)
        rng = np.random.default_rng(c.seed)
        count = self.grid[0] * self.grid[1]
        if len(dataset) >= count:
            indices = rng.permutation(len(dataset))[:count]
        else:  # A dataset smaller than the grid repeats images.
            indices = rng.integers(len(dataset), size=count)
        if dataset.has_labels:  # Group the grid by label so conditional runs show one class per run of images.
            indices = sorted(indices, key=lambda i: int(np.argmax(dataset.get_label(i))))
        self.dataset = dataset
        self.indices = list(indices)
        generator = torch.Generator().manual_seed(c.seed)
        self.z = torch.randn([count, c.z_dim], generator=generator)
        self.labels = torch.from_numpy(np.stack([dataset.get_label(i) for i in self.indices]))

    def save_reals(self) -> None:
        """Write reals.png (rank 0)."""
        if distributed.is_main():
            readable = SkipDamaged(self.dataset)  # A damaged image gives its place to the next readable one.
            images = np.stack([readable[i][0] for i in self.indices])
            save_image_grid(images, os.path.join(self.c.run_dir, "reals.png"), (0, 255), self.grid)

    @torch.no_grad()
    def save_fakes(self, G_ema: torch.nn.Module, file_name: str) -> None:
        """Render the fixed latents with G_ema (constant noise) into `file_name` (rank 0)."""
        if not distributed.is_main():
            return
        images = [
            G_ema(z.to(self.device), c.to(self.device), noise_mode="const").cpu()
            for z, c in zip(self.z.split(self.c.batch_gpu), self.labels.split(self.c.batch_gpu), strict=True)
        ]
        save_image_grid(torch.cat(images).numpy(), os.path.join(self.c.run_dir, file_name), (-1, 1), self.grid)


def save_snapshot(c: TrainingConfig, t: Trainer, grid: SnapshotGrid, elapsed_sec: float) -> str:
    """Write fakesKKKKKK.png, network-snapshot-KKKKKK.pkl and training-state-KKKKKK.pt (rank 0); a collective.

    A snapshot never replaces another: a second one within the same kimg is named KKKKKK_NNN
    (checkpoint.new_snapshot_path), and its image grid likewise.

    Args:
        elapsed_sec: Training time of this session so far, added to the saved elapsed time.

    Returns:
        The snapshot's path (on every rank).
    """
    path = checkpoint.new_snapshot_path(c.run_dir, t.progress.cur_nimg) if distributed.is_main() else None
    path = distributed.broadcast_object(path)  # Rank 0 alone looks, before it writes the file.
    if not distributed.is_main():
        return path
    name = os.path.basename(path)
    if os.path.exists(path):
        save_training_state(c, t, elapsed_sec, quiet=True)
        print(f"Kept {name}, a snapshot of the same image count from an earlier session; saved the training state.")
        return path
    label = name.removeprefix("network-snapshot-").removesuffix(".pkl")
    grid.save_fakes(t.ema.module, f"fakes{label}.png")
    checkpoint.save_snapshot(path, t.G, t.D, t.ema.module, t.augment_pipe, training_set_kwargs(c))
    save_training_state(c, t, elapsed_sec, quiet=True)
    print(f"Saved {name} and its training state.")
    return path


def draw_progress(run_dir: str) -> None:
    """Redraw progress.png (rank 0); a plot that cannot be drawn is a warning, never the end of the run."""
    if not distributed.is_main():
        return
    try:
        plots.write_progress(run_dir)
    except Exception as error:  # noqa: BLE001 - matplotlib's or the disk's; training matters more than the picture.
        print(f"Warning: progress.png not drawn: {type(error).__name__}: {error}")


def save_training_state(c: TrainingConfig, t: Trainer, elapsed_sec: float, quiet: bool = False) -> None:
    """Write training-state-KKKKKK.pt (rank 0), named by whole kimg: a later state in the same kimg replaces it,
    and each holds its exact image count.

    Args:
        elapsed_sec: Training time of this session so far, added to the saved elapsed time.
    """
    if not distributed.is_main():
        return
    state = t.state_dict()
    state["progress"]["elapsed_sec"] += elapsed_sec
    path = checkpoint.state_path(c.run_dir, t.progress.cur_nimg // 1000)
    checkpoint.save_state(path, state)
    if not quiet:
        print(f"Saved {os.path.basename(path)} at kimg {t.progress.cur_nimg / 1000:g}.")


def broadcast_module(module: torch.nn.Module) -> None:
    """Make every rank's parameters and buffers equal to rank 0's."""
    if distributed.is_distributed():
        for tensor in list(module.parameters()) + list(module.buffers()):
            distributed.broadcast(tensor.data)


def print_summaries(
    G: torch.nn.Module, D: torch.nn.Module, c: TrainingConfig, dataset: ImageFolderDataset, device: torch.device
) -> None:
    """Print the layer tables of G and D once, at the start of a new run (rank 0)."""
    if not distributed.is_main():
        return
    z = torch.zeros([c.batch_gpu, G.z_dim], device=device)
    labels = torch.zeros([c.batch_gpu, dataset.label_dim], device=device)
    with torch.no_grad():
        img = misc.print_module_summary(G, [z, labels])
        misc.print_module_summary(D, [img, labels])


def settle_batch_gpu(
    c: TrainingConfig,
    t: Trainer,
    continuing: bool,
    labels: torch.Tensor,
    image_shape: tuple[int, int, int],
    gauge: batch_memory.MemoryGauge | None = None,
) -> TrainingConfig:
    """--batch-gpu=auto: set `t.batch_gpu` and return the config with it, printed and written to training_options.json.

    Continuing a run, the training state's value stays (chosen, and perhaps lowered, earlier in the run), so the run
    goes on as it would have. On the CPU, which gives no out-of-memory signal to probe with: batch/gpus. On a GPU: the
    largest candidate that the memory probe finds fitting (batch_memory.probe_batch_gpu).

    Args:
        labels:      Every label of the dataset [num_images, c_dim].
        image_shape: [C, H, W] of the training images.
        gauge:       What the probe measures memory with; None: CudaMemory on a GPU, no probe on the CPU. (Tests
                     give a stand-in, to run the GPU's branch on the CPU.)

    Raises:
        TrainingStopped: Not even the smallest candidate fits.
    """
    if gauge is None and labels.device.type == "cuda":
        gauge = batch_memory.CudaMemory(labels.device)
    if continuing:
        how = "kept from the training state"
    elif gauge is None:
        t.batch_gpu = c.batch_size // c.gpus
        how = "batch/gpus: on the CPU there is no out-of-memory signal to probe with"
    else:
        probe = batch_memory.probe_batch_gpu(t, c, labels, image_shape, gauge)
        memory = (
            f"{', '.join(probe.tried)} of {probe.available_bytes / 2**30:.1f} GiB available with Adam's state; at most "
            f"{batch_memory.PROBE_MEMORY_FRACTION:.0%}"
        )
        if probe.batch_gpu is None:
            raise TrainingStopped(
                f"--batch-gpu=auto: no per-GPU batch fits ({memory}). Lower --mbstd-group, make the networks smaller "
                f"(--cbase, --cmax) or use GPUs with more memory"
            )
        t.batch_gpu = probe.batch_gpu
        how = f"probe: {memory}"
    c = adopt_batch_gpu(c, t.batch_gpu)
    distributed.print0(f"--batch-gpu=auto: {c.batch_gpu} per GPU x {c.rounds} rounds ({how}).")
    return c


def adopt_batch_gpu(c: TrainingConfig, batch_gpu: int) -> TrainingConfig:
    """The config with `batch_gpu` in effect, also written to training_options.json (rank 0)."""
    c = dataclasses.replace(c, batch_gpu=batch_gpu)
    if distributed.is_main():
        write_training_options(c)
    return c


def run(c: TrainingConfig) -> None:
    """Entry point of every process: set up the run directory, then train."""
    c = prepare_run_dir(c)
    training_loop(c)
