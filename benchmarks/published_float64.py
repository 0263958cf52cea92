"""StyleGAN3-T in float32, ours and the published code's, each against a float64 evaluation of the same network:
is the float32 difference between the two summation order, or a real difference? (Issue 24, item 2.)

On the same weights, our StyleGAN3-T and the published one give the same images to 2e-7 in float32, but some
parameter gradients differ by up to ~1e-4 of their tensor's largest value. Our filtered_lrelu reference path is
polyphase (strided and transposed convolutions that skip the inserted zeros and the discarded samples), the
published one upsamples by zero insertion and filters at the full rate; both are exact in real arithmetic and
round differently in float32. Here both float32 results are measured against float64:

1. The published code builds a small StyleGAN3-T G and a StyleGAN2 D (published_parity's networks, weights
   moved off their initial values) and pickles them. On the latents of published_step_parity's first Gmain phase
   it computes three scalar losses: `probe`, the images dotted with fixed random weights (G alone); `Gmain`,
   mean(softplus(-D(G(z)))) as the training step's Gmain phase; `Greg`, the path-length penalty (second
   derivatives). It saves every G parameter's gradient, each synthesis layer's output and the gradient arriving
   at it; once on 1 thread and once on 2 (the published code's own summation-order noise).
2. We load the pickle with `training.legacy` and compute the same: in float32 (our usual CPU path); in float32
   with the literal step-by-step definitions of tests/direct_ops.py (zero insertion, full-rate filter,
   decimation: the published organisation) in place of filtered_lrelu and upfirdn2d; and in float64 with our
   ops and with the step-by-step ones. The last is the reference; the two float64 evaluations agree to about
   1e-14, so the reference does not depend on how the ops are organised.
3. Per tensor, the error of each float32 result relative to the tensor's largest float64 value. If ours is
   systematically further from float64 than the published one, the difference is real; if not, it is rounding.

Measured (CPU, torch 2.14): ours is never the further one overall: with the probe loss ours is off by at most
1.9e-4 and the published code by 2.3e-3; in Gmain 6.4e-5 and 9.6e-5; in Greg both 3.3e-5. Per layer, the
published code loses about three digits in the backward pass of the last layer before ToRGB (L13: the gradient
arriving at L12 is off by 2e-3), and our own network with the step-by-step ops in float32 loses exactly the
same; our polyphase path does not.

Our networks hardcode float32 in a few places (casting latents, ws and the image back from float16, the input
layer's pixel grid); the float64 evaluation maps those to float64 while it runs and checks that every module's
output is float64. Needs the reference trainers in `.peer` (../shared/peer/prepare.sh); without them it says so
and exits 0. About four minutes on the CPU (mostly the float64 path-length penalty).

    python -m benchmarks.published_float64
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import click
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
LOSSES = ("probe", "Gmain", "Greg")
PL_BATCH = 2  # The path-length penalty's batch: the phase's 4 samples halved, as the training step does.


def evaluate(G: torch.nn.Module, D: torch.nn.Module, dtype: torch.dtype) -> dict[str, np.ndarray]:
    """Every loss's G parameter gradients, and each synthesis layer's output and incoming gradient. Uses only
    what the published and our networks share (mapping, synthesis.layer_names, D(img, c)), so the published side
    runs this same function.

    The latents are those of published_step_parity's first Gmain phase. probe: the images dotted with fixed
    random weights. Gmain: mean(softplus(-D(G(z)))). Greg: the path-length penalty (second derivatives) on the
    first PL_BATCH latents, with fixed noise and the path-length mean's first update from 0."""
    try:
        from benchmarks.published_step_parity import phase_inputs
    except ImportError:  # In the published repository's process, with benchmarks/ itself on the path.
        from published_step_parity import phase_inputs

    gen_z = phase_inputs(0, 0, G.z_dim, G.img_resolution)["gen_z"].to(dtype)
    rng = np.random.RandomState(2)
    image_shape = [4, G.img_channels, G.img_resolution, G.img_resolution]
    probe = torch.from_numpy(rng.randn(*image_shape)).to(dtype)
    pl_noise = torch.from_numpy(rng.randn(PL_BATCH, *image_shape[1:]) / G.img_resolution).to(dtype)
    out = {}
    for loss_name in LOSSES:
        G.zero_grad(set_to_none=True)
        z = gen_z[:PL_BATCH] if loss_name == "Greg" else gen_z
        c = torch.zeros([len(z), G.c_dim], dtype=dtype)
        layers = ["input", *G.synthesis.layer_names]
        handles = [getattr(G.synthesis, name).register_forward_hook(_record(name, out, loss_name)) for name in layers]
        try:
            ws = G.mapping(z, c)
            img = G.synthesis(ws)  # [N, 3, 32, 32]
            if loss_name == "probe":
                loss = (img * probe).sum()
            elif loss_name == "Gmain":
                loss = torch.nn.functional.softplus(-D(img, c)).mean()
            else:
                (pl_grads,) = torch.autograd.grad((img * pl_noise).sum(), ws, create_graph=True)
                pl_lengths = pl_grads.square().sum(2).mean(1).sqrt()  # [PL_BATCH]
                loss = (pl_lengths - 0.01 * pl_lengths.mean().detach()).square().mean()
            loss.backward()
        finally:
            for handle in handles:
                handle.remove()
        out[f"{loss_name}/out/image"] = img.detach().numpy().copy()
        for name, p in G.named_parameters():  # No gradient (a parameter the loss does not reach) counts as 0.
            out[f"{loss_name}/grad/{name}"] = (p.grad if p.grad is not None else torch.zeros_like(p)).numpy().copy()
    return out


