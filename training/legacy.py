"""Read every network pickle users bring, without running code from it, and convert it to our snapshot format.

Three formats are accepted (`load_network_pkl`), each read by the restricted unpickler of `training.safe_pickle`:

- Our snapshots: a dict with `G`, `D`, `G_ema`, `augment_pipe` and `training_set_kwargs`, holding our classes.
- Published PyTorch pickles (StyleGAN2-ADA-PyTorch, StyleGAN3, CREPS): the same dict, with every network pickled
  by the published `torch_utils.persistence` as source text, class name, constructor arguments and state; each
  network is rebuilt as our class (`training.convert_published`).
- TensorFlow-era StyleGAN2 / StyleGAN2-ADA pickles: a tuple (G, D, Gs) of `dnnlib.tflib.network.Network`
  objects, whose static kwargs and named variables become our StyleGAN2 G and D (`training.convert_tensorflow`).

What a `--network` value may name (`resolve_network`): one of these files, a URL of one, or a run directory, which
means its newest `network-snapshot-*.pkl`. A file that is none of them (a training state, a dataset zip, a text file)
is refused with a sentence saying what it is (`check_file_kind`) before the unpickler sees it.

`python -m training.legacy --source=IN.pkl --dest=OUT.pkl` converts any of them into our format and reports
what it found; without `--dest` it only reports. See docs/published-models.md.
"""

from __future__ import annotations

import dataclasses
import os
import pickletools
import re
import zipfile
from typing import Any, BinaryIO

import click
import torch

import dnnlib
from training import augment, networks_creps, networks_stylegan2, networks_stylegan3, run_log
from training.convert_published import convert_published, dataset_kwargs_of
from training.convert_tensorflow import convert_tf
from training.safe_pickle import ModuleRecord, SnapshotError, TFNetworkRecord, UnsafePickleError
from training.safe_pickle import load as safe_load

NETWORK_KEYS = ("G", "D", "G_ema", "augment_pipe")  # The modules of a snapshot, in the order they are reported.
STATE_KEYS = {"version", "G_ema", "G_opt", "progress"}  # Keys every training state has (Trainer.state_dict).
ACCEPTED = (
    "the tools read network snapshot pickles: ours (network-snapshot-*.pkl) and the published StyleGAN2, StyleGAN3, "
    "CREPS and TensorFlow StyleGAN2 ones"
)


# ----------------------------------------------------------------------------
# What a --network value names.


def newest_snapshot(run_dir: str) -> str | None:
    """The network-snapshot-*.pkl of `run_dir` with the most images (by kimg, not by name), or None."""
    names = [name for name in os.listdir(run_dir) if run_log.snapshot_file_kimg(name) is not None]
    if not names:
        return None
    return os.path.join(run_dir, max(names, key=run_log.snapshot_file_kimg))


def resolve_network(value: str) -> tuple[str, str | None]:
    """The path or URL a --network value names, and a one-line note when that is not the value itself.

    A run directory (any local directory) means its newest network snapshot, as in the published visualizer; a
    directory without one raises SnapshotError naming what it lacks. Files and URLs are returned as they are (their
    content is checked when read, by `check_file_kind`).
    """
    path = os.path.expanduser(value)
    if dnnlib.util.is_url(value, allow_file_urls=True) or not os.path.isdir(path):
        return value, None
    newest = newest_snapshot(path)
    if newest is None:
        states = [name for name in os.listdir(path) if run_log.STATE_NAME.fullmatch(name)]
        held = " (it holds training states only, which train.py --resume=DIR continues)" if states else ""
        raise SnapshotError(
            f"{value} is a directory without a network-snapshot-*.pkl{held}; pass a snapshot pickle, or a run "
            f"directory once train.py has written one"
        )
    return newest, f"using its newest snapshot, {os.path.basename(newest)}"


def check_file_kind(file: BinaryIO, file_name: str) -> str | None:
    """Refuse files whose first bytes show they are no network pickle, with a sentence saying what they are
    (SnapshotError); the file's position is kept.

    A torch.save zip (a training state) and other zip archives (datasets) are told apart by content, not by name.

    Returns:
        None when the file starts as every pickle of protocol 2 or later does (all network pickles we know of);
        else what it is instead ('a text file', ...), for the message should unpickling fail.
    """
    start = file.tell()
    head = file.read(512)
    file.seek(start)
    if not head:
        raise SnapshotError(f"{file_name} is not a readable network snapshot: it is empty; {ACCEPTED}")
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(file) as archive:
                data_pkl = [name for name in archive.namelist() if re.fullmatch(r"[^/]+/data\.pkl", name)]
                keys = _pickle_strings(archive.read(data_pkl[0])) if data_pkl else set()
        except (zipfile.BadZipFile, OSError):
            data_pkl, keys = [], set()
        file.seek(start)
        if STATE_KEYS <= keys:
            raise SnapshotError(_training_state_message(file_name))
        if data_pkl:
            raise SnapshotError(
                f"{file_name} is a PyTorch torch.save file (weights or a state dict), not a network snapshot; "
                f"pass a network-snapshot-*.pkl"
            )
        raise SnapshotError(_not_a_pickle(file_name, "a zip archive (such as a dataset)"))
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:  # PROTO n: pickle protocols 2 to 5.
        return None
    return "a text file" if _looks_like_text(head) else "binary data"


