"""Side by side with the published trainers: the same weights give the same images, and the same step the same
gradients.

Needs the reference trainers unpacked by ../shared/peer/prepare.sh (default folder `.peer` of the checkout);
without them it says so and exits 0. The published code runs in its own processes (its `training` package
would shadow ours); files pass between the two sides in a temporary folder. Everything runs on the CPU, in
float32 except in 3., where the published custom ops use their reference paths too.

1. Loading: the published code builds each network (StyleGAN2 G and D, StyleGAN3-T and -R, CREPS) with random
   weights and pickles it in its own format, and renders a fixed batch (constant noise, truncation 0.7) and D's
   logits; we load the same pickle with `training.legacy` and do the same. A TensorFlow-format pickle written
   from our networks goes through the published converter on one side and ours on the other.
2. Training step (`--steps`): for StyleGAN2 and CREPS, the published StyleGAN2Loss and ours compute the Gmain,
   Greg, Dmain and Dreg phases on the same weights, reals, latents and noise (torch reseeded identically before
   each phase); we compare every gradient, the path-length mean and the tracked w average.
3. float16: the published CREPS computes its two final blocks in float16 even on the CPU; ours does with
   GANFORGE_CPU_FP16=1. On the same weights the images must agree within two float16 steps at the image's
   largest value (FLOAT16_IMAGE_TOLERANCE), and (with `--steps`) every phase's gradients within float16's own
   error there (how far our float32 step is from the published float16 one); the command fails otherwise.
   The images differ at all only because the CPU's float16 matrix product rounds by memory layout: the
   published block makes its input contiguous, ours keeps the pixel features' channels-last strides (made
   contiguous, our images are bit-identical to the published ones).

    bash ../shared/peer/prepare.sh .peer && python -m benchmarks.published_parity
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import click
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # published_formats: writes TensorFlow-format pickles from our networks.

# Runs inside the published repository: build networks with random weights, pickle them the published way.
PEER_BUILD = textwrap.dedent(
    """
    import copy, pickle, sys, torch, dnnlib
    kind, path = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    common = dict(c_dim=0, img_resolution=32, img_channels=3)
    from training import networks_stylegan2
    D = networks_stylegan2.Discriminator(channel_base=512, channel_max=32, block_kwargs=dict(freeze_layers=0),
                                         mapping_kwargs={}, epilogue_kwargs=dict(mbstd_group_size=4), **common)
    mapping = dnnlib.EasyDict(num_layers=2)
    if kind == 'stylegan2':
        G = networks_stylegan2.Generator(z_dim=32, w_dim=32, mapping_kwargs=mapping, channel_base=512,
                                         channel_max=32, fused_modconv_default='inference_only', **common)
    elif kind.startswith('stylegan3'):
        from training import networks_stylegan3
        extra = dict(conv_kernel=1, use_radial_filters=True) if kind == 'stylegan3-r' else {}
        G = networks_stylegan3.Generator(z_dim=32, w_dim=32, mapping_kwargs=mapping, channel_base=1024,
                                         channel_max=64, magnitude_ema_beta=0.999, **extra, **common)
    else:
        from training import networks_creps
        G = networks_creps.Generator(z_dim=32, w_dim=32, mapping_kwargs=mapping, channel_base=1024,
                                     channel_max=64, **common)
    with torch.no_grad():  # Move every trained tensor off its initial value; constants stay.
        for name, t in G.named_parameters():
            t.add_(torch.randn_like(t) * 0.1)
        for name, t in G.named_buffers():
            if name.endswith(('w_avg', 'magnitude_ema', 'noise_const')):
                t.add_(torch.randn_like(t).abs() * 0.1)
    data = dict(training_set_kwargs=None, augment_pipe=None)
    for key, net in [('G', G), ('D', D), ('G_ema', G)]:
        data[key] = copy.deepcopy(net).eval().requires_grad_(False)
    with open(path, 'wb') as f:
        pickle.dump(data, f)
    """
)

# Runs inside the published repository: load with the published loader, render and score a fixed batch.
PEER_RENDER = textwrap.dedent(
    """
    import sys, numpy as np, torch, legacy
    with open(sys.argv[1], 'rb') as f:
        data = legacy.load_network_pkl(f)
    G, D = data['G_ema'], data['D']
    z = torch.from_numpy(np.random.RandomState(1).randn(4, G.z_dim)).float()
    c = torch.zeros([4, G.c_dim])
    force_fp32 = sys.argv[3:] != ['float16']  # float16: CREPS's final blocks as it runs them on the CPU.
    with torch.no_grad():
        img = G(z, c, truncation_psi=0.7, noise_mode='const', force_fp32=force_fp32)
        logits = D(img, c, force_fp32=True)
    np.savez(sys.argv[2], img=img.numpy(), logits=logits.numpy())
    """
)


def run_peer(repo: Path, script: str, *args: str, threads: int = 1) -> None:
    """Run `script` with the published repository first on the path (its own training package), on `threads`
    OpenMP threads (1, as ours: the same reduction order)."""
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS=str(threads))
    result = subprocess.run([sys.executable, "-c", script, *args], cwd=repo, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the published code failed in {repo}:\n{result.stderr[-3000:]}")


def render_ours(pkl: str, force_fp32: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Our loader and networks on the same batch as PEER_RENDER (G's float16 blocks off unless `force_fp32` is
    False and GANFORGE_CPU_FP16=1)."""
    from training import checkpoint

    snapshot = checkpoint.load_snapshot(pkl)
    G, D = snapshot["G_ema"], snapshot["D"]
    z = torch.from_numpy(np.random.RandomState(1).randn(4, G.z_dim)).float()
    c = torch.zeros([4, G.c_dim])
    with torch.no_grad():
        img = G(z, c, truncation_psi=0.7, noise_mode="const", force_fp32=force_fp32)
        logits = D(img, c, force_fp32=True)
    return img.numpy(), logits.numpy()


