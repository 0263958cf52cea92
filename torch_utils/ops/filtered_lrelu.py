"""Upsample, leaky ReLU, downsample: the alias-suppressed nonlinearity of StyleGAN3 (Karras et al. 2021, Sec. 3.2).

The nonlinearity runs at a higher sampling rate so that the high frequencies it creates can be filtered out
before downsampling back. The reference path is composed of plain PyTorch ops, so first and second derivatives
come from autograd.

`impl='cuda'` runs the CUDA kernel (torch_utils/ops/cuda/filtered_lrelu.cu) when GANFORGE_CUDA_OPS=1 and x is on a
GPU, else the reference path; see torch_utils/custom_ops.py. The kernel never writes the upsampled signal to memory;
for the backward pass it keeps one byte per upsampled sample (negative, positive or clamped). Backward is the
upfirdn2d kernel run transposed through the downsampling filter, times the leaky ReLU's slope from that byte, then
transposed through the upsampling filter. It is linear in the incoming gradient and built from differentiable
ops, so double backward composes; the second derivative with respect to x is zero, as the leaky ReLU and the
clamp are piecewise linear.
"""

import math

import torch
import torch.nn.functional as F

from torch_utils import custom_ops

from .bias_act import bias_act
from .upfirdn2d import (
    IMPLS,
    Padding,
    _correlation_weights,
    _get_filter_size,
    _memory_format_of,
    _output_size,
    _parse_padding,
    _upfirdn2d_cuda,
    _upfirdn2d_ref,
)