def _not_a_pickle(file_name: str, what: str) -> str:
    """The message for a file that is no pickle at all."""
    return f"{file_name} is not a readable network snapshot: it is {what}, not a pickle; {ACCEPTED}"


def _looks_like_text(head: bytes) -> bool:
    """Whether a file's first bytes are UTF-8 text (a multibyte character cut off at the end allowed)."""
    text = head.decode("utf-8", errors="ignore")
    return len(text.encode("utf-8")) >= len(head) - 3 and all(ch.isprintable() or ch in "\t\n\r\f" for ch in text)


def _pickle_strings(data: bytes) -> set[str]:
    """The string constants of a pickle, read opcode by opcode (nothing is unpickled, so nothing runs)."""
    strings = set()
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if isinstance(arg, str) and "UNICODE" in opcode.name:
                strings.add(arg)
    except (ValueError, EOFError):  # Damaged: what was read so far is all we know.
        pass
    return strings


def _training_state_message(file_name: str) -> str:
    """'... is a training state ...', naming the snapshot written with it when it is still beside it."""
    message = (
        f"{file_name} is a training state (what --resume continues), not a network snapshot; pass a "
        f"network-snapshot-*.pkl"
    )
    match = run_log.STATE_NAME.fullmatch(os.path.basename(file_name))
    if match is not None and not dnnlib.util.is_url(file_name):
        sibling = os.path.join(os.path.dirname(file_name), f"network-snapshot-{match[1]}.pkl")
        if os.path.isfile(sibling):
            message += f", such as {sibling} next to it"
    return message


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
    kind = check_file_kind(file, file_name)
    try:
        data = safe_load(file, file_name)
    except UnsafePickleError:
        raise  # It names the global refused; the answer whatever the file is.
    except SnapshotError:
        if kind is None:
            raise  # A damaged pickle: the unpickler's message says how.
        raise SnapshotError(_not_a_pickle(file_name, kind)) from None
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
@click.option(
    "--source", metavar="PKL|URL|DIR", required=True, help="Network pickle (ours, published PyTorch or TF), or a run."
)
@click.option(
    "--dest",
    metavar="PKL",
    type=click.Path(dir_okay=False),
    help="Output snapshot  [default: none, only report what --source holds].",
)
@click.option("--force", is_flag=True, help="Replace --dest if it exists.")
def main(source: str, dest: str | None, force: bool) -> None:
    """Report what a network pickle holds and convert it into this toolkit's snapshot format.

    Reads our snapshots, the published StyleGAN2-ADA-PyTorch, StyleGAN3 and CREPS pickles, and the TensorFlow
    StyleGAN2 / StyleGAN2-ADA pickles, without running any code they carry; a run directory means its newest
    network-snapshot-*.pkl. Without --dest, only the report is printed and nothing is written. The output loads
    with `pickle.load(f)["G_ema"]` wherever this package is installed.

    Examples:

    \b
    python -m training.legacy --source=stylegan3-t-ffhq-1024x1024.pkl --dest=sg3t-ffhq.pkl
    python -m training.legacy --source=stylegan2-ffhq-config-f.pkl --dest=sg2-ffhq.pkl
    python -m training.legacy --source=runs/00000-stylegan2-shapes-32-gpus1-batch16-gamma0.0128   # report only
    """
    from training import checkpoint, inference  # Deferred: both import this module.

    if dest is None and force:
        raise click.ClickException("--force replaces --dest, and there is no --dest")
    if dest is not None and os.path.exists(dest) and not force:
        raise click.ClickException(f"--dest={dest} exists; pass --force to replace it")
    path = inference.resolve_network(source, "--source")
    try:
        loaded = load_network_pkl(path)
    except (OSError, SnapshotError) as error:
        raise click.ClickException(f"--source={source}: {error}") from None
    click.echo(f"Format: {loaded.source_format}")
    for key in NETWORK_KEYS:
        click.echo(f"{key + ':':<14}{describe_network(loaded.snapshot.get(key))}")
    for note in loaded.notes:
        click.echo(f"Note: {note}")
    if dest is None:
        return
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
