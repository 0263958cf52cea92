"""Miscellaneous helpers: the data sampler, shape assertions, module summaries and tensor copying."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

# ----------------------------------------------------------------------------


class InfiniteSampler(torch.utils.data.Sampler):
    """An endless stream of dataset indices, reshuffled every epoch, split between ranks, resumable.

    The stream is the concatenation of one permutation of the dataset per epoch, each drawn from
    (seed, epoch). The stream is dealt to the ranks in blocks of `block_size` consecutive positions, block b
    going to rank b % num_replicas, so the ranks see disjoint items and together cover every epoch exactly
    once. With `block_size` equal to the per-rank batch, round k of rank r in an N-rank run receives exactly
    the items of round k*N + r of a one-rank run, which makes runs with different rank counts comparable.
    `start_pos` resumes the stream where a run stopped: pass the number of images all ranks have consumed
    (the training loop's `cur_nimg`).
    """

    def __init__(
        self,
        dataset: Sequence | int,
        rank: int = 0,
        num_replicas: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        start_pos: int = 0,
        block_size: int = 1,
    ):
        """
        Args:
            dataset:      The dataset (or just its length).
            rank:         This process's rank, in [0, num_replicas).
            num_replicas: How many ranks share the stream.
            shuffle:      Draw a new permutation per epoch; False yields 0, 1, 2, ... in order.
            seed:         Seed of the permutations; every rank must use the same one.
            start_pos:    Global stream position to start from, in items consumed by all ranks together; a
                          multiple of block_size * num_replicas.
            block_size:   How many consecutive stream positions each rank takes in turn.
        """
        size = dataset if isinstance(dataset, int) else len(dataset)
        assert size > 0, "InfiniteSampler needs a non-empty dataset"
        assert 0 <= rank < num_replicas, f"rank {rank} is outside [0, {num_replicas})"
        assert block_size >= 1, "block_size must be at least 1"
        assert start_pos >= 0 and start_pos % (block_size * num_replicas) == 0, (
            f"start_pos {start_pos} must be a non-negative multiple of block_size * num_replicas"
        )
        self.size = size
        self.rank = rank
        self.num_replicas = num_replicas
        self.shuffle = shuffle
        self.seed = seed
        self.start_pos = start_pos
        self.block_size = block_size

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The order in which epoch `epoch` visits the dataset."""
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def __iter__(self) -> Iterator[int]:
        block = self.start_pos // self.block_size + self.rank
        epoch, order = -1, None
        while True:
            for pos in range(block * self.block_size, (block + 1) * self.block_size):
                pos_epoch, offset = divmod(pos, self.size)
                if pos_epoch != epoch:
                    epoch, order = pos_epoch, self.epoch_order(pos_epoch)
                yield int(order[offset])
            block += self.num_replicas


# ----------------------------------------------------------------------------


def assert_shape(tensor: torch.Tensor, ref_shape: Sequence[int | None]) -> None:
    """Raise AssertionError unless `tensor` has shape `ref_shape`, where None matches any size."""
    if tensor.ndim != len(ref_shape):
        raise AssertionError(
            f"Wrong number of dimensions: got shape {list(tensor.shape)}, expected {len(ref_shape)} dimensions "
            f"{list(ref_shape)}"
        )
    for dim, (size, ref_size) in enumerate(zip(tensor.shape, ref_shape, strict=True)):
        if ref_size is not None and size != ref_size:
            raise AssertionError(
                f"Wrong size for dimension {dim}: got shape {list(tensor.shape)}, expected {list(ref_shape)}"
            )


def named_params_and_buffers(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter and buffer of `module` with its qualified name."""
    return list(module.named_parameters()) + list(module.named_buffers())


def copy_params_and_buffers(
    src_module: torch.nn.Module, dst_module: torch.nn.Module, require_all: bool = False, skip_mismatched: bool = False
) -> list[str]:
    """Copy every parameter and buffer of `dst_module` whose name also exists in `src_module`.

    Args:
        src_module:      Where the values come from.
        dst_module:      Where they go; its tensors keep their device, dtype and requires_grad.
        require_all:     Raise if some tensor of `dst_module` has no counterpart in `src_module`.
        skip_mismatched: Leave tensors whose shapes differ between the two alone instead of raising (transfer
                         learning across resolutions or channel counts).

    Returns:
        The names that were copied.

    Raises:
        ValueError: a name exists in both with different shapes (unless `skip_mismatched`), or `require_all` and
                    names are missing.
    """
    src_tensors = dict(named_params_and_buffers(src_module))
    dst_tensors = named_params_and_buffers(dst_module)
    missing = [name for name, _ in dst_tensors if name not in src_tensors]
    if require_all and missing:
        raise ValueError(f"The source module lacks {len(missing)} tensors, for example: {', '.join(missing[:5])}")
    copied = []
    with torch.no_grad():
        for name, dst in dst_tensors:
            src = src_tensors.get(name)
            if src is None:
                continue
            if src.shape != dst.shape and skip_mismatched:
                continue
            if src.shape != dst.shape:
                raise ValueError(
                    f"Shape mismatch for '{name}': source {list(src.shape)}, destination {list(dst.shape)}"
                )
            dst.copy_(src.detach())
            copied.append(name)
    return copied


# ----------------------------------------------------------------------------


def print_module_summary(
    module: torch.nn.Module, inputs: Sequence[Any], max_nesting: int = 3, skip_redundant: bool = True
) -> Any:
    """Run `module(*inputs)` and print a table of its submodules: parameters, buffers, output shape, dtype.

    Each parameter and buffer is counted once, in the deepest listed submodule that owns it, so the rows add
    up to the total.

    Args:
        module:         The module to run.
        inputs:         Positional arguments for one forward call.
        max_nesting:    List submodules up to this depth (the module itself is depth 0).
        skip_redundant: Leave out rows that own no tensors and only pass on outputs already listed.

    Returns:
        What the forward call returned.
    """
    assert isinstance(module, torch.nn.Module), "print_module_summary needs an nn.Module"
    names = {submodule: name for name, submodule in module.named_modules()}
    depth_of = {submodule: (name.count(".") + 1 if name else 0) for submodule, name in names.items()}
    rows: list[tuple[torch.nn.Module, list[torch.Tensor]]] = []

    def record(submodule: torch.nn.Module, _inputs: Any, outputs: Any) -> None:
        if depth_of.get(submodule, max_nesting + 1) <= max_nesting:
            tensors = outputs if isinstance(outputs, (tuple, list)) else [outputs]
            rows.append((submodule, [t for t in tensors if isinstance(t, torch.Tensor)]))

    hooks = [submodule.register_forward_hook(record) for submodule in names]
    try:
        outputs = module(*inputs)
    finally:
        for hook in hooks:
            hook.remove()

    # Rows arrive in completion order (children before parents), so children claim their tensors first.
    claimed: set[int] = set()
    shown_outputs: set[int] = set()
    table = [["Module", "Parameters", "Buffers", "Output shape", "Datatype"]]
    for submodule, row_outputs in rows:
        params = [p for p in submodule.parameters() if id(p) not in claimed]
        buffers = [b for b in submodule.buffers() if id(b) not in claimed]
        claimed.update(id(t) for t in params + buffers)
        new_outputs = [t for t in row_outputs if id(t) not in shown_outputs]
        shown_outputs.update(id(t) for t in row_outputs)
        if skip_redundant and not params and not buffers and not new_outputs:
            continue
        shapes = [str(list(t.shape)) for t in row_outputs] or ["-"]
        dtypes = [str(t.dtype).split(".")[-1] for t in row_outputs] or ["-"]
        name = names[submodule] or "<top-level>"
        for i, (shape, dtype) in enumerate(zip(shapes, dtypes, strict=True)):
            table.append(
                [
                    name + (f":{i}" if len(shapes) > 1 else ""),
                    str(sum(p.numel() for p in params)) if i == 0 else "-",
                    str(sum(b.numel() for b in buffers)) if i == 0 else "-",
                    shape,
                    dtype,
                ]
            )
    total_params = sum(p.numel() for p in module.parameters())
    total_buffers = sum(b.numel() for b in module.buffers())
    table.append(["Total", str(total_params), str(total_buffers), "-", "-"])

    widths = [max(len(row[col]) for row in table) for col in range(len(table[0]))]
    separator = ["-" * width for width in widths]
    for row in [table[0], separator, *table[1:-1], separator, table[-1]]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print()
    return outputs