_KERNEL_DTYPES = (torch.float16, torch.float32, torch.float64)
_MAX_SHARED_BYTES = 48 * 1024  # kFilteredLreluMaxShared in cuda/filtered_lrelu.h


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
        impl:        'ref', or 'cuda' for the CUDA kernel where enabled and available (else the reference path).

    Returns:
        Tensor [N, C, out_h, out_w] with out_h = ((H*up + py0 + py1 - fu_h + 1) - fd_h) // down + 1
        (likewise out_w), x's dtype.
    """
    assert impl in IMPLS, f"impl must be one of {IMPLS}, got {impl!r}"
    if impl == "cuda" and _kernel_applies(x, fu, fd, b, up, down, padding):
        return _filtered_lrelu_cuda(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter)
    return _filtered_lrelu_ref(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter)


def _check_args(x, fu, fd, up, down) -> None:
    """Check the arguments that filtered_lrelu itself (not bias_act or upfirdn2d) is responsible for."""
    assert isinstance(x, torch.Tensor) and x.ndim == 4, "x must be a 4-D [N, C, H, W] tensor"
    assert isinstance(up, int) and up >= 1, f"up must be an int >= 1, got {up!r}"
    assert isinstance(down, int) and down >= 1, f"down must be an int >= 1, got {down!r}"
    _get_filter_size(fu)  # validates the filters early, with a clear message
    _get_filter_size(fd)


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
    """Pure-PyTorch filtered_lrelu; see filtered_lrelu for the arguments. The result has x's memory format.

    The upsampled signal is the largest tensor of a StyleGAN3 layer, so the passes over it are kept few and
    cheap. On the CPU it is channels-last from the upsampling to the downsampling: mkldnn's depthwise (transposed)
    convolutions run several times faster in that layout, backward passes included, and only the small input and
    output are converted. A positive gain rides on the upsampling filter, as
    gain * lrelu(v) == lrelu(gain * v) for gain > 0. The leaky ReLU and the clamp work in place where autograd
    allows (each big tensor allocated is a round of page faults), the clamp with a one-pass backward, and the
    clamp is left out where it provably cannot bind (see _clamp_is_inactive). tests/direct_ops.py keeps the
    step-by-step definition that the tests compare this with.
    """
    _check_args(x, fu, fd, up, down)
    memory_format = _memory_format_of(x)
    if x.device.type == "cpu":  # mkldnn's depthwise convolutions; a GPU's are not known to prefer it
        x = x.contiguous(memory_format=torch.channels_last)

    x = bias_act(x, b, dim=1, impl="ref")
    if clamp is not None and _clamp_is_inactive(x, fu, up, gain, slope, clamp):
        clamp = None
    # The zeros inserted by upsampling dilute the signal by up*up; the filter gain restores its level.
    fold_gain = gain > 0
    up_gain = up**2 * (gain if fold_gain else 1)
    x = _upfirdn2d_ref(x, fu, up=up, down=1, padding=padding, flip_filter=flip_filter, gain=up_gain)
    graph = x.requires_grad
    own = fu is not None  # x is a new tensor of this function's, which no autograd node keeps
    if slope != 1:
        # In place, autograd keeps the leaky ReLU's output (so no clamp may overwrite it), and needs slope > 0.
        inplace = own and (not graph or (clamp is None and slope > 0))
        x, own = F.leaky_relu(x, slope, inplace=inplace), not (graph and inplace)
    if not fold_gain:
        x, own = x * gain, True
    if clamp is not None:
        x = F.hardtanh(x, -clamp, clamp, inplace=own)
    x = _upfirdn2d_ref(x, fd, up=1, down=down, padding=0, flip_filter=flip_filter, gain=1)
    return x.contiguous(memory_format=memory_format)


def _clamp_is_inactive(
    x: torch.Tensor, fu: torch.Tensor | None, up: int, gain: float, slope: float, clamp: float
) -> bool:
    """True when no activation can reach the clamp, so that skipping it changes neither values nor gradients.

    Every upsampled sample is a sum of input samples (x, bias included) times taps of fu times up**2, so its
    magnitude is at most max|x| * sum|fu| * up**2 (sum|fu| squared for a separable fu, which runs along both
    axes); the leaky ReLU scales a magnitude by at most max(1, |slope|), the gain by |gain|. The margin covers
    float rounding. Checked on the CPU only: it reads one number back, which would stall a GPU's queue.
    """
    if x.device.type != "cpu":
        return False
    taps_l1 = 1.0 if fu is None else float(fu.detach().abs().sum()) ** (2 if fu.ndim == 1 else 1)
    bound = float(x.detach().abs().amax()) * taps_l1 * up**2 * abs(gain) * max(1.0, abs(slope))
    return bound * 1.001 < clamp  # False for a NaN or infinite x, which the clamp must see


# ----------------------------------------------------------------------------
# CUDA kernel path: a torch.library custom op, so torch.compile traces through it and autograd composes.


def _kernel_applies(x, fu, fd, b, up, down, padding) -> bool:
    """True when the CUDA kernel is enabled, built, and handles these arguments (else the reference path runs,
    which also raises the argument errors)."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.dtype not in _KERNEL_DTYPES:
        return False
    if not (isinstance(up, int) and up >= 1 and isinstance(down, int) and down >= 1):
        return False
    filters = [f for f in (fu, fd) if f is not None]
    if not all(isinstance(f, torch.Tensor) and f.ndim in (1, 2) and not f.requires_grad for f in filters):
        return False  # filter gradients: reference only
    if b is not None and not (isinstance(b, torch.Tensor) and b.shape == (x.shape[1],)):
        return False
    fu_w, fu_h = _get_filter_size(fu)
    fd_w, fd_h = _get_filter_size(fd)
    px0, px1, py0, py1 = _parse_padding(padding)
    # Size of the upsampled, filtered signal that the downsampling filter reads.
    up_h, up_w = _output_size(x.shape[2], up, 1, py0, py1, fu_h), _output_size(x.shape[3], up, 1, px0, px1, fu_w)
    if up_h < fd_h or up_w < fd_w:  # empty output: the reference path raises the error
        return False
    if fd_h * fd_w * (8 if x.dtype == torch.float64 else 4) > _MAX_SHARED_BYTES:  # one tile must fit on chip
        return False
    return custom_ops.kernel_for("filtered_lrelu", x) is not None


