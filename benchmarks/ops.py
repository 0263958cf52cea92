"""Time and peak memory of bias_act, upfirdn2d and filtered_lrelu: CUDA kernels against the reference path.

The shapes are those of a 256x256 StyleGAN3-T generator and the StyleGAN2 discriminator it trains against: one
forward pass of each records every op call, and each distinct call is then timed forward + backward with both
implementations. Needs a CUDA GPU.

Example:

    python -m benchmarks.ops --batch=16
"""

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import torch

from torch_utils import custom_ops
from torch_utils.ops import bias_act, filtered_lrelu, upfirdn2d
from training.networks_stylegan2 import Discriminator
from training.networks_stylegan3 import Generator

# (module, function name) of every op benchmarked.
OPS = [(bias_act, "bias_act"), (upfirdn2d, "upfirdn2d"), (filtered_lrelu, "filtered_lrelu")]


@contextlib.contextmanager
def recording(calls: dict) -> Iterator[None]:
    """Record each distinct call of the ops (tensor arguments by shape and dtype) into `calls`."""
    originals = {(m, n): getattr(m, n) for m, n in OPS}

    def wrap(name: str, fn: Callable) -> Callable:
        def recorder(*args, **kwargs):
            key = (name, repr([_spec(a) for a in args]), repr({k: _spec(v) for k, v in sorted(kwargs.items())}))
            entry = calls.setdefault(key, dict(name=name, fn=fn, args=args, kwargs=kwargs, count=0))
            entry["count"] += 1
            return fn(*args, **kwargs)

        return recorder

    for (module, name), fn in originals.items():
        setattr(module, name, wrap(name, fn))
    try:
        yield
    finally:
        for (module, name), fn in originals.items():
            setattr(module, name, fn)


def _spec(v):
    """A hashable description of an argument: shape and dtype for tensors."""
    return (tuple(v.shape), str(v.dtype)) if isinstance(v, torch.Tensor) else v


def measure(call: dict, impl: str, repeats: int) -> tuple[float, float]:
    """Milliseconds per forward + backward and peak extra memory (MB) of one recorded call with `impl`."""
    args = [
        a.detach().requires_grad_(a.is_floating_point() and a.ndim > 2 or a is call["args"][0])
        if isinstance(a, torch.Tensor)
        else a
        for a in call["args"]
    ]
    kwargs = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in call["kwargs"].items()}
    kwargs["impl"] = impl

    def step():
        y = call["fn"](*args, **kwargs)
        y.backward(torch.ones_like(y))

    step()  # warm-up (and the kernel build, the first time)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats, (torch.cuda.max_memory_allocated() - base) / 2**20


@click.command()
@click.option(
    "--batch",
    metavar="INT",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Batch size of the recorded passes.",
)
@click.option(
    "--repeats",
    metavar="INT",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Timed repetitions per call.",
)
@click.option("--json", "json_path", metavar="FILE", type=click.Path(dir_okay=False), help="Also write the rows here.")
def main(batch: int, repeats: int, json_path: str | None) -> None:
    """Print a table: each distinct op call of a 256x256 StyleGAN3-T G and its D, cuda against ref."""
    if not torch.cuda.is_available():
        sys.exit("benchmarks.ops needs a CUDA GPU (the kernels only run there); none is visible.")
    os.environ[custom_ops.ENV_ENABLE] = "1"
    for name in custom_ops.KERNELS:
        if custom_ops.get_kernel(name) is None:
            sys.exit(f"the {name} kernel did not build; see the warning above")
    device = torch.device("cuda")
    torch.manual_seed(0)
    G = Generator(
        z_dim=512,
        c_dim=0,
        w_dim=512,
        img_resolution=256,
        img_channels=3,
        num_fp16_res=4,
        conv_clamp=256,
        mapping_kwargs=dict(num_layers=2),
    ).to(device)
    D = Discriminator(c_dim=0, img_resolution=256, img_channels=3, num_fp16_res=4, conv_clamp=256).to(device)
    calls: dict = {}
    with torch.no_grad(), recording(calls):
        img = G(torch.randn([batch, 512], device=device), None)
        D(img, None)

    print(
        f"{'op':<15} {'x shape':<22} {'dtype':<8} {'calls':>5} {'ref ms':>8} {'cuda ms':>8} {'speed-up':>8} "
        f"{'ref MB':>8} {'cuda MB':>8}"
    )
    totals = [0.0, 0.0]
    rows = []
    for call in calls.values():
        x = call["args"][0]
        (ref_ms, ref_mb), (cuda_ms, cuda_mb) = (measure(call, impl, repeats) for impl in ("ref", "cuda"))
        totals[0] += ref_ms * call["count"]
        totals[1] += cuda_ms * call["count"]
        rows.append(
            dict(
                op=call["name"],
                shape=list(x.shape),
                dtype=str(x.dtype)[6:],
                calls=call["count"],
                ref_ms=ref_ms,
                cuda_ms=cuda_ms,
                ref_mb=ref_mb,
                cuda_mb=cuda_mb,
            )
        )
        print(
            f"{call['name']:<15} {str(list(x.shape)):<22} {str(x.dtype)[6:]:<8} {call['count']:>5} "
            f"{ref_ms:>8.3f} {cuda_ms:>8.3f} {ref_ms / cuda_ms:>7.2f}x {ref_mb:>8.1f} {cuda_mb:>8.1f}"
        )
    print(f"Total per G+D pass (forward + backward, calls x time): ref {totals[0]:.1f} ms, cuda {totals[1]:.1f} ms")
    if json_path is not None:
        summary = dict(batch=batch, repeats=repeats, total_ref_ms=totals[0], total_cuda_ms=totals[1], rows=rows)
        Path(json_path).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
