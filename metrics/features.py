"""What the metrics share: the context they run in, real and generated image streams split over ranks, feature
extraction, cross-rank gathering, and the on-disk cache of dataset statistics.

Work split: with W processes, rank r handles items r, r + W, r + 2W, ... of every stream, in batches. Results
are gathered (or summed) across ranks, so every rank returns the same value. Generated item i always gets the
same latent (and label) whatever the number of processes and the batch size: its random numbers come from
`np.random.default_rng([seed, i])`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import torch
import tqdm

import dnnlib
from metrics import detectors
from metrics.detectors import DetectorSpec
from metrics.registry import MetricError
from torch_utils import distributed, stop_signals
from torch_utils.images import to_uint8

CACHE_VERSION = 1  # Bump when the layout or meaning of cached statistics changes.
# Images a generator renders at once. Metrics stream batches of 64, but a 1024x1024 generator's activations for
# 64 images need tens of GB; rendering in small chunks keeps metrics within the memory training already uses.
GENERATOR_CHUNK = 4


class RealDataset(Protocol):
    """What the metrics read of the real data (training.dataset.ImageFolderDataset is one)."""

    path: str  # The dataset's file or folder, for messages.
    label_dim: int  # Label width; 0 without labels.

    def __len__(self) -> int: ...
    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]: ...  # (uint8 [C, H, W], label)
    def get_label(self, idx: int) -> np.ndarray: ...  # float32 [label_dim]
    def __enter__(self) -> RealDataset: ...
    def __exit__(self, *exc_info: object) -> None: ...


@dataclasses.dataclass
class MetricContext:
    """Everything a metric function needs: the generator, the data, the device and the protocol's sizes."""

    G: torch.nn.Module  # The generator, a private copy in eval mode on `device` (metrics may change buffers).
    # The real data's arguments (path, xflip, max_size, random_seed, use_labels), which also key the statistics
    # cache; None when no dataset is needed.
    dataset_kwargs: dict[str, Any] | None
    device: torch.device  # Where this rank computes.
    num_gen: int  # Generated images (or latent samples) to use.
    max_real: int | None  # Real images to use; None: the whole dataset.
    detector_paths: dict[DetectorSpec, str] = dataclasses.field(default_factory=dict)  # Local detector files.
    # Opens the real data: called with dataset_kwargs, use_labels overridden. None when dataset_kwargs is None.
    dataset_factory: Callable[..., RealDataset] | None = None
    batch_size: int = 64  # Images per batch on each rank.
    num_workers: int = 3  # DataLoader worker processes reading real images; 0 reads in this process.
    cache: bool = True  # Read and write dataset statistics under $DNNLIB_CACHE_DIR/gan-metrics.
    progress: bool = False  # Show progress bars (rank 0).
    seed: int = 0  # Seed of every latent, label, patch position and transform the metrics draw.
    # What was actually measured, for the record: fewer than asked when the dataset is smaller.
    num_gen_used: int | None = None  # Set by metrics that generate fewer than num_gen; None: num_gen.
    num_real_used: int | None = None  # Real images measured (set by select_real_items); None: no reals.

    def detector(self, spec: DetectorSpec) -> torch.nn.Module:
        """The loaded detector network `spec` on this rank's device."""
        assert spec in self.detector_paths, f"{spec.description} was not located before the metric ran"
        return detectors.load_detector(self.detector_paths[spec], self.device)

    def open_dataset(self, use_labels: bool = False) -> RealDataset:
        """Open the dataset the metric compares against."""
        if self.dataset_kwargs is None:
            raise MetricError("This metric needs a dataset (dataset_kwargs / --data), but none was given")
        assert self.dataset_factory is not None, "dataset_kwargs need a dataset_factory to open them"
        return self.dataset_factory(**{**self.dataset_kwargs, "use_labels": use_labels})


# ----------------------------------------------------------------------------
# Ranks and collectives. Tensors passed to collectives live on the context's device, which matches the backend
# (gloo on the CPU, NCCL on CUDA).


