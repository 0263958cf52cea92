"""Upsample, leaky ReLU, downsample: the alias-suppressed nonlinearity of StyleGAN3 (Karras et al. 2021, Sec. 3.2).

The nonlinearity runs at a higher sampling rate so that the high frequencies it creates can be filtered out
before downsampling back. The reference path is composed of plain PyTorch ops, so first and second derivatives
come from autograd. `impl='cuda'` is accepted and runs the same reference path until a CUDA kernel lands.
"""

import math

import torch

from .bias_act import bias_act
from .upfirdn2d import IMPLS, Padding, _get_filter_size, upfirdn2d


def filtered_lrelu(
    x: torch.Tensor,
    fu: torch.Tensor | None = None,
    fd: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: Padding = 0,
    gain: float = math.sqrt(2),
    slope: float = 0.2,
    clamp: float | None = None,
    flip_filter: bool = False,
    impl: str = "cuda",
) -> torch.Tensor:
    """Add a bias, upsample, apply a leaky ReLU with gain and clamp, then downsample.

    Args:
        x:           Images [N, C, H, W], floating point.
        fu:          Upsampling filter from setup_filter (1-D or 2-D), or None for the identity filter.
        fd:          Downsampling filter from setup_filter (1-D or 2-D), or None for the identity filter.
        b:           Bias [C], or None.
        up:          Integer upsampling factor (1, 2, 4, ...).
        down:        Integer downsampling factor (1, 2, 4, ...).
        padding:     Padding applied after upsampling: int, (x, y) or (x_left, x_right, y_top, y_bottom).
        gain:        Scale applied after the leaky ReLU.
        slope:       Negative slope of the leaky ReLU.
        clamp:       Clamp the activations to [-clamp, clamp] (before downsampling), or None.
        flip_filter: Correlate with the filters instead of convolving.
        impl:        'ref' or 'cuda' (runs the reference path until a CUDA kernel lands).

    Returns:
        Tensor [N, C, out_h, out_w] with out_h = ((H*up + py0 + py1 - fu_h + 1) - fd_h) // down + 1
        (likewise out_w), x's dtype.
    """
    assert impl in IMPLS, f"impl must be one of {IMPLS}, got {impl!r}"
    return _filtered_lrelu_ref(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter)


def _filtered_lrelu_ref(
    x: torch.Tensor,
    fu: torch.Tensor | None,
    fd: torch.Tensor | None,
    b: torch.Tensor | None,
    up: int,
    down: int,
    padding: Padding,
    gain: float,
    slope: float,
    clamp: float | None,
    flip_filter: bool,
) -> torch.Tensor:
    """Pure-PyTorch filtered_lrelu; see filtered_lrelu for the arguments."""
    assert isinstance(x, torch.Tensor) and x.ndim == 4, "x must be a 4-D [N, C, H, W] tensor"
    assert isinstance(up, int) and up >= 1, f"up must be an int >= 1, got {up!r}"
    assert isinstance(down, int) and down >= 1, f"down must be an int >= 1, got {down!r}"
    _get_filter_size(fu)  # validates the filters early, with a clear message
    _get_filter_size(fd)

    x = bias_act(x, b, dim=1, impl="ref")
    # The zeros inserted by upsampling dilute the signal by up*up; the filter gain restores its level.
    x = upfirdn2d(x, fu, up=up, padding=padding, flip_filter=flip_filter, gain=up**2, impl="ref")
    x = bias_act(x, act="lrelu", alpha=slope, gain=gain, clamp=clamp, impl="ref")
    return upfirdn2d(x, fd, down=down, flip_filter=flip_filter, impl="ref")
