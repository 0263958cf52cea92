"""Upsample, pad, FIR-filter and downsample a batch of images in one op (upfirdn2d).

The reference path is composed of plain PyTorch ops, so first and second derivatives come from autograd.
`impl='cuda'` runs the CUDA kernel (torch_utils/ops/cuda/upfirdn2d.cu) when GANFORGE_CUDA_OPS=1 and x is on a GPU,
else the reference path; see torch_utils/custom_ops.py. The op is linear in x, so its backward pass is the same
kernel run transposed, and double backward composes.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from torch_utils import custom_ops

Scaling = int | Sequence[int]  # one factor for both axes, or (x, y)
Padding = int | Sequence[int]  # p, (px, py) or (x_left, x_right, y_top, y_bottom); negative crops
IMPLS = ("ref", "cuda")
_KERNEL_DTYPES = (torch.float16, torch.float32, torch.float64)
_CPU = torch.device("cpu")  # default device of setup_filter

# ----------------------------------------------------------------------------
# Argument parsers, shared with filtered_lrelu and conv2d_resample.


def _parse_scaling(scaling: Scaling) -> tuple[int, int]:
    """Return an up/down factor as (x, y)."""
    if isinstance(scaling, int):
        scaling = [scaling, scaling]
    assert len(scaling) == 2, f"scaling must be an int or an (x, y) pair, got {scaling!r}"
    sx, sy = (int(s) for s in scaling)
    assert sx >= 1 and sy >= 1, f"scaling factors must be >= 1, got {scaling!r}"
    return sx, sy


def _parse_padding(padding: Padding) -> tuple[int, int, int, int]:
    """Return padding as (x_left, x_right, y_top, y_bottom)."""
    if isinstance(padding, int):
        padding = [padding, padding]
    assert len(padding) in (2, 4), f"padding must be an int, (x, y) or (x0, x1, y0, y1), got {padding!r}"
    if len(padding) == 2:
        px, py = padding
        padding = [px, px, py, py]
    px0, px1, py0, py1 = (int(p) for p in padding)
    return px0, px1, py0, py1


def _get_filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """Return the (width, height) of a filter from setup_filter; a 1-D filter is taps x taps."""
    if f is None:
        return 1, 1
    assert isinstance(f, torch.Tensor), f"filter must be a tensor or None, got {type(f).__name__}"
    assert f.ndim in (1, 2), f"filter must be 1-D or 2-D, got shape {list(f.shape)}"
    fw, fh = f.shape[-1], f.shape[0]
    assert fw >= 1 and fh >= 1, f"filter must not be empty, got shape {list(f.shape)}"
    return fw, fh


# ----------------------------------------------------------------------------


def setup_filter(
    f,
    device: torch.device = _CPU,
    normalize: bool = True,
    flip_filter: bool = False,
    gain: float = 1,
    separable: bool | None = None,
) -> torch.Tensor:
    """Turn a list, array or tensor of taps into a float32 filter tensor ready for upfirdn2d.

    Args:
        f:           Filter taps (any array-like, 0-D, 1-D or 2-D), or None for the identity filter [1].
        device:      Device of the returned tensor.
        normalize:   Divide the filter by its sum, so that it preserves a constant signal.
        flip_filter: Flip the filter along all its axes.
        gain:        Overall gain of the filter; each of the f.ndim axes gets gain**(1/f.ndim) of it,
                     so a separable filter applied twice (once per axis) has total gain `gain`.
        separable:   Return a 1-D filter meant to be applied along each axis in turn. None means: only when
                     f is 1-D with at least 8 taps, where two 1-D passes beat one 2-D pass.

    Returns:
        float32 tensor, [taps] when separable, else [fh, fw].
    """
    if f is None:
        f = [1]
    f = torch.as_tensor(f, dtype=torch.float32)
    assert f.ndim in (0, 1, 2), f"filter must be 0-D, 1-D or 2-D, got shape {list(f.shape)}"
    assert f.numel() > 0, "filter must have at least one tap"
    if f.ndim == 0:
        f = f[None]

    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = f[None, :] * f[:, None]  # [taps, taps], the outer product of the 1-D filter with itself
    assert f.ndim == (1 if separable else 2), f"separable={separable} needs a 1-D filter, got shape {list(f.shape)}"

    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


# ----------------------------------------------------------------------------


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: Scaling = 1,
    down: Scaling = 1,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = "cuda",
) -> torch.Tensor:
    """Upsample by zero insertion, pad, FIR-filter and downsample a batch of images.

    Output pixels are computed as follows:
        1. Upsample: insert up-1 zeros after every input sample along each axis ([H, W] -> [H*upy, W*upx]).
        2. Pad with zeros by `padding` on each side; a negative amount crops instead.
        3. Convolve with `f` in 'valid' mode, each channel separately, and multiply by `gain`. This is a true
           convolution (the filter is flipped), or a correlation when flip_filter=True.
        4. Downsample: keep every down-th sample along each axis, starting at index 0.

    Args:
        x:           Images of shape [N, C, H, W], floating point.
        f:           Filter from setup_filter: 2-D [fh, fw], 1-D [taps] (applied along width, then height),
                     or None for the identity filter.
        up:          Upsampling factor, int or (x, y).
        down:        Downsampling factor, int or (x, y).
        padding:     Padding after upsampling: int, (x, y) or (x_left, x_right, y_top, y_bottom).
        flip_filter: Correlate with `f` instead of convolving.
        gain:        Overall scale applied to the output.
        impl:        'ref', or 'cuda' for the CUDA kernel where enabled and available (else the reference path).

    Returns:
        Tensor [N, C, (H*upy + py0 + py1 - fh) // downy + 1, (W*upx + px0 + px1 - fw) // downx + 1], x's dtype.
    """
    assert impl in IMPLS, f"impl must be one of {IMPLS}, got {impl!r}"
    if impl == "cuda" and _kernel_applies(x, f):
        return _upfirdn2d_cuda(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)
    return _upfirdn2d_ref(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)


def _upfirdn2d_ref(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: Scaling,
    down: Scaling,
    padding: Padding,
    flip_filter: bool,
    gain: float,
) -> torch.Tensor:
    """Pure-PyTorch upfirdn2d; see upfirdn2d for the arguments. The result has x's memory format.

    Polyphase: upsampling is a transposed convolution with stride `up`, which neither multiplies nor stores the
    inserted zeros, and downsampling is a convolution with stride `down`, which computes only the samples that
    decimation keeps (see _fir_pass). Both are depthwise (groups=C) convolutions. tests/direct_ops.py keeps the
    step-by-step definition that the tests compare this with.
    """
    (upx, upy), (downx, downy), (px0, px1, py0, py1) = _check_args(x, f, up, down, padding)
    memory_format = _memory_format_of(x)
    if f is None:
        y = _upfirdn2d_identity(x, (upx, upy), (downx, downy), (px0, px1, py0, py1), gain)
    else:
        f = f.to(device=x.device, dtype=x.dtype)
        taps = f if flip_filter else f.flip(list(range(f.ndim)))  # correlation taps: a true convolution flips f
        if f.ndim == 2:
            y = _fir_pass(x, taps * gain, (upx, upy), (downx, downy), (px0, px1, py0, py1))
        else:  # separable: the width pass carries the whole gain (not gain**0.5 per pass), so a negative gain works
            y = _fir_pass(x, (taps * gain)[None, :], (upx, 1), (downx, 1), (px0, px1, 0, 0))  # [N, C, H, W']
            y = _fir_pass(y, taps[:, None], (1, upy), (1, downy), (0, 0, py0, py1))  # [N, C, H', W']
    return y.contiguous(memory_format=memory_format)  # cropping and decimation leave strided views


def _memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """torch.channels_last if x is stored so (and not also plain contiguous), else torch.contiguous_format."""
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return torch.contiguous_format
    return torch.channels_last


def _fir_pass(
    x: torch.Tensor,
    w: torch.Tensor,
    up: tuple[int, int],
    down: tuple[int, int],
    padding: tuple[int, int, int, int],
) -> torch.Tensor:
    """upfirdn2d of every channel of x [N, C, H, W] with the 2-D correlation taps w [fh, fw] (gain included).

    Along one axis, with input length H, taps w[0..k-1], factors u and d and padding (p0, p1), the definition is
    a 'valid' correlation of the padded, zero-inserted input z (z[u*i] = x[i], zero elsewhere), decimated:
        y[n] = sum_t w[t] z[d*n + t - p0],   n = 0 .. (H*u + p0 + p1 - k) // d.
    With u = 1 this is F.conv2d with stride d (zero padding p0, p1; a negative amount crops). With u > 1,
    F.conv_transpose2d(x, flip(w), stride=u) gives T[m] = sum_i x[i] w[k-1 - (m - u*i)] of length (H-1)*u + k,
    the full convolution of z with flip(w), and y[n] = T[d*n + k-1 - p0]: T padded by p0 - (k-1) on the left
    and by p1 + u - k on the right (negative amounts crop), then decimated.
    """
    channels = x.shape[1]
    (upx, upy), (downx, downy), (px0, px1, py0, py1) = up, down, padding
    fh, fw = w.shape
    if upx == 1 and upy == 1:
        x, inner = _pad_outside(x, px0, px1, py0, py1)
        weight = w[None, None].expand(channels, 1, fh, fw)  # [C, 1, fh, fw]
        return F.conv2d(x, weight, stride=(downy, downx), padding=inner, groups=channels)

    weight = w.flip([0, 1])[None, None].expand(channels, 1, fh, fw)  # [C, 1, fh, fw], conv_transpose2d's layout
    # conv_transpose2d's own padding crops an equal amount from both ends; the rest is _pad_outside's.
    pads = [px0 - (fw - 1), px1 + upx - fw, py0 - (fh - 1), py1 + upy - fh]
    crop_y, crop_x = max(0, -max(pads[2:])), max(0, -max(pads[:2]))
    x = F.conv_transpose2d(x, weight, stride=(upy, upx), padding=(crop_y, crop_x), groups=channels)
    pads = [pads[0] + crop_x, pads[1] + crop_x, pads[2] + crop_y, pads[3] + crop_y]
    x, _ = _pad_outside(x, *pads, inner=False)
    return x if downx == 1 and downy == 1 else x[:, :, ::downy, ::downx]


def _pad_outside(
    x: torch.Tensor, px0: int, px1: int, py0: int, py1: int, inner: bool = True
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad x by (px0, px1, py0, py1), negative amounts cropping (a view). With inner=True, the part of the padding
    that is equal on both sides of an axis is left out and returned as (py, px), for a convolution's own padding.
    """
    in_py = min(py0, py1) if inner and py0 > 0 and py1 > 0 else 0
    in_px = min(px0, px1) if inner and px0 > 0 and px1 > 0 else 0
    px0, px1, py0, py1 = px0 - in_px, px1 - in_px, py0 - in_py, py1 - in_py
    if min(px0, px1, py0, py1) < 0:
        height, width = x.shape[2:]
        x = x[:, :, max(-py0, 0) : height - max(-py1, 0), max(-px0, 0) : width - max(-px1, 0)]
    if max(px0, px1, py0, py1) > 0:
        x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    return x, (in_py, in_px)


def _upfirdn2d_identity(
    x: torch.Tensor,
    up: tuple[int, int],
    down: tuple[int, int],
    padding: tuple[int, int, int, int],
    gain: float,
) -> torch.Tensor:
    """upfirdn2d with the identity filter: zero insertion, padding, gain and decimation, by indexing."""
    (upx, upy), (downx, downy) = up, down
    if upx > 1 or upy > 1:
        batch, channels, in_h, in_w = x.shape
        upsampled = x.new_zeros([batch, channels, in_h * upy, in_w * upx])  # [N, C, H*upy, W*upx]
        upsampled[:, :, ::upy, ::upx] = x
        x = upsampled
    x, _ = _pad_outside(x, *padding, inner=False)
    if gain != 1:
        x = x * gain
    return x if downx == 1 and downy == 1 else x[:, :, ::downy, ::downx]


def _check_args(
    x: torch.Tensor, f: torch.Tensor | None, up: Scaling, down: Scaling, padding: Padding
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int]]:
    """Check upfirdn2d's arguments; return (upx, upy), (downx, downy) and (px0, px1, py0, py1)."""
    assert isinstance(x, torch.Tensor) and x.ndim == 4, f"x must be a 4-D [N, C, H, W] tensor, got {_shape(x)}"
    assert x.dtype.is_floating_point, f"x must be floating point, got {x.dtype}"
    upx, upy = _parse_scaling(up)
    downx, downy = _parse_scaling(down)
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    in_h, in_w = x.shape[2:]
    padded_w, padded_h = in_w * upx + px0 + px1, in_h * upy + py0 + py1
    assert padded_w >= fw and padded_h >= fh, (
        f"output would be empty: upsampled and padded input is {padded_h}x{padded_w} (HxW), "
        f"smaller than the {fh}x{fw} filter"
    )
    return (upx, upy), (downx, downy), (px0, px1, py0, py1)


