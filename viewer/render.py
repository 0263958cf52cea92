"""What the visualizer shows, computed: a `View` (every control of the page) checked against a generator, then
rendered into the image, the list of synthesis layers, the chosen layer's channels as an image with their
statistics, and those channels' power spectrum.

One rendering path with gen_images.py: at a whole-number latent position without style mixing, the image is
`G.synthesis(G.mapping(z, c, psi, cutoff), noise_mode=..., ...)` for that seed's z, which is what `G(z, c, ...)` in
gen_images.py computes, so the two give the same pixels.
"""

from __future__ import annotations

import dataclasses
import math
import time
import weakref

import numpy as np
import torch

from torch_utils import images
from torch_utils.alias_free import make_transform
from training.inference import can_scale, can_transform, gives_whole_pixels

SEED_ROW = 100  # The latent grid: the whole-number point (x, y) is seed x + SEED_ROW * y (the published layout).
NUM_SEEDS = 2**32  # Seeds are numpy's: 0 .. 2**32 - 1; positions off that range wrap around.
NOISE_MODES = ("const", "random", "none")
PSI_RANGE = (-1.0, 2.0)


class ViewError(ValueError):
    """A control's value that is out of range or that the network cannot honour; the message names the control."""


@dataclasses.dataclass(frozen=True)
class View:
    """Every control of the page that changes what is rendered. Defaults show seed 0 as gen_images.py does."""

    x: float = 0.0  # Latent position: between whole numbers, W blends the four neighbouring seeds bilinearly.
    y: float = 0.0
    psi: float = 1.0  # Truncation psi, in PSI_RANGE.
    cutoff: int | None = None  # Truncate only the first `cutoff` ws; None: all of them.
    class_idx: int | None = None  # Conditional networks: None draws each seed's class from the seed (published).
    noise_mode: str = "const"  # One of NOISE_MODES.
    noise_seed: int = 0  # With noise_mode "random": torch is seeded with this before the synthesis.
    mix_seed: int = 0  # Style mixing: the ws indices in `mix_layers` come from this seed.
    mix_layers: tuple[int, ...] = ()
    translate: tuple[float, float] = (0.0, 0.0)  # StyleGAN3: shift, in image widths.
    rotate_deg: float = 0.0  # StyleGAN3: rotation, in degrees.
    scale: float | None = None  # CREPS: render at this multiple of the training resolution; None: 1.
    force_fp32: bool = False  # Compute the float16 blocks in float32.
    layer: str | None = None  # The synthesis layer whose output to show (a name from `layers`); None: none.
    channels: tuple[int, ...] = (0,)  # Its channels to show: one (grey) or three (RGB).
    normalize: bool = True  # Divide each shown channel by its largest magnitude before the gain.
    gain_db: float = 0.0  # Brightness of the layer view, in dB (20 log10 of the factor).
    fft_beta: float = 8.0  # Kaiser window's beta for the spectrum.
    fft_range_db: float = 50.0  # The spectrum's range below its peak, in dB, shown from black to white.

    def seeds(self) -> list[tuple[int, float]]:
        """The seeds the latent position blends, with their weights (summing to 1; zero weights left out)."""
        x0, y0 = math.floor(self.x), math.floor(self.y)
        fx, fy = self.x - x0, self.y - y0
        corners = [(0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)]
        return [((x0 + dx + SEED_ROW * (y0 + dy)) % NUM_SEEDS, w) for dx, dy, w in corners if w > 0]

    def check(self, G: torch.nn.Module) -> None:
        """Raise ViewError for a value out of range or one that `G` cannot honour, naming the control."""
        numbers = {
            "x": self.x,
            "y": self.y,
            "psi": self.psi,
            "translate x": self.translate[0],
            "translate y": self.translate[1],
            "rotate": self.rotate_deg,
            "gain": self.gain_db,
            "spectrum beta": self.fft_beta,
            "spectrum range": self.fft_range_db,
        }
        for name, value in numbers.items():
            if not math.isfinite(value):
                raise ViewError(f"{name}: {value} is not a finite number")
        if not PSI_RANGE[0] <= self.psi <= PSI_RANGE[1]:
            raise ViewError(f"psi: {self.psi:g} is outside {PSI_RANGE[0]:g}..{PSI_RANGE[1]:g}")
        if self.cutoff is not None and not 0 <= self.cutoff <= G.num_ws:
            raise ViewError(f"cutoff: {self.cutoff} is outside 0..{G.num_ws} (the network has {G.num_ws} ws)")
        if self.class_idx is not None and G.c_dim == 0:
            raise ViewError(f"class: {self.class_idx}, but the network is unconditional (it has no classes)")
        if self.class_idx is not None and not 0 <= self.class_idx < G.c_dim:
            raise ViewError(f"class: {self.class_idx} is outside the network's classes 0..{G.c_dim - 1}")
        if self.noise_mode not in NOISE_MODES:
            raise ViewError(f"noise mode: {self.noise_mode!r} is not one of {', '.join(NOISE_MODES)}")
        for name, seed in (("noise seed", self.noise_seed), ("mix seed", self.mix_seed)):
            if not 0 <= seed < NUM_SEEDS:
                raise ViewError(f"{name}: {seed} is outside 0..{NUM_SEEDS - 1}")
        if any(not 0 <= i < G.num_ws for i in self.mix_layers):
            raise ViewError(f"style mixing: ws indices {list(self.mix_layers)}, but the network has 0..{G.num_ws - 1}")
        if (self.translate != (0.0, 0.0) or self.rotate_deg != 0) and not can_transform(G):
            raise ViewError("translate and rotate need a StyleGAN3 network (one with an input transform)")
        if self.scale is not None:
            check_scale(G, self.scale)
        if len(self.channels) not in (1, 3):
            raise ViewError(f"channels: show one channel or three (as RGB), not {len(self.channels)}")
        if self.fft_beta < 0 or self.fft_range_db <= 0:
            raise ViewError("spectrum: beta must be at least 0 and the range above 0 dB")


