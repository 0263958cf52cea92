"""Differentiable augmentation of the images D sees (ADA), and the controller that tunes its probability p.

Per "Training Generative Adversarial Networks with Limited Data" (Karras et al., NeurIPS 2020): every image D
sees, real or generated, goes through the same pipeline of 18 transforms in six categories (Appendix B):
pixel blitting, general geometric transforms, color transforms, image-space filtering, additive noise and
cutout. Each transform fires independently per image with probability p times its category weight, so that for
p < ~0.8 the augmentations do not leak into the generated images (Section 2.2). All ops are differentiable with
respect to the images, so G's gradients pass through the pipeline. `AdaController` raises or lowers p from the
sign of D's outputs on reals (Section 3), and keeps those signs until it uses them.

Coordinates: x points right and y down, in pixels, with the origin at the image centre ((W-1)/2, (H-1)/2). The
3x3 matrices below say where content moves (source -> destination); the resamplers use their inverses.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from torch_utils import distributed
from torch_utils.ops import upfirdn2d

# ----------------------------------------------------------------------------
# Wavelet coefficients (low-pass decomposition filters, as published, e.g. in PyWavelets).

SYM2 = (-0.12940952255092145, 0.22414386804185735, 0.836516303737469, 0.48296291314469025)
SYM6 = (
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148,
)  # fmt: skip

# Expected share of an image's power in each of the 4 filtering bands, lowest first (Appendix B.4).
IMGFILTER_POWER_SHARES = (10 / 13, 1 / 13, 1 / 13, 1 / 13)

# ----------------------------------------------------------------------------
# The published augmentation sets (`--augpipe`): constructor keyword arguments, each category with weight 1.

_BLIT = dict(xflip=1, rotate90=1, xint=1)
_GEOM = dict(scale=1, rotate=1, aniso=1, xfrac=1)
_COLOR = dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
_FILTER = dict(imgfilter=1)
_NOISE = dict(noise=1)
_CUTOUT = dict(cutout=1)

AUGMENT_PRESETS: dict[str, dict[str, float]] = {
    "blit": _BLIT,
    "geom": _GEOM,
    "color": _COLOR,
    "filter": _FILTER,
    "noise": _NOISE,
    "cutout": _CUTOUT,
    "bg": {**_BLIT, **_GEOM},
    "bgc": {**_BLIT, **_GEOM, **_COLOR},  # The training default (Section 2.3: what helps on limited data).
    "bgcf": {**_BLIT, **_GEOM, **_COLOR, **_FILTER},
    "bgcfn": {**_BLIT, **_GEOM, **_COLOR, **_FILTER, **_NOISE},
    "bgcfnc": {**_BLIT, **_GEOM, **_COLOR, **_FILTER, **_NOISE, **_CUTOUT},
}
DEFAULT_PRESET = "bgc"

# ----------------------------------------------------------------------------
# Per-image matrices, built from [N] tensors or Python numbers.


def _batch_matrix(rows: list[list[torch.Tensor | float]], batch_size: int, device: torch.device) -> torch.Tensor:
    """Stack per-image entries (each [N] or a number) into a batch of matrices [N, len(rows), len(rows[0])]."""
    entries = [
        torch.as_tensor(e, dtype=torch.float32, device=device).expand(batch_size) for row in rows for e in row
    ]  # each [N]
    return torch.stack(entries, dim=1).reshape(batch_size, len(rows), len(rows[0]))


def _translate2d(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """[N, 3, 3] matrices that move content by (tx, ty) pixels."""
    return _batch_matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], tx.shape[0], tx.device)


def _scale2d(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    """[N, 3, 3] matrices that scale x by sx and y by sy about the image centre."""
    return _batch_matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], sx.shape[0], sx.device)


def _rotate2d(theta: torch.Tensor) -> torch.Tensor:
    """[N, 3, 3] matrices that rotate by theta radians about the centre; with y down, positive is clockwise."""
    c, s = theta.cos(), theta.sin()
    return _batch_matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]], theta.shape[0], theta.device)


def _color_affine(linear: torch.Tensor, offset: torch.Tensor | float = 0.0) -> torch.Tensor:
    """[N, 4, 4] homogeneous color matrices from a linear part [N, 3, 3] and an offset ([N] or a number)."""
    n = linear.shape[0]
    offset = torch.as_tensor(offset, dtype=torch.float32, device=linear.device).expand(n)  # [N]
    top = torch.cat([linear, offset[:, None, None].expand(n, 3, 1)], dim=2)  # [N, 3, 4]
    bottom = torch.tensor([0, 0, 0, 1], dtype=torch.float32, device=linear.device).expand(n, 1, 4)  # [N, 1, 4]
    return torch.cat([top, bottom], dim=1)


# ----------------------------------------------------------------------------
# Random draws.


class _Draws:
    """Per-image draws from the augmentation distributions, or one fixed percentile of each (debug mode).

    Every draw is the distribution's quantile function applied to a uniform number u; debug mode fixes u to the
    given percentile, so the result is deterministic, and opens every gate whose probability is non-zero.
    """

    def __init__(self, batch_size: int, device: torch.device, percentile: torch.Tensor | None):
        self.n = batch_size
        self.device = device
        self.percentile = percentile  # 0-D float32 tensor on `device`, or None for random draws

    def uniform(self, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        """U(low, high), [N]."""
        if self.percentile is None:
            u = torch.rand([self.n], device=self.device)
        else:
            u = self.percentile.expand(self.n)
        return low + (high - low) * u

    def normal(self, std: float) -> torch.Tensor:
        """N(0, std^2), [N]. Percentiles 0 and 1 give -inf and +inf."""
        if self.percentile is None:
            z = torch.randn([self.n], device=self.device)
        else:
            z = (torch.erfinv(2 * self.percentile - 1) * math.sqrt(2)).expand(self.n)
        return z * std

    def log2_normal(self, std: float) -> torch.Tensor:
        """2^N(0, std^2), the log-normal factor of the scale, contrast and filter gains, [N]."""
        return torch.exp2(self.normal(std))

    def integer(self, count: int) -> torch.Tensor:
        """Uniform over {0, ..., count-1}, as float32 [N]."""
        return torch.floor(self.uniform() * count).clamp(max=count - 1)

    def gate(self, prob: torch.Tensor) -> torch.Tensor:
        """Bernoulli(prob) as bool [N]; prob is a 0-D tensor, so no host sync. Debug mode: open iff prob > 0."""
        if self.percentile is None:
            return torch.rand([self.n], device=self.device) < prob
        return (prob > 0).expand(self.n)


# ----------------------------------------------------------------------------
# Resampling helpers.


def _reflect(i: torch.Tensor, size: int) -> torch.Tensor:
    """Fold indices or coordinates into [0, size-1] by mirroring about the first and last pixel centres.

    This is the symmetric extension of np.pad(mode='reflect') (the edge pixel is not repeated), to any distance.
    """
    if size == 1:
        return torch.zeros_like(i)
    period = 2 * (size - 1)
    return (size - 1) - (torch.remainder(i, period) - (size - 1)).abs()


def _reflect_pad(images: torch.Tensor, px: int, py: int) -> torch.Tensor:
    """Pad [N, C, H, W] images by reflection to [N, C, H+2py, W+2px], by any amount (F.pad needs pad < size)."""
    _, _, h, w = images.shape
    ix = _reflect(torch.arange(-px, w + px, device=images.device), w)  # [W+2px]
    iy = _reflect(torch.arange(-py, h + py, device=images.device), h)  # [H+2py]
    return images.index_select(3, ix).index_select(2, iy)


def _pixel_grid(h: int, w: int, device: torch.device) -> torch.Tensor:
    """Homogeneous centred coordinates (x, y, 1) of every pixel centre, [H, W, 3]."""
    y, x = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=device) - (h - 1) / 2,
        torch.arange(w, dtype=torch.float32, device=device) - (w - 1) / 2,
        indexing="ij",
    )
    return torch.stack([x, y, torch.ones_like(x)], dim=2)


def blit(images: torch.Tensor, inv_matrix: torch.Tensor) -> torch.Tensor:
    """Move whole pixels: output pixel q takes the input pixel nearest to inv_matrix @ q, reflected at the borders.

    Exact (a gather, no interpolation) when inv_matrix maps pixel centres to pixel centres, as the compositions of
    x-flips, multiples of 90 degrees (square images) and integer translations do.

    Args:
        images:     [N, C, H, W].
        inv_matrix: [N, 3, 3], destination -> source in centred pixel coordinates.

    Returns:
        [N, C, H, W].
    """
    n, c, h, w = images.shape
    grid = _pixel_grid(h, w, images.device).reshape(h * w, 3)  # [H*W, 3]
    src = torch.einsum("nij,pj->npi", inv_matrix[:, :2, :], grid)  # [N, H*W, 2], centred source coordinates
    sx = _reflect(torch.round(src[..., 0] + (w - 1) / 2).long(), w)  # [N, H*W]
    sy = _reflect(torch.round(src[..., 1] + (h - 1) / 2).long(), h)  # [N, H*W]
    index = (sy * w + sx)[:, None, :].expand(n, c, h * w)  # [N, C, H*W]
    return images.reshape(n, c, h * w).gather(2, index).reshape(n, c, h, w)


def resample(images: torch.Tensor, inv_matrix: torch.Tensor, filt: torch.Tensor, filt_centroid: float) -> torch.Tensor:
    """Apply a per-image affine transform with little aliasing: upsample 2x, bilinear-sample, downsample 2x.

    Appendix B.2: bilinear sampling of a 2x-upsampled image, with wavelet low-pass filters before and after,
    keeps the transform from creating aliases D could spot. The image is extended by reflection without limit
    (source coordinates are folded back into the image, `_reflect`), so no padding depends on the transform
    and no host sync is needed. The filter need not be symmetric: its delay (centroid) is compensated for in
    the sampling coordinates, so an identity transform reproduces a band-limited image in place.

    Args:
        images:        [N, C, H, W].
        inv_matrix:    [N, 3, 3], destination -> source in centred pixel coordinates.
        filt:          1-D low-pass filter from setup_filter (normalized to sum 1), used for both resamplings.
        filt_centroid: sum(k * filt[k]), the filter's delay in taps.

    Returns:
        [N, C, H, W].
    """
    n, _, h, w = images.shape
    taps = filt.shape[0]

    # Upsample a reflection-padded copy with full convolution padding. For a linear signal, the 2x sample m then
    # sits at input coordinate (m - filt_centroid) / 2 - pad (the filter reproduces polynomials). `pad` keeps the
    # zeros beyond the copy's edge (up to taps/4 input pixels deep) away from the samples bilinear reads.
    pad = taps // 4 + 2
    up = upfirdn2d.upfirdn2d(_reflect_pad(images, pad, pad), filt, up=2, padding=taps - 1, gain=4)  # [N, C, U, V]

    # The output's 2x grid has taps-2 extra samples so that the valid-mode downsampling below returns exactly
    # [H, W]; output pixel r comes from grid samples centred on grid index 2r + (taps - 1 - filt_centroid).
    def out_coords(size: int) -> torch.Tensor:
        i = torch.arange(2 * size + taps - 2, dtype=torch.float32, device=images.device)
        return (i - (taps - 1 - filt_centroid)) / 2 - (size - 1) / 2  # centred input-pixel coordinates

    gy, gx = torch.meshgrid(out_coords(h), out_coords(w), indexing="ij")  # [Ho, Wo] each
    grid = torch.stack([gx, gy, torch.ones_like(gx)], dim=2)  # [Ho, Wo, 3]
    src = torch.einsum("nij,hwj->nhwi", inv_matrix[:, :2, :], grid)  # [N, Ho, Wo, 2]
    sx = _reflect(src[..., 0] + (w - 1) / 2, w)  # [N, Ho, Wo], input pixel coordinates
    sy = _reflect(src[..., 1] + (h - 1) / 2, h)

    # Input coordinate -> index into `up` -> grid_sample's [-1, 1] range (align_corners=False: index i is at
    # (2i + 1) / size - 1).
    ux = 2 * (sx + pad) + filt_centroid
    uy = 2 * (sy + pad) + filt_centroid
    norm = torch.stack([(2 * ux + 1) / up.shape[3] - 1, (2 * uy + 1) / up.shape[2] - 1], dim=3)  # [N, Ho, Wo, 2]
    sampled = F.grid_sample(up, norm, mode="bilinear", padding_mode="zeros", align_corners=False)  # [N, C, Ho, Wo]
    return upfirdn2d.upfirdn2d(sampled, filt, down=2)  # [N, C, H, W]


def make_band_filters() -> np.ndarray:
    """The 4 zero-phase band-pass filters of image-space filtering, which sum to the identity; [4, 43] float64.

    Built from the Symlet-2 wavelet: its low-pass filter's autocorrelation is a zero-phase half-band filter
    P (the 7-tap [-1, 0, 9, 16, 9, 0, -1] / 32) with P(0) = 1 and P(1/2 cycle/pixel) = 0. Dilating it by 1, 2
    and 4 and cascading gives low-pass filters L1 = P, L2 = L1 * P(2x), L3 = L2 * P(4x) cut at about 1/4, 1/8
    and 1/16 cycles/pixel; the bands are L3, L2 - L3, L1 - L2 and 1 - L1 ([0, 1/16], [1/16, 1/8], [1/8, 1/4],
    [1/4, 1/2] cycles/pixel).
    """
    lowpass = np.asarray(SYM2) / np.sum(SYM2)
    halfband = np.convolve(lowpass, lowpass[::-1])  # [7], symmetric

    def dilate(f: np.ndarray, factor: int) -> np.ndarray:
        """Insert factor - 1 zeros between taps (the filter at `factor` times lower frequencies)."""
        out = np.zeros((len(f) - 1) * factor + 1)
        out[::factor] = f
        return out

    cascade = [np.ones(1)]  # identity, L1, L2, L3
    for factor in (1, 2, 4):
        cascade.append(np.convolve(cascade[-1], dilate(halfband, factor)))
    taps = len(cascade[-1])
    centred = [np.pad(f, (taps - len(f)) // 2) for f in cascade]  # all [taps], centred (odd lengths)
    return np.stack([centred[3], centred[2] - centred[3], centred[1] - centred[2], centred[0] - centred[1]])


def filter_separable(images: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Filter each image with its own symmetric 1-D filter along x, then along y, reflecting at the borders.

    Args:
        images:  [N, C, H, W].
        filters: [N, taps], odd taps, symmetric (so convolution and correlation agree).

    Returns:
        [N, C, H, W].
    """
    n, c, h, w = images.shape
    taps = filters.shape[1]
    x = _reflect_pad(images, taps // 2, taps // 2).reshape(1, n * c, h + taps - 1, w + taps - 1)
    weight = filters[:, None, :].expand(n, c, taps).reshape(n * c, 1, 1, taps)  # one filter per (image, channel)
    x = F.conv2d(x, weight, groups=n * c)  # [1, N*C, H+taps-1, W]
    x = F.conv2d(x, weight.transpose(2, 3), groups=n * c)  # [1, N*C, H, W]
    return x.reshape(n, c, h, w)


# ----------------------------------------------------------------------------


class AugmentPipe(torch.nn.Module):
    """The ADA augmentation pipeline: 18 per-image random transforms, each with probability p times its weight."""

    def __init__(
        self,
        xflip: float = 0,
        rotate90: float = 0,
        xint: float = 0,
        xint_max: float = 0.125,
        scale: float = 0,
        rotate: float = 0,
        aniso: float = 0,
        xfrac: float = 0,
        scale_std: float = 0.2,
        rotate_max: float = 1,
        aniso_std: float = 0.2,
        xfrac_std: float = 0.125,
        brightness: float = 0,
        contrast: float = 0,
        lumaflip: float = 0,
        hue: float = 0,
        saturation: float = 0,
        brightness_std: float = 0.2,
        contrast_std: float = 0.5,
        hue_max: float = 1,
        saturation_std: float = 1,
        imgfilter: float = 0,
        imgfilter_bands: tuple[float, float, float, float] = (1, 1, 1, 1),
        imgfilter_std: float = 1,
        noise: float = 0,
        cutout: float = 0,
        noise_std: float = 0.1,
        cutout_size: float = 0.5,
    ):
        """
        Args:
            xflip:          Weight of horizontal flips (mirror with probability 1/2 when it fires).
            rotate90:       Weight of rotations by a uniform multiple of 90 degrees (square images only).
            xint:           Weight of integer translations, reflecting at the borders.
            xint_max:       Integer translation range, in image sizes: U(-xint_max, xint_max), rounded to pixels.
            scale:          Weight of isotropic scaling by 2^N(0, scale_std^2).
            rotate:         Weight of arbitrary rotations; fires a pre- and a post-rotation, each with probability
                            1 - sqrt(1 - p * rotate), so that at least one fires with probability p * rotate.
            aniso:          Weight of anisotropic scaling: x by 2^N(0, aniso_std^2), y by its inverse.
            xfrac:          Weight of fractional translations by N(0, xfrac_std^2) image sizes in x and y.
            scale_std:      Std of log2 of the isotropic scale.
            rotate_max:     Rotation range, in half turns: U(-rotate_max * pi, rotate_max * pi).
            aniso_std:      Std of log2 of the anisotropic scale.
            xfrac_std:      Std of the fractional translation, in image sizes.
            brightness:     Weight of adding N(0, brightness_std^2) to every channel.
            contrast:       Weight of multiplying the colors by 2^N(0, contrast_std^2).
            lumaflip:       Weight of luma flips (negate luma, keep chroma, with probability 1/2 when it fires).
            hue:            Weight of hue rotations about the gray axis by U(-hue_max * pi, hue_max * pi).
            saturation:     Weight of scaling chroma by 2^N(0, saturation_std^2).
            brightness_std: Std of the brightness offset, in image units ([-1, 1] images).
            contrast_std:   Std of log2 of the contrast factor.
            hue_max:        Hue rotation range, in half turns.
            saturation_std: Std of log2 of the saturation factor.
            imgfilter:      Weight of amplifying or attenuating each frequency band.
            imgfilter_bands: Which of the 4 bands (lowest first) may change (1) or not (0).
            imgfilter_std:  Std of log2 of a band's gain.
            noise:          Weight of additive Gaussian noise.
            cutout:         Weight of cutout.
            noise_std:      The noise's std is |N(0, noise_std^2)|, in image units.
            cutout_size:    Side of the cutout square, in image sizes.
        """
        super().__init__()
        assert len(imgfilter_bands) == 4, f"imgfilter_bands needs one entry per band (4), got {imgfilter_bands!r}"
        self.register_buffer("p", torch.zeros([]))  # Probability multiplier, set by AdaController or --p.

        self.xflip, self.rotate90, self.xint, self.xint_max = float(xflip), float(rotate90), float(xint), xint_max
        self.scale, self.rotate, self.aniso, self.xfrac = float(scale), float(rotate), float(aniso), float(xfrac)
        self.scale_std, self.rotate_max, self.aniso_std, self.xfrac_std = scale_std, rotate_max, aniso_std, xfrac_std
        self.brightness, self.contrast, self.lumaflip = float(brightness), float(contrast), float(lumaflip)
        self.hue, self.saturation = float(hue), float(saturation)
        self.brightness_std, self.contrast_std = brightness_std, contrast_std
        self.hue_max, self.saturation_std = hue_max, saturation_std
        self.imgfilter, self.imgfilter_std = float(imgfilter), imgfilter_std
        self.imgfilter_bands = tuple(float(b) for b in imgfilter_bands)
        self.noise, self.cutout, self.noise_std, self.cutout_size = float(noise), float(cutout), noise_std, cutout_size

        # Constant filters: buffers so that .to(device) moves them, but not part of the state dict.
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(SYM6, separable=True), persistent=False)
        self.resample_filter_centroid = float(np.dot(np.arange(len(SYM6)), SYM6) / np.sum(SYM6))
        band_filters = torch.as_tensor(make_band_filters(), dtype=torch.float32)  # [4, taps]
        self.register_buffer("band_filters", band_filters, persistent=False)

    def extra_repr(self) -> str:
        """The non-zero category weights, for print(pipe)."""
        names = ["xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac", "brightness", "contrast"]
        names += ["lumaflip", "hue", "saturation", "imgfilter", "noise", "cutout"]
        return ", ".join(f"{name}={getattr(self, name):g}" for name in names if getattr(self, name) != 0)

    def forward(self, images: torch.Tensor, debug_percentile: torch.Tensor | float | None = None) -> torch.Tensor:
        """Augment a batch of images, each independently.

        Args:
            images:           [N, C, H, W] float32, C = 1 or 3, values about [-1, 1].
            debug_percentile: None for random augmentations. A number in [0, 1] replaces every random draw by
                              that percentile of its distribution and applies every op whose probability is
                              non-zero: a deterministic result, for tests and visualizations (the per-pixel
                              noise field of additive noise stays random).

        Returns:
            [N, C, H, W] float32, differentiable with respect to `images`.
        """
        assert isinstance(images, torch.Tensor) and images.ndim == 4, "images must be a [N, C, H, W] tensor"
        assert images.dtype == torch.float32, f"images must be float32, got {images.dtype}"
        n, c, h, w = images.shape
        assert c in (1, 3), f"images must have 1 or 3 channels, got {c}"
        device = images.device
        if debug_percentile is not None:
            debug_percentile = torch.as_tensor(debug_percentile, dtype=torch.float32, device=device)
        draws = _Draws(n, device, debug_percentile)
        x = images

        if self.xflip > 0 or self.rotate90 > 0 or self.xint > 0:
            x = self._blit(x, draws)
        if self.scale > 0 or self.rotate > 0 or self.aniso > 0 or self.xfrac > 0:
            x = self._geometric(x, draws)
        if self.brightness > 0 or self.contrast > 0 or self.lumaflip > 0 or self.hue > 0 or self.saturation > 0:
            x = self._color(x, draws)
        if self.imgfilter > 0 and any(self.imgfilter_bands):
            x = self._filter(x, draws)
        if self.noise > 0:
            x = self._noise(x, draws)
        if self.cutout > 0:
            x = self._cutout(x, draws)
        return x

    # Each category below draws its parameters, sets the identity where its gate stays closed, and applies them.

    def _blit(self, x: torch.Tensor, draws: _Draws) -> torch.Tensor:
        """x-flip, rotation by k * 90 degrees and integer translation, composed into one exact gather (B.1)."""
        n, _, h, w = x.shape
        inv = torch.eye(3, device=x.device).repeat(n, 1, 1)  # [N, 3, 3], destination -> source
        # The content transform is T @ R @ X; its inverse is built by appending each inverse on the right.
        if self.xflip > 0:
            flip = torch.where(draws.gate(self.p * self.xflip), draws.integer(2), 0)  # [N], 0 or 1
            inv = inv @ _scale2d(1 - 2 * flip, torch.ones_like(flip))
        if self.rotate90 > 0:
            assert h == w, f"rotate90 needs square images, got {h}x{w}"
            k = torch.where(draws.gate(self.p * self.rotate90), draws.integer(4), 0)  # [N], quarter turns
            inv = inv @ _rotate2d(-k * (math.pi / 2))
        if self.xint > 0:
            gate = draws.gate(self.p * self.xint)
            tx = torch.round(draws.uniform(-self.xint_max, self.xint_max) * w)
            ty = torch.round(draws.uniform(-self.xint_max, self.xint_max) * h)
            inv = inv @ _translate2d(torch.where(gate, -tx, 0), torch.where(gate, -ty, 0))
        return blit(x, inv)

    def _geometric(self, x: torch.Tensor, draws: _Draws) -> torch.Tensor:
        """Scale, pre-rotation, anisotropic scale, post-rotation and fractional translation in one resampling (B.2).

        Images whose gates all stayed closed are passed through untouched, so p = 0 is exactly the identity (the
        resampling filters alone would blur them slightly).
        """
        n, _, h, w = x.shape
        inv = torch.eye(3, device=x.device).repeat(n, 1, 1)  # [N, 3, 3], destination -> source
        active = torch.zeros([n], dtype=torch.bool, device=x.device)
        # Both rotations use this probability, so that P(at least one) = 1 - (1 - p_rot)^2 = p * rotate.
        p_rot = 1 - torch.sqrt(1 - (self.p * self.rotate).clamp(0, 1))

        def rotation() -> tuple[torch.Tensor, torch.Tensor]:
            """One rotation's gate [N] and inverse matrix [N, 3, 3]."""
            gate = draws.gate(p_rot)
            theta = draws.uniform(-self.rotate_max * math.pi, self.rotate_max * math.pi)
            return gate, _rotate2d(-torch.where(gate, theta, 0))

        if self.scale > 0:
            gate = draws.gate(self.p * self.scale)
            s = torch.where(gate, draws.log2_normal(self.scale_std), 1)
            inv, active = inv @ _scale2d(1 / s, 1 / s), active | gate
        if self.rotate > 0:
            gate, inv_rot = rotation()
            inv, active = inv @ inv_rot, active | gate
        if self.aniso > 0:
            gate = draws.gate(self.p * self.aniso)
            s = torch.where(gate, draws.log2_normal(self.aniso_std), 1)
            inv, active = inv @ _scale2d(1 / s, s), active | gate
        if self.rotate > 0:
            gate, inv_rot = rotation()
            inv, active = inv @ inv_rot, active | gate
        if self.xfrac > 0:
            gate = draws.gate(self.p * self.xfrac)
            tx = torch.where(gate, draws.normal(self.xfrac_std) * w, 0)
            ty = torch.where(gate, draws.normal(self.xfrac_std) * h, 0)
            inv, active = inv @ _translate2d(-tx, -ty), active | gate

        out = resample(x, inv, self.resample_filter, self.resample_filter_centroid)
        return torch.where(active[:, None, None, None], out, x)

    def _color(self, x: torch.Tensor, draws: _Draws) -> torch.Tensor:
        """Brightness, contrast, luma flip, hue rotation and saturation as one 4x4 matrix on (r, g, b, 1) (B.3)."""
        n, c, _, _ = x.shape
        dev = x.device
        v = torch.full([3], 1 / math.sqrt(3), device=dev)  # the luma (gray) axis
        vvt = torch.outer(v, v)  # [3, 3], projection onto the luma axis
        eye = torch.eye(3, device=dev)
        mat = torch.eye(4, device=dev).repeat(n, 1, 1)  # [N, 4, 4]; each op is multiplied on the left
        active = torch.zeros([n], dtype=torch.bool, device=dev)

        if self.brightness > 0:
            gate = draws.gate(self.p * self.brightness)
            b = torch.where(gate, draws.normal(self.brightness_std), 0)
            mat, active = _color_affine(eye.expand(n, 3, 3), b) @ mat, active | gate
        if self.contrast > 0:
            gate = draws.gate(self.p * self.contrast)
            s = torch.where(gate, draws.log2_normal(self.contrast_std), 1)
            mat, active = _color_affine(eye * s[:, None, None]) @ mat, active | gate
        if self.lumaflip > 0:
            # Householder reflection I - 2 v v^T: negates the luma component, keeps chroma.
            gate = draws.gate(self.p * self.lumaflip)
            flip = torch.where(gate, draws.integer(2), 0)
            mat, active = _color_affine(eye - 2 * vvt * flip[:, None, None]) @ mat, active | gate
        if self.hue > 0:
            # Rodrigues' rotation about v: cos(t) I + sin(t) [v]x + (1 - cos(t)) v v^T.
            gate = draws.gate(self.p * self.hue)
            theta = torch.where(gate, draws.uniform(-self.hue_max * math.pi, self.hue_max * math.pi), 0)
            cross = torch.tensor([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], dtype=torch.float32, device=dev) / math.sqrt(3)
            cos, sin = theta.cos()[:, None, None], theta.sin()[:, None, None]
            mat, active = _color_affine(cos * eye + sin * cross + (1 - cos) * vvt) @ mat, active | gate
        if self.saturation > 0:
            gate = draws.gate(self.p * self.saturation)
            s = torch.where(gate, draws.log2_normal(self.saturation_std), 1)
            mat, active = _color_affine(vvt + (eye - vvt) * s[:, None, None]) @ mat, active | gate

        if c == 3:
            out = torch.einsum("nij,njhw->nihw", mat[:, :3, :3], x) + mat[:, :3, 3, None, None]
        else:
            # Gray (g, g, g) maps to row sums times g plus the offset; keep the mean over the three channels.
            gain = mat[:, :3, :3].sum(dim=2).mean(dim=1)  # [N]
            offset = mat[:, :3, 3].mean(dim=1)  # [N]
            out = x * gain[:, None, None, None] + offset[:, None, None, None]
        return torch.where(active[:, None, None, None], out, x)

    def _filter(self, x: torch.Tensor, draws: _Draws) -> torch.Tensor:
        """Amplify or attenuate 4 frequency bands, keeping the expected image power (B.4)."""
        n = x.shape[0]
        gains = torch.ones([n, 4], device=x.device)
        active = torch.zeros([n], dtype=torch.bool, device=x.device)
        for band, enabled in enumerate(self.imgfilter_bands):
            if enabled:
                gate = draws.gate(self.p * self.imgfilter)
                gains[:, band] = torch.where(gate, draws.log2_normal(self.imgfilter_std), 1)
                active = active | gate
        # Renormalize so that an image with the expected power spectrum keeps its power: sum_i share_i g_i^2 = 1.
        shares = torch.tensor(IMGFILTER_POWER_SHARES, device=x.device)
        gains = gains / (gains.square() * shares).sum(dim=1, keepdim=True).sqrt()  # [N, 4]
        filters = gains @ self.band_filters  # [N, taps]
        return torch.where(active[:, None, None, None], filter_separable(x, filters), x)

    def _noise(self, x: torch.Tensor, draws: _Draws) -> torch.Tensor:
        """Add Gaussian noise with a per-image std |N(0, noise_std^2)| (B.5)."""
        gate = draws.gate(self.p * self.noise)
        sigma = torch.where(gate, draws.normal(self.noise_std).abs(), 0)  # [N]
        return x + torch.randn_like(x) * sigma[:, None, None, None]

    def _cutout(self, x: torch.Tensor, draws: _Draws) -> torch.Tensor:
        """Zero a square of side cutout_size * image size centred at a uniform point, clipped at the borders (B.5)."""
        _, _, h, w = x.shape
        gate = draws.gate(self.p * self.cutout)
        cx, cy = draws.uniform(), draws.uniform()  # [N], centre in image sizes
        px = (torch.arange(w, dtype=torch.float32, device=x.device) + 0.5) / w  # [W], pixel centres in image sizes
        py = (torch.arange(h, dtype=torch.float32, device=x.device) + 0.5) / h  # [H]
        inside_x = (px[None, :] - cx[:, None]).abs() < self.cutout_size / 2  # [N, W]
        inside_y = (py[None, :] - cy[:, None]).abs() < self.cutout_size / 2  # [N, H]
        cut = gate[:, None, None] & inside_y[:, :, None] & inside_x[:, None, :]  # [N, H, W]
        return x * (~cut)[:, None].to(x.dtype)


