"""Step-by-step PyTorch definitions of upfirdn2d and filtered_lrelu, for checking the fast paths with autograd.

These follow each op's definition literally: upsampling builds the zero-inserted image, every output of the
filter is computed at the full rate, and downsampling keeps every down-th sample afterwards. This is how the
reference path of torch_utils/ops computed them before it became polyphase (strided and transposed
convolutions that skip the inserted zeros and the discarded samples). Being plain torch, they give first and
second derivatives to compare against, which numpy_ops cannot; numpy_ops checks these in turn.
"""

import torch
import torch.nn.functional as F

from torch_utils.ops.upfirdn2d import _check_args


def direct_upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1) -> torch.Tensor:
    """upfirdn2d by zero insertion, padding, a depthwise 'valid' convolution at the full rate, and decimation."""
    (upx, upy), (downx, downy), (px0, px1, py0, py1) = _check_args(x, f, up, down, padding)
    batch, channels, in_h, in_w = x.shape
    if upx > 1 or upy > 1:
        upsampled = x.new_zeros([batch, channels, in_h * upy, in_w * upx])  # [N, C, H*upy, W*upx]
        upsampled[:, :, ::upy, ::upx] = x
        x = upsampled
    x = F.pad(x, [px0, px1, py0, py1])  # negative amounts crop
    if f is not None:
        f = f.to(device=x.device, dtype=x.dtype)
        if not flip_filter:
            f = f.flip(list(range(f.ndim)))  # F.conv2d correlates; flipped taps make it a true convolution
        if f.ndim == 2:
            x = F.conv2d(x, (f * gain)[None, None].expand(channels, 1, *f.shape), groups=channels)
        else:  # separable: the width pass, then the height pass
            taps = f.shape[0]
            x = F.conv2d(x, (f * gain).reshape(1, 1, 1, taps).expand(channels, 1, 1, taps), groups=channels)
            x = F.conv2d(x, f.reshape(1, 1, taps, 1).expand(channels, 1, taps, 1), groups=channels)
    elif gain != 1:
        x = x * gain
    return x[:, :, ::downy, ::downx]


def direct_filtered_lrelu(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter) -> torch.Tensor:
    """filtered_lrelu as its four steps: bias, upsample (gain up**2), leaky ReLU * gain and clamp, downsample."""
    if b is not None:
        x = x + b.to(x.dtype)[None, :, None, None]
    x = direct_upfirdn2d(x, fu, up=up, padding=padding, flip_filter=flip_filter, gain=up**2)
    x = F.leaky_relu(x, slope) * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return direct_upfirdn2d(x, fd, down=down, flip_filter=flip_filter)


def derivatives(fn, inputs: list[torch.Tensor], seed: int = 0) -> list[torch.Tensor]:
    """fn(*inputs), its gradients for a random upstream gradient g, and the gradient of <those gradients, v> with
    respect to g (a random v): what double backward (R1, path length) computes. Inputs must require grad."""
    y = fn(*inputs)
    generator = torch.Generator().manual_seed(seed)
    g = torch.randn(y.shape, dtype=y.dtype, generator=generator).requires_grad_(True)
    grads = torch.autograd.grad(y, inputs, g, create_graph=True)
    vs = [torch.randn(t.shape, dtype=t.dtype, generator=generator) for t in grads]
    (dg,) = torch.autograd.grad(sum((t * v).sum() for t, v in zip(grads, vs, strict=True)), [g])
    return [y, *grads, dg]
