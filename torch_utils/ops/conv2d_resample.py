"""2-D convolution with optional FIR-filtered upsampling and downsampling, as used by the StyleGAN2 layers.

`_conv2d_resample_generic` is the definition, step by step. `conv2d_resample` computes the same result along
cheaper paths that rely on the FIR filter and the convolution both being linear and shift-invariant, so they
commute. Every path is composed of plain PyTorch ops, so first and second derivatives come from autograd.
"""

import torch
import torch.nn.functional as F

from .upfirdn2d import Padding, _get_filter_size, _parse_padding, upfirdn2d


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: Padding = 0,
    groups: int = 1,
    flip_weight: bool = True,
    flip_filter: bool = False,
) -> torch.Tensor:
    """Convolve a batch of images with w, optionally upsampling before and/or downsampling after.

    The result equals, step by step (see _conv2d_resample_generic):
        1. Widen the padding so the resampling filter stays centered (the upsample2d/downsample2d formulas).
        2. If up > 1, upsample x with f (upfirdn2d, gain up**2); otherwise only pad (negative amounts crop).
        3. 'valid' convolution with w.
        4. If down > 1, downsample with f (upfirdn2d).

    Args:
        x:           Images [N, Cin, H, W].
        w:           Weights [Cout, Cin // groups, kh, kw], same dtype as x.
        f:           Resampling filter from setup_filter (1-D or 2-D), or None for the identity filter.
        up:          Integer upsampling factor >= 1.
        down:        Integer downsampling factor >= 1.
        padding:     Padding of the (upsampled) input: int, (x, y) or (x_left, x_right, y_top, y_bottom).
        groups:      Number of channel groups, as in F.conv2d.
        flip_weight: True: correlate with w, like F.conv2d. False: true convolution (w flipped).
        flip_filter: Correlate with f instead of convolving.

    Returns:
        Tensor [N, Cout, out_h, out_w], x's dtype.
    """
    _check_args(x, w, f, up, down, groups)
    kh, kw = w.shape[2:]
    padding = _resampling_padding(padding, f, up, down)

    # The paths below are ordered from cheapest to most general; each is checked against the generic path.
    if kw == kh == 1 and up == 1 and down > 1:
        return _conv1x1_down(x, w, f, down, padding, groups, flip_filter)
    if kw == kh == 1 and up > 1 and down == 1:
        return _conv1x1_up(x, w, f, up, padding, groups, flip_filter)
    if up == 1 and down > 1:
        return _conv_down(x, w, f, down, padding, groups, flip_weight, flip_filter)
    if up > 1:
        return _conv_up(x, w, f, up, down, padding, groups, flip_weight, flip_filter)
    return _conv_plain(x, w, padding, groups, flip_weight)


def _check_args(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None, up: int, down: int, groups: int) -> None:
    """Assert that the arguments of conv2d_resample fit together."""
    assert isinstance(x, torch.Tensor) and x.ndim == 4, "x must be a 4-D [N, Cin, H, W] tensor"
    assert isinstance(w, torch.Tensor) and w.ndim == 4, "w must be a 4-D [Cout, Cin // groups, kh, kw] tensor"
    assert x.dtype == w.dtype, f"x and w must have the same dtype, got {x.dtype} and {w.dtype}"
    assert isinstance(up, int) and up >= 1, f"up must be an int >= 1, got {up!r}"
    assert isinstance(down, int) and down >= 1, f"down must be an int >= 1, got {down!r}"
    assert isinstance(groups, int) and groups >= 1, f"groups must be an int >= 1, got {groups!r}"
    assert w.shape[0] % groups == 0, f"Cout = {w.shape[0]} is not divisible by groups = {groups}"
    assert x.shape[1] == w.shape[1] * groups, (
        f"x has {x.shape[1]} channels but w expects {w.shape[1]} per group x {groups} groups"
    )
    _get_filter_size(f)  # asserts f is None or a 1-D/2-D tensor


def _resampling_padding(padding: Padding, f: torch.Tensor | None, up: int, down: int) -> tuple[int, int, int, int]:
    """Return padding widened, as in upsample2d and downsample2d, so that the filter f stays centered."""
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    if up > 1:
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    return px0, px1, py0, py1


def _conv(
    x: torch.Tensor,
    w: torch.Tensor,
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
    groups: int = 1,
    flip_weight: bool = True,
) -> torch.Tensor:
    """F.conv2d that correlates with w when flip_weight=True and truly convolves with it otherwise."""
    if not flip_weight:
        w = w.flip([2, 3])
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


# ----------------------------------------------------------------------------
# The definition, and the cheaper paths that match it. `padding` is already widened by _resampling_padding.
# The definition pins impl='ref'; the fast paths take upfirdn2d's default so they pick up its CUDA kernel.