def compare_loading(peer: Path, work: Path) -> list[tuple[str, float, float, float]]:
    """(network, image scale, max |image difference|, max |logit difference|) for each published format."""
    rows = []
    for kind, repo in [
        ("stylegan2", "stylegan3"),
        ("stylegan3-t", "stylegan3"),
        ("stylegan3-r", "stylegan3"),
        ("creps", "creps"),
    ]:
        pkl = work / f"{kind}.pkl"
        run_peer(peer / repo, PEER_BUILD, kind, str(pkl))
        run_peer(peer / repo, PEER_RENDER, str(pkl), str(work / f"{kind}.npz"))
        ref = np.load(work / f"{kind}.npz")
        img, logits = render_ours(str(pkl))
        rows.append(
            (
                f"{kind} (published PyTorch)",
                float(np.abs(ref["img"]).max()),
                float(np.abs(img - ref["img"]).max()),
                float(np.abs(logits - ref["logits"]).max()),
            )
        )

    import published_formats as pf

    G, D = pf.tiny_stylegan2()
    static_G, static_D = pf.TINY_TF_G_STATIC, dict(pf.TINY_TF_D_STATIC, mbstd_group_size=4)
    pkl = work / "tensorflow.pkl"
    pkl.write_bytes(pf.tensorflow_snapshot(G, D, G, static_G, static_D, work / "executed"))
    run_peer(peer / "stylegan3", PEER_RENDER, str(pkl), str(work / "tensorflow.npz"))
    ref = np.load(work / "tensorflow.npz")
    img, logits = render_ours(str(pkl))
    rows.append(
        (
            "stylegan2 (TensorFlow pickle)",
            float(np.abs(ref["img"]).max()),
            float(np.abs(img - ref["img"]).max()),
            float(np.abs(logits - ref["logits"]).max()),
        )
    )
    return rows


# The stated tolerance of the float16 images: two float16 steps at the image's largest value (a step there is
# 2^-11 to 2^-10 of it); each side's own float16 rounding moves the image by several times that.
FLOAT16_IMAGE_TOLERANCE = 2 * 2.0**-10


def compare_creps_float16(peer: Path, work: Path) -> tuple[float, float, float]:
    """CREPS's final blocks in float16, the published network as it runs on the CPU and ours with
    GANFORGE_CPU_FP16=1: (image scale, max |ours - published|, max |ours in float16 - ours in float32|)."""
    from benchmarks.published_step_parity import cpu_float16

    pkl = work / "creps.pkl"  # Written by compare_loading.
    run_peer(peer / "creps", PEER_RENDER, str(pkl), str(work / "creps-float16.npz"), "float16")
    ref = np.load(work / "creps-float16.npz")["img"]
    with cpu_float16():
        img, _ = render_ours(str(pkl), force_fp32=False)
    img32, _ = render_ours(str(pkl))
    return float(np.abs(ref).max()), float(np.abs(img - ref).max()), float(np.abs(img - img32).max())


@click.command()
@click.option(
    "--peer",
    metavar="DIR",
    default=str(ROOT / ".peer"),
    show_default=True,
    help="Folder with the unpacked reference trainers (stylegan3/, creps/).",
)
@click.option("--steps/--no-steps", default=True, show_default=True, help="Also compare one training step.")
def main(peer: str, steps: bool) -> None:
    """Compare our loading (and training step) with the published code's, on the CPU in float32."""
    peer_dir = Path(peer)
    if not (peer_dir / "stylegan3" / "legacy.py").is_file() or not (peer_dir / "creps" / "legacy.py").is_file():
        click.echo(f"The reference trainers are not in {peer_dir} (bash ../shared/peer/prepare.sh .peer); skipped.")
        return
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as work:
        click.echo("Loading: published pickle -> our network, same batch (constant noise, psi 0.7), float32 CPU")
        click.echo(f"{'network':<32}{'|image|max':>12}{'image diff':>14}{'D diff':>12}")
        for name, scale, img_diff, d_diff in compare_loading(peer_dir, Path(work)):
            click.echo(f"{name:<32}{scale:>12.4f}{img_diff:>14.3g}{d_diff:>12.3g}")
        scale, diff, rounding = compare_creps_float16(peer_dir, Path(work))
        click.echo()
        click.echo("CREPS, final blocks in float16 (published: always, also on the CPU; ours: GANFORGE_CPU_FP16=1)")
        click.echo(
            f"  image: max |ours - published| = {diff / scale:.1e} of |image|max {scale:.4f} "
            f"(tolerance {FLOAT16_IMAGE_TOLERANCE:.1e}); float16 itself moves it {rounding / scale:.1e}"
        )
        ok = diff <= FLOAT16_IMAGE_TOLERANCE * scale
        if steps:
            from benchmarks import published_step_parity

            published_step_parity.report(peer_dir, Path(work))
            ok &= published_step_parity.report_float16(peer_dir, Path(work))
    if not ok:
        raise click.ClickException("ours and the published CREPS differ beyond float16 precision (see above)")


if __name__ == "__main__":
    main()