def _record(name: str, out: dict, loss_name: str):
    """A forward hook that saves a layer's output and, once backward reaches it, the gradient arriving there."""

    def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        out[f"{loss_name}/out/{name}"] = output.detach().numpy().copy()

        def save_grad(grad: torch.Tensor) -> None:
            out[f"{loss_name}/dout/{name}"] = grad.detach().numpy().copy()

        output.register_hook(save_grad)

    return hook


# Runs inside the published repository: load its pickle, evaluate in float32 with this file's `evaluate`.
PEER_EVALUATE = textwrap.dedent(
    """
    import sys, numpy as np, torch, legacy
    sys.path.insert(0, sys.argv[3])
    from published_float64 import evaluate
    torch.set_num_threads(int(sys.argv[4]))
    with open(sys.argv[1], 'rb') as f:
        data = legacy.load_network_pkl(f)
    G, D = data['G'].eval().requires_grad_(True), data['D'].eval().requires_grad_(False)
    np.savez(sys.argv[2], **evaluate(G, D, torch.float32))
    """
)


def published(peer: Path, pkl: Path, dest: Path, threads: int) -> dict[str, np.ndarray]:
    """The published side's float32 evaluation on `threads` threads."""
    from benchmarks.published_parity import run_peer

    run_peer(
        peer / "stylegan3",
        PEER_EVALUATE,
        str(pkl),
        str(dest),
        str(Path(__file__).parent),
        str(threads),
        threads=threads,
    )
    return dict(np.load(dest))


@contextlib.contextmanager
def direct_op_definitions() -> Iterator[None]:
    """While inside, filtered_lrelu and upfirdn2d are the literal step-by-step definitions of tests/direct_ops
    (zero insertion, full-rate filter, decimation): the published code's organisation of the ops."""
    sys.path.insert(0, str(ROOT / "tests"))
    from direct_ops import direct_filtered_lrelu, direct_upfirdn2d

    from torch_utils.ops import filtered_lrelu, upfirdn2d

    def flrelu(x, fu=None, fd=None, b=None, up=1, down=1, padding=0, gain=2**0.5, slope=0.2, clamp=None,
               flip_filter=False, impl="cuda"):  # fmt: skip
        return direct_filtered_lrelu(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter)

    def fir(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl="cuda"):
        return direct_upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)

    originals = (filtered_lrelu.filtered_lrelu, upfirdn2d.upfirdn2d)
    filtered_lrelu.filtered_lrelu, upfirdn2d.upfirdn2d = flrelu, fir
    try:
        yield
    finally:
        filtered_lrelu.filtered_lrelu, upfirdn2d.upfirdn2d = originals
        sys.path.remove(str(ROOT / "tests"))