def _shape(x) -> str:
    """Describe x's shape (or type) for an assertion message."""
    return str(list(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


# ----------------------------------------------------------------------------
# CUDA kernel path: a torch.library custom op, so torch.compile traces through it and autograd composes.


def _kernel_applies(x, f) -> bool:
    """True when the CUDA kernel is enabled, built, and handles these arguments (else the reference path runs)."""
    if not isinstance(x, torch.Tensor) or x.dtype not in _KERNEL_DTYPES:
        return False
    if f is not None and (not isinstance(f, torch.Tensor) or f.requires_grad):  # filter gradients: reference only
        return False
    return custom_ops.kernel_for("upfirdn2d", x) is not None


def _correlation_weights(f: torch.Tensor | None, flip_filter: bool, like: torch.Tensor) -> torch.Tensor:
    """The taps the kernel correlates with: f flipped (a true convolution) unless flip_filter, in float32
    (float64 for a float64 `like`), on like's device; None is the identity [[1]]."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    if f is None:
        return torch.ones([1, 1], dtype=dtype, device=like.device)
    f = f.to(device=like.device, dtype=dtype)
    return (f if flip_filter else f.flip(list(range(f.ndim)))).contiguous()


def _upfirdn2d_cuda(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: Scaling,
    down: Scaling,
    padding: Padding,
    flip_filter: bool,
    gain: float,
) -> torch.Tensor:
    """upfirdn2d through the CUDA kernel; see upfirdn2d for the arguments."""
    (upx, upy), (downx, downy), (px0, px1, py0, py1) = _check_args(x, f, up, down, padding)
    w = _correlation_weights(f, flip_filter, x)
    x = x.contiguous()
    if w.ndim == 2:
        return _upfirdn2d_op(x, w, upx, upy, downx, downy, px0, px1, py0, py1, float(gain))
    # Separable: a [1, taps] pass along the width (with the whole gain), then a [taps, 1] pass along the height,
    # 2 * taps multiply-adds per output instead of taps**2.
    x = _upfirdn2d_op(x, w[None, :].contiguous(), upx, 1, downx, 1, px0, px1, 0, 0, float(gain))
    return _upfirdn2d_op(x, w[:, None].contiguous(), 1, upy, 1, downy, 0, 0, py0, py1, 1.0)


def _output_size(size: int, up: int, down: int, pad0: int, pad1: int, taps: int) -> int:
    """Output length of upfirdn2d along one axis."""
    return (size * up + pad0 + pad1 - taps) // down + 1


@torch.library.custom_op("ganforge::upfirdn2d", mutates_args=())
def _upfirdn2d_op(
    x: torch.Tensor,
    w: torch.Tensor,
    upx: int,
    upy: int,
    downx: int,
    downy: int,
    px0: int,
    px1: int,
    py0: int,
    py1: int,
    gain: float,
) -> torch.Tensor:
    """upfirdn2d by the kernel, correlating with the 2-D weights w (already flipped as needed)."""
    return custom_ops.get_kernel("upfirdn2d").upfirdn2d(x, w, upx, upy, downx, downy, px0, px1, py0, py1, gain)


@_upfirdn2d_op.register_fake
def _(x, w, upx, upy, downx, downy, px0, px1, py0, py1, gain):
    fh, fw = w.shape
    out_h = _output_size(x.shape[2], upy, downy, py0, py1, fh)
    out_w = _output_size(x.shape[3], upx, downx, px0, px1, fw)
    return x.new_empty([x.shape[0], x.shape[1], out_h, out_w])


def _upfirdn2d_setup(ctx, inputs, output) -> None:
    x, w, *args = inputs
    ctx.save_for_backward(w)
    ctx.args = args
    ctx.in_size = x.shape[2:]


def _upfirdn2d_backward(ctx, dy):
    # The op is linear in x; its transpose zero-inserts dy by `down`, correlates with the flipped weights and
    # keeps every up-th sample. Padding: output sample i of the transpose must read exactly the dy samples that
    # input sample i fed, i.e. left padding fw - 1 - px0, and right padding chosen so the result is [H, W] again.
    (w,) = ctx.saved_tensors
    upx, upy, downx, downy, px0, _, py0, _, gain = ctx.args
    (in_h, in_w), (out_h, out_w), (fh, fw) = ctx.in_size, dy.shape[2:], w.shape
    padding = [
        fw - 1 - px0,
        in_w * upx - out_w * downx + px0 - upx + 1,
        fh - 1 - py0,
        in_h * upy - out_h * downy + py0 - upy + 1,
    ]
    dx = _upfirdn2d_op(dy.contiguous(), w.flip([0, 1]).contiguous(), downx, downy, upx, upy, *padding, gain)
    return dx, None, None, None, None, None, None, None, None, None, None


_upfirdn2d_op.register_autograd(_upfirdn2d_backward, setup_context=_upfirdn2d_setup)


# ----------------------------------------------------------------------------
# Helpers whose padding keeps the filter centered.


def filter2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = "cuda",
) -> torch.Tensor:
    """Filter a batch of images with f, keeping their size (plus any extra padding).

    Args:
        x:           Images [N, C, H, W].
        f:           Filter from setup_filter, or None.
        padding:     Extra padding on top of what keeps the size: int, (x, y) or (x0, x1, y0, y1).
        flip_filter: Correlate instead of convolving.
        gain:        Overall scale applied to the output.
        impl:        'ref' or 'cuda'.

    Returns:
        Tensor [N, C, H + py0 + py1, W + px0 + px1].
    """
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    padding = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=padding, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: Scaling = 2,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = "cuda",
) -> torch.Tensor:
    """Upsample a batch of images by zero insertion and an interpolation filter f.

    Args:
        x:           Images [N, C, H, W].
        f:           Interpolation filter from setup_filter, or None.
        up:          Upsampling factor, int or (x, y).
        padding:     Extra padding on top of what keeps the result aligned: int, (x, y) or (x0, x1, y0, y1).
        flip_filter: Correlate instead of convolving.
        gain:        Overall scale; the filter is further scaled by upx*upy to make up for the inserted zeros.
        impl:        'ref' or 'cuda'.

    Returns:
        Tensor [N, C, H*upy + py0 + py1, W*upx + px0 + px1].
    """
    upx, upy = _parse_scaling(up)
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    padding = [
        px0 + (fw + upx - 1) // 2,
        px1 + (fw - upx) // 2,
        py0 + (fh + upy - 1) // 2,
        py1 + (fh - upy) // 2,
    ]
    return upfirdn2d(x, f, up=up, padding=padding, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    down: Scaling = 2,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = "cuda",
) -> torch.Tensor:
    """Downsample a batch of images with an anti-aliasing filter f followed by decimation.

    Args:
        x:           Images [N, C, H, W].
        f:           Anti-aliasing filter from setup_filter, or None.
        down:        Downsampling factor, int or (x, y).
        padding:     Extra padding on top of what keeps the result aligned: int, (x, y) or (x0, x1, y0, y1).
        flip_filter: Correlate instead of convolving.
        gain:        Overall scale applied to the output.
        impl:        'ref' or 'cuda'.

    Returns:
        Tensor [N, C, (H + py0 + py1) // downy, (W + px0 + px1) // downx].
    """
    downx, downy = _parse_scaling(down)
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    padding = [
        px0 + (fw - downx + 1) // 2,
        px1 + (fw - downx) // 2,
        py0 + (fh - downy + 1) // 2,
        py1 + (fh - downy) // 2,
    ]
    return upfirdn2d(x, f, down=down, padding=padding, flip_filter=flip_filter, gain=gain, impl=impl)
