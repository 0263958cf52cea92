"""Side by side with the published trainers: the same weights give the same images, and the same step the same
gradients.

Needs the reference trainers unpacked by ../shared/peer/prepare.sh (default folder `.peer` of the checkout);
without them it says so and exits 0. The published code runs in its own processes (its `training` package
would shadow ours); files pass between the two sides in a temporary folder. Everything runs on the CPU in
float32, where the published custom ops use their reference paths too.

1. Loading: the published code builds each network (StyleGAN2 G and D, StyleGAN3-T and -R, CREPS) with random
   weights and pickles it in its own format, and renders a fixed batch (constant noise, truncation 0.7) and D's
   logits; we load the same pickle with `training.legacy` and do the same. A TensorFlow-format pickle written
   from our networks goes through the published converter on one side and ours on the other.
2. Training step (`--steps`): for StyleGAN2 and CREPS, the published StyleGAN2Loss and ours compute the Gmain,
   Greg, Dmain and Dreg phases on the same weights, reals, latents and noise (torch reseeded identically before
   each phase); we compare every gradient, the path-length mean and the tracked w average.

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
    with torch.no_grad():
        img = G(z, c, truncation_psi=0.7, noise_mode='const', force_fp32=True)
        logits = D(img, c, force_fp32=True)
    np.savez(sys.argv[2], img=img.numpy(), logits=logits.numpy())
    """
)


def run_peer(repo: Path, script: str, *args: str) -> None:
    """Run `script` with the published repository first on the path (its own training package)."""
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1")  # As ours: the same reduction order.
    result = subprocess.run([sys.executable, "-c", script, *args], cwd=repo, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the published code failed in {repo}:\n{result.stderr[-3000:]}")


def render_ours(pkl: str) -> tuple[np.ndarray, np.ndarray]:
    """Our loader and networks on the same batch as PEER_RENDER."""
    from training import checkpoint

    snapshot = checkpoint.load_snapshot(pkl)
    G, D = snapshot["G_ema"], snapshot["D"]
    z = torch.from_numpy(np.random.RandomState(1).randn(4, G.z_dim)).float()
    c = torch.zeros([4, G.c_dim])
    with torch.no_grad():
        img = G(z, c, truncation_psi=0.7, noise_mode="const", force_fp32=True)
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
        if steps:
            from benchmarks import published_step_parity

            published_step_parity.report(peer_dir, Path(work))


if __name__ == "__main__":
    main()