@contextlib.contextmanager
def float64_everywhere() -> Iterator[None]:
    """While inside, float32 requested by our networks means float64 (Tensor.to, torch.arange, the default
    dtype)."""

    def to(self: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        args = tuple(torch.float64 if a is torch.float32 else a for a in args)
        if kwargs.get("dtype") is torch.float32:
            kwargs["dtype"] = torch.float64
        return original_to(self, *args, **kwargs)

    def arange(*args, **kwargs) -> torch.Tensor:
        if kwargs.get("dtype") is torch.float32:
            kwargs["dtype"] = torch.float64
        return original_arange(*args, **kwargs)

    original_to, original_arange, original_dtype = torch.Tensor.to, torch.arange, torch.get_default_dtype()
    torch.Tensor.to, torch.arange = to, arange
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.Tensor.to, torch.arange = original_to, original_arange
        torch.set_default_dtype(original_dtype)


def ours(pkl: Path, dtype: torch.dtype, direct_ops: bool = False) -> dict[str, np.ndarray]:
    """Our side's evaluation in float32 or float64, with our ops or (`direct_ops`) the step-by-step ones."""
    from training import checkpoint

    snapshot = checkpoint.load_snapshot(str(pkl))
    G, D = snapshot["G"].eval().requires_grad_(True), snapshot["D"].eval().requires_grad_(False)
    ops = direct_op_definitions() if direct_ops else contextlib.nullcontext()
    if dtype == torch.float32:
        with ops:
            return evaluate(G, D, dtype)
    G, D = G.double(), D.double()
    outputs_dtypes = set()

    def check(module: torch.nn.Module, inputs: tuple, output) -> None:
        if isinstance(output, torch.Tensor):
            outputs_dtypes.add(output.dtype)

    handles = [m.register_forward_hook(check) for net in (G, D) for m in net.modules()]
    with ops, float64_everywhere():
        out = evaluate(G, D, torch.float64)
    for handle in handles:
        handle.remove()
    assert outputs_dtypes == {torch.float64}, f"the float64 evaluation computed in {outputs_dtypes}"
    return out


def relative_error(value: np.ndarray, reference: np.ndarray) -> float:
    """max |value - reference| / max |reference|."""
    return float(np.abs(value - reference).max()) / max(float(np.abs(reference).max()), 1e-300)


def measure(peer: Path, work: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every evaluation: published float32 on 1 and 2 threads, ours in float32, float64 with our ops and float64
    with the direct definitions (the reference)."""
    from benchmarks.published_parity import PEER_BUILD, run_peer

    torch.set_num_threads(1)
    pkl = work / "stylegan3-t.pkl"
    run_peer(peer / "stylegan3", PEER_BUILD, "stylegan3-t", str(pkl))
    return dict(
        pub=published(peer, pkl, work / "published-1.npz", threads=1),
        pub2=published(peer, pkl, work / "published-2.npz", threads=2),
        ours32=ours(pkl, torch.float32),
        direct32=ours(pkl, torch.float32, direct_ops=True),
        ours64=ours(pkl, torch.float64),
        ref=ours(pkl, torch.float64, direct_ops=True),
    )


def report(results: dict[str, dict[str, np.ndarray]]) -> None:
    """Print, per gradient tensor and per layer, the float32 errors of ours and the published code's."""
    pub, pub2, ours32, direct32, ours64, ref = (
        results[k] for k in ("pub", "pub2", "ours32", "direct32", "ours64", "ref")
    )

    def errors(key: str) -> tuple[float, float, float, float]:
        """Ours and the published against float64, ours against the published, and our network with the
        step-by-step ops against float64; relative to the float64 tensor's largest value."""
        scale = max(float(np.abs(ref[key]).max()), 1e-300)
        pairs = [(ours32, ref), (pub, ref), (ours32, pub), (direct32, ref)]
        return tuple(float(np.abs(a[key] - b[key]).max()) / scale for a, b in pairs)

    definitions = max(relative_error(ours64[key], ref[key]) for key in ref)
    click.echo("StyleGAN3-T 32x32, float32 CPU (1 thread) against float64 with the direct op definitions")
    click.echo(f"float64 with our ops against float64 with the direct definitions: {definitions:.1e} (worst tensor)")
    click.echo()
    click.echo("G parameter gradients: max |float32 - float64| / max |float64| per tensor; o-p: ours - published")
    click.echo(f"  {'tensor':<36}" + "".join(f"{name + ': ours':>16}{'published':>10}{'o-p':>9}" for name in LOSSES))
    names = sorted(key.split("/", 2)[2] for key in ref if key.startswith(f"{LOSSES[0]}/grad/"))
    table = {(loss, name): errors(f"{loss}/grad/{name}") for loss in LOSSES for name in names}
    for name in names:
        cells = "".join(f"{e[0]:>16.1e}{e[1]:>10.1e}{e[2]:>9.1e}" for e in (table[loss, name] for loss in LOSSES))
        click.echo(f"  {name:<36}{cells}")
    for loss in LOSSES:
        rows = [table[loss, name] for name in names]
        threads = max(relative_error(pub2[f"{loss}/grad/{name}"], pub[f"{loss}/grad/{name}"]) for name in names)
        click.echo(
            f"  {loss}: float32 error worst/median ours {max(r[0] for r in rows):.1e}/"
            f"{np.median([r[0] for r in rows]):.1e}, published {max(r[1] for r in rows):.1e}/"
            f"{np.median([r[1] for r in rows]):.1e}; ours further in {sum(r[0] > r[1] for r in rows)} of {len(rows)};"
            f" ours - published {max(r[2] for r in rows):.1e}; published 1 vs 2 threads {threads:.1e}"
        )
        click.echo(
            f"  {' ' * len(loss)}  ours with the step-by-step ops in float32: {max(r[3] for r in rows):.1e}/"
            f"{np.median([r[3] for r in rows]):.1e}"
        )
    click.echo()
    click.echo("Per layer: its output (Gmain's batch) and the gradient arriving at it, float32 error as above")
    header = f"{'out: ours':>12}{'published':>10}"
    header += "".join(f"{'d' + name + ': ours':>14}{'published':>10}{'step-by-step':>13}" for name in LOSSES)
    click.echo(f"  {'layer':<14}{header}")
    layers = [key.split("/", 2)[2] for key in ref if key.startswith("Gmain/dout/")]
    for layer in sorted(layers, key=lambda name: -1 if name == "input" else int(name[1:].split("_")[0])):
        cells = "{:>12.1e}{:>10.1e}".format(*errors(f"Gmain/out/{layer}")[:2])
        cells += "".join(
            "{:>14.1e}{:>10.1e}{:>13.1e}".format(*errors(f"{loss}/dout/{layer}")[:2], errors(f"{loss}/dout/{layer}")[3])
            for loss in LOSSES
        )
        click.echo(f"  {layer:<14}{cells}")


@click.command()
@click.option(
    "--peer",
    metavar="DIR",
    default=str(ROOT / ".peer"),
    show_default=True,
    help="Folder with the unpacked reference trainers (stylegan3/).",
)
def main(peer: str) -> None:
    """Measure ours and the published StyleGAN3-T in float32 against a float64 evaluation."""
    peer_dir = Path(peer)
    if not (peer_dir / "stylegan3" / "legacy.py").is_file():
        click.echo(f"The reference trainers are not in {peer_dir} (bash ../shared/peer/prepare.sh .peer); skipped.")
        return
    with tempfile.TemporaryDirectory() as work:
        report(measure(peer_dir, Path(work)))


if __name__ == "__main__":
    main()