# ----------------------------------------------------------------------------


class AdaController:
    """Adaptive discriminator augmentation: steps p toward keeping r_t = E[sign(D(real))] at the target (Sec. 3).

    One object owns the whole rule: the loss hands it D's raw outputs on reals (`observe`), it keeps their signs
    until the next update, and the training loop calls `after_step` after every step, which every `interval` steps
    averages the pending signs over all ranks and moves p (`update`). p itself lives in the pipe's `p` buffer (saved
    with the pipe); this object's state is the settings, the number of updates and the pending signs.
    """

    def __init__(self, augment_pipe: AugmentPipe, target: float = 0.6, interval: int = 4, ada_kimg: float = 500):
        """
        Args:
            augment_pipe: The pipe whose `p` is adjusted; the pending signs live on the device of its `p`.
            target:       Target value of r_t; above it D overfits the reals, so p goes up.
            interval:     Training steps between updates.
            ada_kimg:     Thousands of images over which p can go from 0 to 1.
        """
        assert 0 <= target <= 1, f"target must be in [0, 1], got {target}"
        assert interval >= 1, f"interval must be at least 1, got {interval}"
        assert ada_kimg > 0, f"ada_kimg must be positive, got {ada_kimg}"
        self.augment_pipe = augment_pipe
        self.target = float(target)
        self.interval = int(interval)
        self.ada_kimg = float(ada_kimg)
        self.num_updates = 0
        # Signs of D's outputs on reals observed on this rank since the last update: [sum, count]. Kept on the device
        # and in float64, so observing never synchronizes with the host and the sums stay exact.
        self._real_signs = torch.zeros([2], dtype=torch.float64, device=augment_pipe.p.device)

    def observe(self, real_logits: torch.Tensor) -> None:
        """Count the signs of D's raw outputs on reals ([N, 1], any shape) toward the next update."""
        self._real_signs[0] += real_logits.detach().sign().sum().double()
        self._real_signs[1] += real_logits.numel()

    def after_step(self, step: int, batch_size: int) -> None:
        """Update p when `step`, the index of the training step just done, is a multiple of `interval`.

        Collective: every rank calls it after every step.

        Args:
            batch_size: Images per step, all ranks together.
        """
        if step % self.interval == 0:
            self.update(self.take_real_sign_mean(), batch_size)

    def take_real_sign_mean(self) -> float:
        """r_t: the mean sign of D on reals observed since the previous call, over all ranks; resets the counts.

        Collective: every rank must call it at the same step.
        """
        signs = distributed.all_reduce_sum(self._real_signs.clone())
        self._real_signs.zero_()
        return float(signs[0] / signs[1]) if signs[1] > 0 else 0.0

    def step_size(self, batch_size: int) -> float:
        """How much one update moves p: the images seen since the last update over ada_kimg thousand."""
        return batch_size * self.interval / (self.ada_kimg * 1000)

    def update(self, real_sign_mean: float, batch_size: int) -> float:
        """Move p by one step toward the target and return it.

        Args:
            real_sign_mean: E[sign(D(real))] over the last `interval` steps, all ranks.
            batch_size:     Images per step, all ranks together.

        Returns:
            The new p, as stored (float32).
        """
        real_sign_mean = float(real_sign_mean)
        assert math.isfinite(real_sign_mean), f"real_sign_mean must be finite, got {real_sign_mean}"
        direction = float(np.sign(real_sign_mean - self.target))
        p = float(self.augment_pipe.p)  # one host sync every `interval` steps; the sign mean needs one anyway
        p = min(max(p + direction * self.step_size(batch_size), 0.0), 1.0)
        self.augment_pipe.p.fill_(p)
        self.num_updates += 1
        return float(np.float32(p))

    def snapshot(self) -> torch.Tensor:
        """A copy of the pending signs on their device, for `restore`: what a phase redone by --batch-gpu=auto
        observed is undone without a device synchronization."""
        return self._real_signs.clone()

    def restore(self, saved: torch.Tensor) -> None:
        """Put back the pending signs that `snapshot` copied."""
        self._real_signs.copy_(saved)

    def gather_pending(self) -> None:
        """Move every rank's pending signs to rank 0, so that rank 0's state_dict holds them all.

        Collective: call on every rank right before rank 0 saves a training state. The next update's mean is the
        same, since it sums over ranks.
        """
        if distributed.is_distributed():
            distributed.all_reduce_sum(self._real_signs)
            if not distributed.is_main():
                self._real_signs.zero_()

    def state_dict(self) -> dict[str, Any]:
        """Settings, counter and the pending signs [sum, count] (float64, on the CPU); p is in the pipe's state."""
        return dict(
            target=self.target,
            interval=self.interval,
            ada_kimg=self.ada_kimg,
            num_updates=self.num_updates,
            real_signs=self._real_signs.cpu().clone(),
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict returned."""
        self.target = float(state["target"])
        self.interval = int(state["interval"])
        self.ada_kimg = float(state["ada_kimg"])
        self.num_updates = int(state["num_updates"])
        # The saved counts are all ranks' together (see gather_pending); rank 0 alone takes them back.
        signs = torch.as_tensor(state["real_signs"], dtype=torch.float64)
        self._real_signs.copy_(signs if distributed.is_main() else torch.zeros_like(signs))