def rank_items(num_items: int) -> np.ndarray:
    """The items of `num_items` that this rank handles: rank, rank + world, ..."""
    return np.arange(distributed.get_rank(), num_items, distributed.get_world_size())


def split_batches(items: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive chunks of at most `batch_size` items."""
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


def all_ranks(flag: bool, device: torch.device) -> bool:
    """Whether `flag` is true on every rank."""
    if not distributed.is_distributed():
        return flag
    return bool(distributed.all_reduce_min(torch.tensor([int(flag)], device=device)).item())


def gather_rows(local: torch.Tensor, positions: np.ndarray, total: int) -> torch.Tensor:
    """Assemble every rank's rows into one [total, ...] tensor, on every rank.

    Args:
        local:     This rank's rows [n, ...].
        positions: Where each row goes in the result [n], e.g. the indices from `rank_items`.
        total:     Rows of the result; every position in [0, total) must come from exactly one rank.

    Returns:
        [total, ...] on `local`'s device.
    """
    assert len(local) == len(positions), "every row needs a position"
    result = local.new_empty([total, *local.shape[1:]])
    if not distributed.is_distributed():
        result[torch.as_tensor(positions, device=local.device, dtype=torch.int64)] = local
        return result
    world = distributed.get_world_size()
    max_rows = -(-total // world)  # A rank holds at most ceil(total / world) rows.
    padded = local.new_zeros([max_rows, *local.shape[1:]])
    padded[: len(local)] = local
    padded_pos = torch.full([max_rows], -1, dtype=torch.int64, device=local.device)
    padded_pos[: len(positions)] = torch.as_tensor(positions, dtype=torch.int64)
    rows = distributed.all_gather(padded)
    pos = distributed.all_gather(padded_pos)
    for r, p in zip(rows, pos, strict=True):
        keep = p >= 0
        result[p[keep]] = r[keep]
    return result


def progress_bar(ctx: MetricContext, total: int, desc: str) -> tqdm.tqdm:
    """A tqdm bar counting images over all ranks, shown on rank 0 when `ctx.progress`."""
    return tqdm.tqdm(total=total, desc=desc, unit="img", disable=not (ctx.progress and distributed.is_main()))


def advance(bar: tqdm.tqdm, batch_items: int) -> None:
    """Count a batch of this rank as processed by all ranks (they run in lockstep), without passing the total."""
    bar.update(min(batch_items * distributed.get_world_size(), bar.total - bar.n))


# ----------------------------------------------------------------------------
# Image streams. Both yield (positions, images) with images uint8 [n, 3, H, W] on the context's device, the form
# the detectors take: generated images through x * 127.5 + 128 clamped and truncated (i.e. rounded x * 127.5 +
# 127.5), grayscale repeated to three channels.


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """Generator output [N, C, H, W] in about [-1, 1] -> uint8 [N, 3, H, W]."""
    images = to_uint8(images)
    return images.repeat(1, 3, 1, 1) if images.shape[1] == 1 else images


def select_real_items(ctx: MetricContext, num_available: int, max_items: int | None) -> np.ndarray:
    """Dataset indices to measure: all, or a seeded random subset of `max_items` (sorted, for sequential reads).
    Records their number in `ctx.num_real_used`."""
    if max_items is None or max_items >= num_available:
        indices = np.arange(num_available)
    else:
        rng = np.random.default_rng([ctx.seed, num_available])
        indices = np.sort(rng.choice(num_available, max_items, replace=False))
    ctx.num_real_used = len(indices)
    return indices


def real_batches(ctx: MetricContext, dataset: RealDataset, indices: np.ndarray) -> Iterator[tuple]:
    """Stream this rank's share of dataset items `indices` as (positions in `indices`, uint8 [n, 3, H, W])."""
    positions = rank_items(len(indices))
    subset = torch.utils.data.Subset(dataset, indices[positions].tolist())
    # No more workers than cores this process may use: more only compete (and make the DataLoader warn).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(ctx.num_workers, cores)
    loader = torch.utils.data.DataLoader(
        subset,
        batch_size=ctx.batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=ctx.device.type == "cuda",
        persistent_workers=False,
        worker_init_fn=stop_signals.worker_init_fn(),  # A stop signal to the whole group is the trainer's to handle.
    )
    batches = stop_signals.loader_batches(loader)
    for chunk, (images, _labels) in zip(split_batches(positions, ctx.batch_size), batches, strict=True):
        images = images.to(ctx.device)
        yield chunk, images.repeat(1, 3, 1, 1) if images.shape[1] == 1 else images


class LatentSampler:
    """Latents and labels of generated items, identical for item i whatever the rank count and batch size."""

    def __init__(self, ctx: MetricContext):
        self.ctx = ctx
        self.labels = None  # float32 [num_dataset_items, c_dim] for conditional generators.
        if ctx.G.c_dim > 0:
            with ctx.open_dataset(use_labels=True) as dataset:
                if dataset.label_dim != ctx.G.c_dim:
                    raise MetricError(
                        f"The generator is conditional with c_dim={ctx.G.c_dim}, but the dataset "
                        f"{dataset.path} has label_dim={dataset.label_dim}; metrics draw labels from the dataset"
                    )
                self.labels = np.stack([dataset.get_label(i) for i in range(len(dataset))])

    def __call__(self, items: np.ndarray, num_z: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents z [n, num_z, z_dim] and labels c [n, c_dim] of generated items `items`, on the device."""
        G, device = self.ctx.G, self.ctx.device
        z = np.zeros([len(items), num_z, G.z_dim], dtype=np.float32)
        c = np.zeros([len(items), G.c_dim], dtype=np.float32)
        for row, item in enumerate(items):
            rng = np.random.default_rng([self.ctx.seed, int(item)])
            z[row] = rng.standard_normal([num_z, G.z_dim])
            if self.labels is not None:
                c[row] = self.labels[rng.integers(len(self.labels))]
        return torch.from_numpy(z).to(device), torch.from_numpy(c).to(device)


@contextlib.contextmanager
def seeded_torch_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG (for the generators' noise inputs) inside the block, and restore the caller's state."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def in_chunks(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor, chunk: int = GENERATOR_CHUNK) -> torch.Tensor:
    """fn applied to consecutive chunks of `chunk` rows of the tensors (all with the same length), concatenated."""
    return torch.cat([fn(*(t[i : i + chunk] for t in tensors)) for i in range(0, len(tensors[0]), chunk)])


def generated_batches(ctx: MetricContext, num_items: int, noise_mode: str = "random") -> Iterator[tuple]:
    """Stream this rank's share of `num_items` generated images as (positions, uint8 [n, 3, H, W]).

    Noise inputs (StyleGAN2) are drawn per batch from a seed derived from the batch's first item, so a run is
    reproducible, and the caller's RNG state is left untouched.
    """
    sample = LatentSampler(ctx)
    for chunk in split_batches(rank_items(num_items), ctx.batch_size):
        z, c = sample(chunk)
        with torch.no_grad(), seeded_torch_rng(ctx.seed * 1_000_003 + int(chunk[0]), ctx.device):
            images = in_chunks(lambda z_part, c_part: ctx.G(z_part, c_part, noise_mode=noise_mode), z[:, 0], c)
        yield chunk, to_uint8_rgb(images)


# ----------------------------------------------------------------------------
# Features.


class Moments:
    """Running float64 sum and sum of outer products of feature vectors, for a mean and covariance."""

    def __init__(self, dim: int, device: torch.device):
        self.count = torch.zeros([], dtype=torch.float64, device=device)
        self.sum = torch.zeros([dim], dtype=torch.float64, device=device)
        self.sum_outer = torch.zeros([dim, dim], dtype=torch.float64, device=device)

    def add(self, features: torch.Tensor) -> None:
        """Accumulate features [n, dim]."""
        x = features.to(torch.float64)
        self.count += x.shape[0]
        self.sum += x.sum(dim=0)
        self.sum_outer += x.T @ x

    def finish(self) -> dict[str, np.ndarray]:
        """Sum over ranks and return {'mean': [dim], 'cov': [dim, dim]} (covariance normalized by n - 1)."""
        for tensor in (self.count, self.sum, self.sum_outer):
            distributed.all_reduce_sum(tensor)
        n = self.count.item()
        assert n >= 2, "a covariance needs at least two feature vectors"
        mean = self.sum / n
        cov = (self.sum_outer - n * torch.outer(mean, mean)) / (n - 1)
        return {"mean": mean.cpu().numpy(), "cov": cov.cpu().numpy()}


def extract_features(
    ctx: MetricContext,
    batches: Iterator[tuple],
    total: int,
    fn: Callable[[torch.Tensor], torch.Tensor],
    keep: str,
    desc: str,
) -> dict[str, np.ndarray]:
    """Run `fn` (a detector call) over an image stream and keep the features or their moments.

    Args:
        batches: (positions, uint8 images) from `real_batches` or `generated_batches`.
        total:   Items of the stream over all ranks.
        fn:      uint8 images [n, 3, H, W] -> features [n, dim].
        keep:    'features' gathers every vector ({'features': [total, dim]}); 'moments' keeps only
                 {'mean', 'cov'}.
        desc:    Progress bar label.
    """
    assert keep in ("features", "moments"), f"keep must be 'features' or 'moments', not {keep!r}"
    rows, positions, moments = [], [], None
    with progress_bar(ctx, total, desc) as bar:
        for chunk, images in batches:
            with torch.no_grad():
                features = fn(images).to(torch.float32)
            if keep == "moments":
                moments = moments or Moments(features.shape[1], ctx.device)
                moments.add(features)
            else:
                rows.append(features)
                positions.append(chunk)
            advance(bar, len(chunk))
    # A rank without items (fewer items than ranks) still takes part in the collectives below.
    width = features_width(rows[0].shape[1] if rows else (moments.sum.shape[0] if moments else 0), ctx.device)
    if keep == "moments":
        return (moments or Moments(width, ctx.device)).finish()
    local = torch.cat(rows) if rows else torch.zeros([0, width], device=ctx.device)
    positions = np.concatenate(positions).astype(np.int64) if positions else np.zeros([0], dtype=np.int64)
    return {"features": gather_rows(local, positions, total).cpu().numpy()}


def features_width(width: int, device: torch.device) -> int:
    """The largest `width` over ranks (the feature width, where some ranks saw no items)."""
    if not distributed.is_distributed():
        return width
    return int(distributed.all_reduce_max(torch.tensor([width], device=device)).item())


def real_features(
    ctx: MetricContext, spec: DetectorSpec, keep: str, max_items: int | None, **detector_kwargs: Any
) -> dict[str, np.ndarray]:
    """Detector features (or their moments) of the dataset, through the statistics cache."""
    detector = ctx.detector(spec)

    def compute() -> dict[str, np.ndarray]:
        with ctx.open_dataset() as dataset:
            indices = select_real_items(ctx, len(dataset), max_items)
            return extract_features(
                ctx,
                real_batches(ctx, dataset, indices),
                len(indices),
                lambda images: detector(images, **detector_kwargs),
                keep,
                desc="real images",
            )

    params = dict(detector=detector_identity(ctx, spec), detector_kwargs=detector_kwargs, keep=keep)
    stats = cached_dataset_stats(
        ctx, kind=f"{spec.filenames[0].split('.')[0]}-{keep}", max_items=max_items, params=params, compute=compute
    )
    if ctx.num_real_used is None:  # Read from the cache: count the items as `compute` would have chosen them.
        with ctx.open_dataset() as dataset:
            select_real_items(ctx, len(dataset), max_items)
    return stats


def generated_features(
    ctx: MetricContext, spec: DetectorSpec, keep: str, num_items: int, **detector_kwargs: Any
) -> dict[str, np.ndarray]:
    """Detector features (or their moments) of `num_items` generated images."""
    detector = ctx.detector(spec)
    return extract_features(
        ctx,
        generated_batches(ctx, num_items),
        num_items,
        lambda images: detector(images, **detector_kwargs),
        keep,
        desc="generated images",
    )


# ----------------------------------------------------------------------------
# Cache of dataset statistics: $DNNLIB_CACHE_DIR/gan-metrics/<dataset>-<kind>-<hash>.npz.


def dataset_identity(path: str) -> dict[str, Any]:
    """What makes a dataset on disk the same dataset: its absolute path, size and modification time."""
    path = os.path.abspath(path)
    if os.path.isfile(path):
        stat = os.stat(path)
        return dict(path=path, size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    num_files, size, mtime_ns = 0, 0, 0
    for root, _dirs, files in os.walk(path):
        for fname in files:
            stat = os.stat(os.path.join(root, fname))
            num_files, size, mtime_ns = num_files + 1, size + stat.st_size, max(mtime_ns, stat.st_mtime_ns)
    return dict(path=path, num_files=num_files, size=size, mtime_ns=mtime_ns)


def detector_identity(ctx: MetricContext, spec: DetectorSpec) -> dict[str, Any]:
    """What makes detector features comparable: the published URL and the local file's size."""
    return dict(url=spec.urls[0], size=os.path.getsize(ctx.detector_paths[spec]))


def stats_cache_path(ctx: MetricContext, kind: str, max_items: int | None, params: dict[str, Any]) -> str:
    """The cache file of dataset statistics `kind` for the context's dataset and options."""
    # Only the options that change which images are read; labels, the name and the resolution check do not.
    options = dict(xflip=bool(ctx.dataset_kwargs.get("xflip", False)), max_size=ctx.dataset_kwargs.get("max_size"))
    if options["max_size"] is not None:
        options["random_seed"] = ctx.dataset_kwargs.get("random_seed", 0)
    key = dict(
        version=CACHE_VERSION,
        dataset=dataset_identity(ctx.dataset_kwargs["path"]),
        options=options,
        kind=kind,
        max_items=max_items,
        seed=ctx.seed,
        params=params,
    )
    digest = hashlib.md5(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    name = os.path.splitext(os.path.basename(os.path.abspath(ctx.dataset_kwargs["path"])))[0]
    name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return os.path.join(dnnlib.util.get_cache_dir(), "gan-metrics", f"{name}-{kind}-{digest}.npz")


def cached_dataset_stats(
    ctx: MetricContext,
    kind: str,
    max_items: int | None,
    params: dict[str, Any],
    compute: Callable[[], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Load statistics of the dataset from the cache, or compute them on all ranks and cache them (rank 0).

    Args:
        kind:      Short name of the statistics, part of the file name (e.g. 'inception-moments').
        max_items: Real items measured (None: all); part of the key.
        params:    Everything else the statistics depend on (detector, its options, patch sizes); part of the key.
        compute:   Collective function that computes {name: array} on every rank.
    """
    path = stats_cache_path(ctx, kind, max_items, params) if ctx.cache else None
    # Every rank must see the file (machines of a multi-node run may have separate caches), else all compute.
    if path is not None and all_ranks(os.path.isfile(path), ctx.device):
        with np.load(path) as data:
            return {name: data[name] for name in data.files}
    stats = compute()
    if path is not None and distributed.get_local_rank() == 0:  # One writer per machine; the rename is atomic.
        try:
            write_npz_atomically(path, stats)
        except dnnlib.util.WriteError as error:  # The statistics are computed; only the next run loses the cache.
            warnings.warn(f"{error}; the statistics were not cached and will be computed again", stacklevel=2)
    return stats


def write_npz_atomically(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays to an .npz through a temporary file and a rename, so readers never see half a file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    dnnlib.util.atomic_write(path, lambda f: np.savez(f, **arrays))
