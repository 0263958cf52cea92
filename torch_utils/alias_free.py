"""The pure math of alias-free generation (Karras et al. 2021, "Alias-free generative adversarial networks"): the
low-pass filters of StyleGAN3's layers and of the equivariance metrics, and the image transforms its input takes.
"""

from __future__ import annotations

import numpy as np
import scipy.signal
import scipy.special
import torch


def design_lowpass_filter(
    numtaps: int, cutoff: float, width: float, fs: float, radial: bool = False
) -> torch.Tensor | None:
    """A Kaiser-windowed low-pass filter (Appendix C.1), or None for a single tap (the identity).

    Args:
        numtaps: Filter length in samples.
        cutoff:  Cutoff frequency f_c, in the same units as fs.
        width:   Transition band width, 2 * f_h.
        fs:      Sampling rate.
        radial:  A radially symmetric 2-D filter (a windowed jinc), for StyleGAN3-R; else a separable 1-D one.

    Returns:
        float32 [numtaps] (separable) or [numtaps, numtaps] (radial), summing to 1; None when numtaps == 1.
    """
    assert numtaps >= 1, "numtaps must be positive"
    if numtaps == 1:
        return None
    if not radial:
        taps = scipy.signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs)
        return torch.as_tensor(taps, dtype=torch.float32)
    # Jinc: the 2-D Fourier transform of a disc of radius `cutoff` (Appendix C.1, Eq. 13), windowed by a Kaiser
    # window in each axis whose attenuation matches the transition band.
    taps = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(*np.meshgrid(taps, taps))
    with np.errstate(invalid="ignore", divide="ignore"):
        f = scipy.special.j1(2 * np.pi * cutoff * r) / (np.pi * r)
    f[r == 0] = cutoff  # The limit of j1(2 pi c r) / (pi r) as r -> 0.
    beta = scipy.signal.kaiser_beta(scipy.signal.kaiser_atten(numtaps, width / (fs / 2)))
    window = np.kaiser(numtaps, beta)
    f = f * np.outer(window, window)
    return torch.as_tensor(f / f.sum(), dtype=torch.float32)


def make_transform(translate: tuple[float, float] = (0, 0), angle_deg: float = 0) -> np.ndarray:
    """The 3x3 matrix that rotates an image by `angle_deg` and then translates it by `translate` (in image widths).

    StyleGAN3's `G.synthesis.set_input_transform(matrix)` renders images transformed by it.
    """
    s, c = np.sin(np.radians(angle_deg)), np.cos(np.radians(angle_deg))
    return np.array([[c, s, translate[0]], [-s, c, translate[1]], [0, 0, 1]], dtype=np.float64)