def _conv2d_resample_generic(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None,
    up: int,
    down: int,
    padding: tuple[int, int, int, int],
    groups: int,
    flip_weight: bool,
    flip_filter: bool,
) -> torch.Tensor:
    """Compute conv2d_resample by its definition: upsample (or pad), valid conv, downsample."""
    x = upfirdn2d(x, f if up > 1 else None, up=up, padding=padding, gain=up**2, flip_filter=flip_filter, impl="ref")
    x = _conv(x, w, groups=groups, flip_weight=flip_weight)
    if down > 1:
        x = upfirdn2d(x, f, down=down, flip_filter=flip_filter, impl="ref")
    return x


def _conv_plain(
    x: torch.Tensor, w: torch.Tensor, padding: tuple[int, int, int, int], groups: int, flip_weight: bool
) -> torch.Tensor:
    """No resampling: one F.conv2d, padding inside it when the padding is symmetric and non-negative."""
    px0, px1, py0, py1 = padding
    if px0 == px1 >= 0 and py0 == py1 >= 0:
        return _conv(x, w, padding=(py0, px0), groups=groups, flip_weight=flip_weight)
    x = F.pad(x, [px0, px1, py0, py1])  # negative amounts crop
    return _conv(x, w, groups=groups, flip_weight=flip_weight)


def _conv_down(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None,
    down: int,
    padding: tuple[int, int, int, int],
    groups: int,
    flip_weight: bool,
    flip_filter: bool,
) -> torch.Tensor:
    """Downsampling: filter first, then a strided conv, which skips the outputs decimation would discard."""
    x = upfirdn2d(x, f, padding=padding, flip_filter=flip_filter)  # filter and conv commute
    return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)


def _conv1x1_down(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None,
    down: int,
    padding: tuple[int, int, int, int],
    groups: int,
    flip_filter: bool,
) -> torch.Tensor:
    """1x1 kernel, downsampling: a 1x1 conv only mixes channels, so run it on the smaller, downsampled image."""
    x = upfirdn2d(x, f, down=down, padding=padding, flip_filter=flip_filter)
    return _conv(x, w, groups=groups)  # flipping a 1x1 kernel changes nothing


def _conv1x1_up(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None,
    up: int,
    padding: tuple[int, int, int, int],
    groups: int,
    flip_filter: bool,
) -> torch.Tensor:
    """1x1 kernel, upsampling: mix channels on the small image first, then upsample."""
    x = _conv(x, w, groups=groups)
    return upfirdn2d(x, f, up=up, padding=padding, gain=up**2, flip_filter=flip_filter)


def _conv_up(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None,
    up: int,
    down: int,
    padding: tuple[int, int, int, int],
    groups: int,
    flip_weight: bool,
    flip_filter: bool,
) -> torch.Tensor:
    """Upsampling: a strided transposed conv (skipping the multiply-adds with inserted zeros), then filter.

    Why the padding below: along one axis, conv_transpose2d(x, w', stride=up) is the full true convolution
    T[t] = sum_j w'[j] z[t - j] of the zero-inserted input z (z[up*i] = x[i], zero elsewhere), of length
    (H - 1)*up + kh. The generic path correlates w with z padded by (p0, p1):
        V[n] = sum_j w[j] z[n + j - p0] = sum_j w[kh-1-j] z[n + kh-1-p0 - j] = T[n + kh-1-p0]  with w' = flip(w),
    for n in [0, H*up + p0 + p1 - kh]. So V is T padded by p0 - (kh - 1) on the left and, to reach V's length,
    by p1 + up - kh on the right (negative amounts crop). A true convolution (flip_weight=False) is a
    correlation with flip(w), hence w' = w then. The filter commutes with the conv, so it can come last.
    """
    cout, cin_per_group, kh, kw = w.shape
    # F.conv_transpose2d wants [Cin, Cout // groups, kh, kw]: swap the in/out axes within each group.
    w = w.reshape(groups, cout // groups, cin_per_group, kh, kw).transpose(1, 2)
    w = w.reshape(groups * cin_per_group, cout // groups, kh, kw)
    if flip_weight:
        w = w.flip([2, 3])
    x = F.conv_transpose2d(x, w, stride=up, groups=groups)  # [N, Cout, (H-1)*up + kh, (W-1)*up + kw]

    px0, px1, py0, py1 = padding
    padding = [px0 - (kw - 1), px1 + up - kw, py0 - (kh - 1), py1 + up - kh]
    x = upfirdn2d(x, f, padding=padding, gain=up**2, flip_filter=flip_filter)
    if down > 1:
        x = upfirdn2d(x, f, down=down, flip_filter=flip_filter)
    return x