def check_scale(G: torch.nn.Module, scale: float) -> None:
    """Raise ViewError unless G renders at any size and `scale` gives whole pixels (as gen_images.py --scale)."""
    if not can_scale(G):
        raise ViewError("scale: needs a network that renders at any resolution (CREPS)")
    if not gives_whole_pixels(G, scale):
        raise ViewError(
            f"scale: {scale:g} gives {scale * G.img_resolution:g} pixels at the training resolution "
            f"{G.img_resolution}; pick a multiple of 1/{G.img_resolution}"
        )


@dataclasses.dataclass
class Layer:
    """One synthesis layer's output: its name (the module's, ":i" for the i-th of several outputs), shape and
    dtype, for the first image of the batch."""

    name: str
    shape: tuple[int, ...]  # [C, H, W]
    dtype: str


@dataclasses.dataclass
class Rendering:
    """What one View gave."""

    image: np.ndarray  # uint8 [H, W, C], the generator's output as gen_images.py writes it.
    layers: list[Layer]  # Every synthesis layer, in the order they ran.
    layer_image: np.ndarray | None  # uint8 [H, W, 1 or 3]: the chosen layer's channels; None without a layer.
    spectrum_image: np.ndarray | None  # uint8 [H, W, 1]: their power spectrum in dB, centred; None without a layer.
    stats: dict[str, float]  # mean / std / max of the chosen layer: all channels, and the shown ones.
    render_sec: float  # Mapping and synthesis.
    total_sec: float  # Everything.


class Renderer:
    """Renders Views with one generator (kept on `device`, in eval mode, with gradients off)."""

    def __init__(self, G: torch.nn.Module, device: torch.device):
        self.G = G.eval().requires_grad_(False).to(device)
        self.device = device
        self._transform = G.synthesis.input.transform.clone() if can_transform(G) else None

    def ws(self, view: View) -> torch.Tensor:
        """The intermediate latents of the view: the seeds' blend, with the mixed indices from the mix seed.

        A single seed with weight 1 gives that seed's ws themselves, not a blend, so the pixels equal
        gen_images.py's.
        """
        G = self.G
        parts = [(self._seed_ws(seed, view), weight) for seed, weight in view.seeds()]
        ws = parts[0][0] if len(parts) == 1 else sum(w * part for part, w in parts)  # [1, num_ws, w_dim]
        if view.mix_layers:
            mixed = list(view.mix_layers)
            ws = ws.clone()
            ws[:, mixed] = self._seed_ws(view.mix_seed, view)[:, mixed]
        assert ws.shape == (1, G.num_ws, G.w_dim)
        return ws

    def _seed_ws(self, seed: int, view: View) -> torch.Tensor:
        """One seed's ws [1, num_ws, w_dim]: its z (numpy's RandomState(seed), as gen_images.py draws it) and class."""
        G = self.G
        rnd = np.random.RandomState(seed)
        z = torch.from_numpy(rnd.randn(1, G.z_dim)).to(self.device)
        c = torch.zeros([1, G.c_dim], device=self.device)
        if G.c_dim > 0:
            # Without a chosen class, the seed's next draw picks one, as the published visualizer does.
            c[0, view.class_idx if view.class_idx is not None else rnd.randint(G.c_dim)] = 1
        return G.mapping(z, c, truncation_psi=view.psi, truncation_cutoff=view.cutoff)

    def render(self, view: View) -> Rendering:
        """Render `view` (checked first: ViewError names a control the network cannot honour)."""
        start = time.perf_counter()
        G = self.G
        view.check(G)
        if self._transform is not None:
            if view.translate == (0.0, 0.0) and view.rotate_deg == 0:
                G.synthesis.input.transform.copy_(self._transform)  # The network's own, as gen_images.py leaves it.
            else:
                G.synthesis.set_input_transform(make_transform(view.translate, view.rotate_deg))
        kwargs = dict(noise_mode=view.noise_mode, force_fp32=view.force_fp32)
        if view.scale is not None:
            kwargs["scale"] = view.scale
        with LayerTap(G.synthesis, keep=view.layer) as tap, torch.no_grad():
            with torch.random.fork_rng(devices=self._cuda_devices()):
                torch.manual_seed(view.noise_seed)  # Used by noise_mode "random" only.
                img = G.synthesis(self.ws(view), **kwargs)  # [1, C, H, W]
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        render_sec = time.perf_counter() - start
        image = images.to_uint8(img)[0].permute(1, 2, 0).cpu().numpy()
        if view.layer is not None and view.layer not in tap.kept:
            raise ViewError(f"layer: {view.layer!r} is not a synthesis layer of this network")
        layer_image = spectrum_image = None
        stats: dict[str, float] = {}
        if view.layer is not None:
            x = tap.kept[view.layer][0].to(torch.float32).cpu()  # [C, H, W]
            if any(not 0 <= c < x.shape[0] for c in view.channels):
                raise ViewError(f"channels: {list(view.channels)}, but {view.layer} has channels 0..{x.shape[0] - 1}")
            shown = x[list(view.channels)]
            stats = channel_stats(x, shown)
            layer_image = channel_image(shown, view.normalize, view.gain_db)
            spectrum_image = spectrum_db_image(shown, view.fft_beta, view.fft_range_db)
        return Rendering(
            image=image,
            layers=tap.layers,
            layer_image=layer_image,
            spectrum_image=spectrum_image,
            stats=stats,
            render_sec=render_sec,
            total_sec=time.perf_counter() - start,
        )

    def _cuda_devices(self) -> list[int]:
        return [self.device.index or 0] if self.device.type == "cuda" else []