def _filtered_lrelu_cuda(
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
    """filtered_lrelu through the CUDA kernel; see filtered_lrelu for the arguments."""
    _check_args(x, fu, fd, up, down)
    b = x.new_zeros([x.shape[1]]) if b is None else b.to(x.dtype).contiguous()
    fu, fd = (torch.ones([1, 1], device=x.device) if f is None else f.to(x.device) for f in (fu, fd))
    px0, px1, py0, py1 = _parse_padding(padding)
    clamp = -1.0 if clamp is None else float(clamp)
    y, _ = _filtered_lrelu_op(
        x.contiguous(), b, fu, fd, up, down, px0, px1, py0, py1, float(gain), float(slope), clamp, flip_filter
    )
    return y


def _filtered_lrelu_sizes(x_size, fu, fd, up, down, px0, px1, py0, py1):
    """(out_h, out_w, mid_h, mid_w): the output size and the size of the upsampled region the outputs read."""
    (fu_w, fu_h), (fd_w, fd_h) = _get_filter_size(fu), _get_filter_size(fd)
    out_h = _output_size(_output_size(x_size[2], up, 1, py0, py1, fu_h), 1, down, 0, 0, fd_h)
    out_w = _output_size(_output_size(x_size[3], up, 1, px0, px1, fu_w), 1, down, 0, 0, fd_w)
    return out_h, out_w, (out_h - 1) * down + fd_h, (out_w - 1) * down + fd_w


@torch.library.custom_op("ganforge::filtered_lrelu", mutates_args=())
def _filtered_lrelu_op(
    x: torch.Tensor,
    b: torch.Tensor,
    fu: torch.Tensor,
    fd: torch.Tensor,
    up: int,
    down: int,
    px0: int,
    px1: int,
    py0: int,
    py1: int,
    gain: float,
    slope: float,
    clamp: float,
    flip_filter: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, mask) by the kernel; mask is uint8 [N, C, mid_h, mid_w]: 0 negative, 1 positive, 2 clamped."""
    wu, wd = (_as_2d(_correlation_weights(f, flip_filter, x)).contiguous() for f in (fu, fd))
    kernel = custom_ops.get_kernel("filtered_lrelu")
    y, mask = kernel.filtered_lrelu(x, b, wu, wd, up, down, px0, px1, py0, py1, gain, slope, clamp)
    return y, mask


@_filtered_lrelu_op.register_fake
def _(x, b, fu, fd, up, down, px0, px1, py0, py1, gain, slope, clamp, flip_filter):
    out_h, out_w, mid_h, mid_w = _filtered_lrelu_sizes(x.shape, fu, fd, up, down, px0, px1, py0, py1)
    n, c = x.shape[:2]
    return x.new_empty([n, c, out_h, out_w]), x.new_empty([n, c, mid_h, mid_w], dtype=torch.uint8)


def _as_2d(f: torch.Tensor) -> torch.Tensor:
    """A separable 1-D filter as its 2-D outer product (the fused kernel takes 2-D filters only)."""
    return f[:, None] * f[None, :] if f.ndim == 1 else f


def _filtered_lrelu_setup(ctx, inputs, output) -> None:
    x, b, fu, fd, up, down, px0, px1, py0, py1, gain, slope, clamp, flip_filter = inputs
    ctx.save_for_backward(output[1], fu, fd)
    ctx.mark_non_differentiable(output[1])
    ctx.args = (up, down, px0, py0, gain, slope, flip_filter)
    ctx.in_size = x.shape[2:]


def _filtered_lrelu_backward(ctx, dy, _dmask):
    mask, fu, fd = ctx.saved_tensors
    up, down, px0, py0, gain, slope, flip_filter = ctx.args
    (in_h, in_w), (out_h, out_w), (mid_h, mid_w) = ctx.in_size, dy.shape[2:], mask.shape[2:]
    (fu_w, fu_h), (fd_w, fd_h) = _get_filter_size(fu), _get_filter_size(fd)

    # Through the downsampling step (the upsampled region -> y), transposed: see _upfirdn2d_backward.
    pad_d = [fd_w - 1, mid_w - out_w * down, fd_h - 1, mid_h - out_h * down]
    dv = _upfirdn2d_cuda(dy, fd, up=down, down=1, padding=pad_d, flip_filter=not flip_filter, gain=1)
    # Through clamp(lrelu(u) * gain): slope * gain where u <= 0, gain where u > 0, 0 where clamped.
    positive, kept = (mask == 1).to(dv.dtype), (mask != 2).to(dv.dtype)
    du = dv * (positive * (gain - slope * gain) + kept * (slope * gain))
    # Through the upsampling step (x + b -> the upsampled region), transposed.
    pad_u = [fu_w - 1 - px0, in_w * up - mid_w + px0 - up + 1, fu_h - 1 - py0, in_h * up - mid_h + py0 - up + 1]
    dx = _upfirdn2d_cuda(du, fu, up=1, down=up, padding=pad_u, flip_filter=not flip_filter, gain=up**2)
    db = dx.sum([0, 2, 3]) if ctx.needs_input_grad[1] else None
    return dx, db, None, None, None, None, None, None, None, None, None, None, None, None


_filtered_lrelu_op.register_autograd(_filtered_lrelu_backward, setup_context=_filtered_lrelu_setup)
