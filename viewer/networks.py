"""The networks the visualizer has opened: loaded through the safe snapshot loader (ours, published PyTorch and
TensorFlow pickles alike), described for the page, kept as Renderers (the few most recent), and the gen_images.py
command line that gives a view's pixels."""

from __future__ import annotations

import collections
import os
import shlex
import threading

import numpy as np
import torch

from training import checkpoint, legacy
from training.inference import can_scale, can_transform
from viewer.render import SEED_ROW, Renderer, View

KEEP_LOADED = 3  # Renderers kept in memory; older networks are loaded again when a tab asks for them.
KEEP_RECENT = 20  # Networks listed as recently opened.


class NetworkError(ValueError):
    """A network that cannot be opened: the sentence names it and says why."""


class Networks:
    """Opens networks by what a --network value names (a pickle, a URL, a run directory: its newest snapshot) and
    keeps the most recently used ones loaded. Safe to use from several threads."""

    def __init__(self, device: torch.device):
        self.device = device
        self._lock = threading.Lock()
        self._loaded: collections.OrderedDict[str, Renderer] = collections.OrderedDict()
        self._info: dict[str, dict] = {}
        self.recent: list[str] = []  # What was opened, newest first (the values as given).

    def open(self, value: str) -> dict:
        """Load the network `value` names (slow: call it off the event loop); its description for the page."""
        value = value.strip()
        if not value:
            raise NetworkError("network: give a snapshot pickle, a URL or a run directory")
        try:
            path, _note = legacy.resolve_network(value)
            G = checkpoint.load_snapshot(path)["G_ema"]
        except (OSError, ValueError) as error:
            text = str(error)
            raise NetworkError(text if value in text else f"{value}: {text}") from None
        except KeyError:
            raise NetworkError(f"{value}: the snapshot has no G_ema (is it a network snapshot?)") from None
        renderer = Renderer(G, self.device)
        info = describe(renderer, path)
        with self._lock:
            self._loaded[path] = renderer
            self._loaded.move_to_end(path)
            while len(self._loaded) > KEEP_LOADED:
                self._loaded.popitem(last=False)
            self._info[path] = info
            self.recent = [value, *[v for v in self.recent if v != value]][:KEEP_RECENT]
        return info

    def renderer(self, path: str) -> Renderer:
        """The Renderer of an opened network (loaded again if it was let go)."""
        with self._lock:
            renderer = self._loaded.get(path)
            if renderer is not None:
                self._loaded.move_to_end(path)
                return renderer
            known = path in self._info
        if not known:
            raise NetworkError(f"network: {path} has not been opened")
        self.open(path)
        with self._lock:
            return self._loaded[path]


def describe(renderer: Renderer, path: str) -> dict:
    """What the page needs to know of a network: sizes, what it can do, and its synthesis layers."""
    G = renderer.G
    layers = renderer.render(View()).layers
    return {
        "path": path,
        "name": os.path.basename(path.rstrip("/")) or path,
        "kind": f"{type(G).__module__.rsplit('.', 1)[-1]}",
        "resolution": G.img_resolution,
        "channels": G.img_channels,
        "z_dim": G.z_dim,
        "w_dim": G.w_dim,
        "c_dim": G.c_dim,
        "num_ws": G.num_ws,
        "can_transform": can_transform(G),
        "can_scale": can_scale(G),
        "has_noise": any(name.endswith("noise_strength") for name, _ in G.named_parameters()),
        "has_fp16": any(getattr(m, "use_fp16", False) for m in G.modules()),
        "layers": [{"name": layer.name, "shape": list(layer.shape), "dtype": layer.dtype} for layer in layers],
    }


def gen_images_command(path: str, view: View, G: torch.nn.Module) -> tuple[str | None, str | None]:
    """The gen_images.py command line that writes the pixels of `view`, or None and why there is none."""
    seeds = view.seeds()
    if len(seeds) != 1:
        return None, "the latent position lies between seeds (gen_images.py renders whole seeds); press snap"
    if view.mix_layers:
        return None, "style mixing has no gen_images.py option (style_mixing.py is issue 26)"
    if view.cutoff is not None and view.cutoff < G.num_ws:
        return None, "gen_images.py has no truncation cutoff"
    if view.noise_mode == "random":
        return None, "gen_images.py draws random noise unseeded; use const or none to reproduce"
    if view.force_fp32 and any(getattr(m, "use_fp16", False) for m in G.modules()):
        return None, "gen_images.py has no option to force float32"
    [(seed, _weight)] = seeds
    args = ["python", "gen_images.py", f"--network={path}", f"--seeds={seed}"]
    if view.psi != 1:
        args.append(f"--trunc={number(view.psi)}")
    if G.c_dim > 0:
        class_idx = view.class_idx
        if class_idx is None:  # Drawn from the seed after z, as the page does.
            rnd = np.random.RandomState(seed)
            rnd.randn(1, G.z_dim)
            class_idx = int(rnd.randint(G.c_dim))
        args.append(f"--class={class_idx}")
    if view.noise_mode != "const":
        args.append(f"--noise-mode={view.noise_mode}")
    if view.translate != (0.0, 0.0) or view.rotate_deg != 0:
        args += [
            f"--translate={number(view.translate[0])},{number(view.translate[1])}",
            f"--rotate={number(view.rotate_deg)}",
        ]
    if view.scale is not None:
        args.append(f"--scale={number(view.scale)}")
    args.append("--outdir=out")
    return shlex.join(args), None


def number(value: float) -> str:
    """A float as the shortest text that reads back as the same float ("0.7", "2", "-0.125")."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def seed_of(view: View) -> int:
    """The seed nearest the view's latent position."""
    return (round(view.x) + SEED_ROW * round(view.y)) % 2**32