class LayerTap:
    """While inside: every 4-D output of the synthesis network's layers (its children and theirs) is listed in
    `layers`, in the order they ran, and the output named `keep` is kept in `kept`."""

    def __init__(self, synthesis: torch.nn.Module, keep: str | None):
        self.synthesis = synthesis
        self.keep = keep
        self.layers: list[Layer] = []
        self.kept: dict[str, torch.Tensor] = {}
        self._seen: dict[int, weakref.ref] = {}  # Outputs listed so far, by id (weak: freed ones may reuse ids).
        self._hooks: list = []

    def __enter__(self) -> LayerTap:
        for name, module in self.synthesis.named_modules():
            if name and name.count(".") <= 1:
                self._hooks.append(module.register_forward_hook(self._recorder(name)))
        return self

    def __exit__(self, *exc_info) -> None:
        for hook in self._hooks:
            hook.remove()

    def _recorder(self, name: str):
        def record(_module, _inputs, outputs) -> None:
            tensors = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
            tensors = [t for t in tensors if isinstance(t, torch.Tensor) and t.ndim == 4]
            for i, tensor in enumerate(tensors):
                seen = self._seen.get(id(tensor))
                if seen is not None and seen() is tensor:  # A block passing on its last layer's output: listed once.
                    continue
                self._seen[id(tensor)] = weakref.ref(tensor)
                full = f"{name}:{i}" if len(tensors) > 1 else name
                self.layers.append(Layer(full, tuple(tensor.shape[1:]), str(tensor.dtype).removeprefix("torch.")))
                if full == self.keep:
                    self.kept[full] = tensor.detach()

        return record


def channel_stats(x: torch.Tensor, shown: torch.Tensor) -> dict[str, float]:
    """Mean, standard deviation and largest magnitude of a layer's output [C, H, W] and of its shown channels."""
    return {
        "mean": float(x.mean()),
        "std": float(x.std()) if x.numel() > 1 else 0.0,
        "max": float(x.abs().max()),
        "shown_mean": float(shown.mean()),
        "shown_std": float(shown.std()) if shown.numel() > 1 else 0.0,
        "shown_max": float(shown.abs().max()),
    }


def channel_image(shown: torch.Tensor, normalize: bool, gain_db: float) -> np.ndarray:
    """Channels [1 or 3, H, W] -> uint8 [H, W, 1 or 3]: each divided by its largest magnitude when `normalize`,
    times the gain, then mapped from [-1, 1] as the generator's images are."""
    if normalize:
        shown = shown / shown.abs().amax(dim=(1, 2), keepdim=True).clamp(min=1e-8)
    shown = shown * 10 ** (gain_db / 20)
    return images.to_uint8(shown[None])[0].permute(1, 2, 0).numpy()


def spectrum_db_image(shown: torch.Tensor, beta: float, range_db: float) -> np.ndarray:
    """The power spectrum of channels [C, H, W], averaged over them: each channel's mean removed, multiplied by a
    2-D Kaiser window (`beta`), |FFT|^2 with the zero frequency at the centre, in dB below its peak; the range
    [-range_db, 0] dB shown from black to white. uint8 [H, W, 1]."""
    x = shown.to(torch.float64)
    x = x - x.mean(dim=(1, 2), keepdim=True)
    h, w = x.shape[1:]
    window = torch.from_numpy(np.outer(np.kaiser(h, beta), np.kaiser(w, beta)))  # [H, W]
    power = torch.fft.fftshift(torch.fft.fft2(x * window).abs().square().mean(dim=0))  # [H, W]
    db = 10 * torch.log10(power / power.max().clamp(min=1e-30) + 1e-30)
    level = ((db + range_db) / range_db).clamp(0, 1)
    return (level * 255 + 0.5).to(torch.uint8)[:, :, None].numpy()
