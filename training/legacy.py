"""Read every network pickle users bring, without running code from it, and convert it to our snapshot format.

Three formats are accepted (`load_network_pkl`), each read by the restricted unpickler of `training.safe_pickle`:

- Our snapshots: a dict with `G`, `D`, `G_ema`, `augment_pipe` and `training_set_kwargs`, holding our classes.
- Published PyTorch pickles (StyleGAN2-ADA-PyTorch, StyleGAN3, CREPS): the same dict, with every network pickled
  by the published `torch_utils.persistence` as source text, class name, constructor arguments and state; each
  network is rebuilt as our class (`training.convert_published`).
- TensorFlow-era StyleGAN2 / StyleGAN2-ADA pickles: a tuple (G, D, Gs) of `dnnlib.tflib.network.Network`
  objects, whose static kwargs and named variables become our StyleGAN2 G and D (`training.convert_tensorflow`).

`python -m training.legacy --source=IN.pkl --dest=OUT.pkl` converts any of them into our format and reports
what it found. See docs/published-models.md.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, BinaryIO

import click
import torch

import dnnlib
from training import augment, networks_creps, networks_stylegan2, networks_stylegan3
from training.convert_published import convert_published, dataset_kwargs_of
from training.convert_tensorflow import convert_tf
from training.safe_pickle import ModuleRecord, SnapshotError, TFNetworkRecord
from training.safe_pickle import load as safe_load

NETWORK_KEYS = ("G", "D", "G_ema", "augment_pipe")  # The modules of a snapshot, in the order they are reported.


# ----------------------------------------------------------------------------
# Loading.


@dataclasses.dataclass
class LoadedNetworks:
    """What a network pickle held, as our snapshot dict, with where it came from."""

    snapshot: dict[str, Any]  # G, D, G_ema, augment_pipe (None where absent) and training_set_kwargs.
    source_format: str  # 'ganforge', 'published PyTorch (stylegan3)', 'TensorFlow StyleGAN2', ...
    notes: list[str]  # What the conversion dropped, defaulted or ignored.


def read_network_pkl(file: BinaryIO, file_name: str) -> LoadedNetworks:
    """Read any accepted network pickle (see the module docstring) from an open file, without running its code."""
    data = safe_load(file, file_name)
    if isinstance(data, tuple) and len(data) == 3 and all(isinstance(net, TFNetworkRecord) for net in data):
        return _from_tensorflow(data, file_name)
    if not isinstance(data, dict) or "G_ema" not in data:
        raise SnapshotError(
            f"{file_name} is not a network snapshot: expected a dict with G, D and G_ema, or a "
            f"TensorFlow (G, D, Gs) tuple"
        )
    if any(isinstance(data.get(key), ModuleRecord) for key in NETWORK_KEYS):
        return _from_published(data, file_name)
    for key in NETWORK_KEYS:
        if data.get(key) is not None:
            _check_our_module(data[key], f"{file_name}: {key}")
    return LoadedNetworks(data, "ganforge", [])


def load_network_pkl(path_or_url: str) -> LoadedNetworks:
    """Read any accepted network pickle from a path or URL (downloads go through the dnnlib cache)."""
    with dnnlib.util.open_url(path_or_url, verbose=True) as f:
        return read_network_pkl(f, path_or_url)


def _from_published(data: dict[str, Any], file_name: str) -> LoadedNetworks:
    """Convert a published PyTorch snapshot dict."""
    snapshot: dict[str, Any] = {}
    notes: list[str] = []
    families = set()
    for key in NETWORK_KEYS:
        value = data.get(key)
        if value is None:
            snapshot[key] = None
            continue
        snapshot[key], module_notes = convert_published(value, f"{file_name}: {key}")
        notes += [f"{key}: {note}" for note in module_notes]
        families.add(value.source.family)
    snapshot["training_set_kwargs"] = dataset_kwargs_of(data.get("training_set_kwargs"))
    ignored = sorted(set(data) - set(NETWORK_KEYS) - {"training_set_kwargs"})
    if ignored:
        notes.append(f"ignored entries {', '.join(map(str, ignored))}")
    families.discard("augment")
    return LoadedNetworks(snapshot, f"published PyTorch ({'/'.join(sorted(families))})", notes)


def _from_tensorflow(data: tuple, file_name: str) -> LoadedNetworks:
    """Convert a TensorFlow (G, D, Gs) tuple."""
    notes: list[str] = []
    snapshot: dict[str, Any] = {"augment_pipe": None, "training_set_kwargs": None}
    for key, tf, kind in [("G", data[0], "G"), ("D", data[1], "D"), ("G_ema", data[2], "G")]:
        snapshot[key], module_notes = convert_tf(tf, kind, f"{file_name}: {key}")
        notes += [f"{key}: {note}" for note in module_notes]
    return LoadedNetworks(
        {key: snapshot[key] for key in (*NETWORK_KEYS, "training_set_kwargs")}, "TensorFlow StyleGAN2", notes
    )


def _check_our_module(module: Any, label: str) -> None:
    """Our snapshots hold torch modules all the way down (a record inside one would fail later, obscurely)."""
    if not isinstance(module, torch.nn.Module):
        raise SnapshotError(f"{label} is a {type(module).__name__}, not a network")
    for name, child in module.__dict__.get("_modules", {}).items():
        if child is not None:
            _check_our_module(child, f"{label}.{name}")


# ----------------------------------------------------------------------------
# Reporting and the converter command.


def describe_network(module: torch.nn.Module | None) -> str:
    """One line: what kind of network, its image size, channels, conditioning and parameter count."""
    if module is None:
        return "none"
    count = sum(p.numel() for p in module.parameters())
    if isinstance(module, augment.AugmentPipe):
        return f"ADA augment pipe, p={float(module.p):.3f}"
    kind = {
        networks_stylegan2.Generator: "StyleGAN2 generator",
        networks_stylegan3.Generator: "StyleGAN3 generator",
        networks_creps.Generator: "CREPS generator",
        networks_stylegan2.Discriminator: "StyleGAN2 discriminator",
    }.get(type(module), type(module).__name__)
    if isinstance(module, networks_stylegan3.Generator):
        kernels = {getattr(layer, "conv_kernel", None) for layer in module.synthesis.modules()}
        kind = "StyleGAN3-T generator" if 3 in kernels else "StyleGAN3-R generator"  # R: 1x1 convolutions only.
    size = getattr(module, "img_resolution", "?")
    c_dim = getattr(module, "c_dim", 0)
    parts = [
        kind,
        f"{size}x{size}",
        f"{getattr(module, 'img_channels', '?')} channels",
        f"conditional ({c_dim} classes)" if c_dim else "unconditional",
    ]
    if hasattr(module, "z_dim"):
        parts.append(f"z {module.z_dim}, w {module.w_dim}")
    parts.append(f"{count:,} parameters")
    return ", ".join(parts)


@click.command(context_settings=dict(terminal_width=120, max_content_width=120))
@click.option("--source", metavar="PKL|URL", required=True, help="Network pickle: ours, published PyTorch or TF.")
@click.option("--dest", metavar="PKL", type=click.Path(dir_okay=False), required=True, help="Output snapshot.")
@click.option("--force", is_flag=True, help="Replace --dest if it exists.")
def main(source: str, dest: str, force: bool) -> None:
    """Convert a network pickle into this toolkit's snapshot format, reporting what it holds.

    Reads our snapshots, the published StyleGAN2-ADA-PyTorch, StyleGAN3 and CREPS pickles, and the TensorFlow
    StyleGAN2 / StyleGAN2-ADA pickles, without running any code they carry. The output loads with
    `pickle.load(f)["G_ema"]` wherever this package is installed.

    Examples:

    \b
    python -m training.legacy --source=stylegan3-t-ffhq-1024x1024.pkl --dest=sg3t-ffhq.pkl
    python -m training.legacy --source=stylegan2-ffhq-config-f.pkl --dest=sg2-ffhq.pkl
    """
    from training import checkpoint  # Deferred: checkpoint imports this module.

    if os.path.exists(dest) and not force:
        raise click.ClickException(f"--dest={dest} exists; pass --force to replace it")
    try:
        loaded = load_network_pkl(source)
    except (OSError, SnapshotError) as error:
        raise click.ClickException(f"--source={source}: {error}") from None
    click.echo(f"Format: {loaded.source_format}")
    for key in NETWORK_KEYS:
        click.echo(f"{key + ':':<14}{describe_network(loaded.snapshot.get(key))}")
    for note in loaded.notes:
        click.echo(f"Note: {note}")
    try:
        if os.path.dirname(dest):
            os.makedirs(os.path.dirname(dest), exist_ok=True)
        checkpoint.save_snapshot(
            dest, *(loaded.snapshot[key] for key in NETWORK_KEYS), loaded.snapshot["training_set_kwargs"]
        )
    except OSError as error:  # The write is atomic: nothing is left under --dest.
        raise click.ClickException(f"--dest={dest}: cannot write it ({error})") from None
    click.echo(f"Wrote {dest}")


if __name__ == "__main__":
    main()
