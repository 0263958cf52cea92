"""Fused bias + activation + gain + clamp, the tail of every layer in the generators and discriminators.

The reference path is composed of plain PyTorch ops, so first and second derivatives come from autograd.
`impl='cuda'` runs the CUDA kernel (torch_utils/ops/cuda/bias_act.cu) when GANFORGE_CUDA_OPS=1 and x is on a GPU,
else the reference path; see torch_utils/custom_ops.py. The kernel evaluates the activation's first and second
derivatives itself, so backward and double backward (R1 regularization) run through it too.
"""

import math

import torch
import torch.nn.functional as F

from dnnlib import EasyDict
from torch_utils import custom_ops

IMPLS = ("ref", "cuda")

# Each entry: func(x, alpha) applies the activation; def_alpha and def_gain are used when the caller passes None.
# The sqrt(2) gains keep the activations' second moment near 1 for unit-variance inputs (He et al. 2015).
activation_funcs = {
    "linear": EasyDict(func=lambda x, alpha: x, def_alpha=0, def_gain=1),
    "relu": EasyDict(func=lambda x, alpha: F.relu(x), def_alpha=0, def_gain=math.sqrt(2)),
    "lrelu": EasyDict(func=lambda x, alpha: F.leaky_relu(x, alpha), def_alpha=0.2, def_gain=math.sqrt(2)),
    "tanh": EasyDict(func=lambda x, alpha: torch.tanh(x), def_alpha=0, def_gain=1),
    "sigmoid": EasyDict(func=lambda x, alpha: torch.sigmoid(x), def_alpha=0, def_gain=1),
    "elu": EasyDict(func=lambda x, alpha: F.elu(x), def_alpha=0, def_gain=1),
    "selu": EasyDict(func=lambda x, alpha: F.selu(x), def_alpha=0, def_gain=1),
    "softplus": EasyDict(func=lambda x, alpha: F.softplus(x), def_alpha=0, def_gain=1),
    "swish": EasyDict(func=lambda x, alpha: torch.sigmoid(x) * x, def_alpha=0, def_gain=math.sqrt(2)),
}
# Activation name -> the kernel's id (the Act enum in cuda/bias_act.h, same order).
ACT_IDS = {name: i for i, name in enumerate(activation_funcs)}
_KERNEL_DTYPES = (torch.float16, torch.float32, torch.float64)


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    dim: int = 1,
    act: str = "linear",
    alpha: float | None = None,
    gain: float | None = None,
    clamp: float | None = None,
    impl: str = "cuda",
) -> torch.Tensor:
    """Add a bias, apply an activation, multiply by a gain and clamp, in that order.

    Args:
        x:     Input tensor of any shape, floating point.
        b:     Bias of shape [x.shape[dim]], broadcast along every other axis, or None for no bias.
        dim:   Axis of x that b runs along (negative counts from the end).
        act:   Activation name, a key of `activation_funcs`.
        alpha: Activation parameter (the negative slope of 'lrelu'), or None for the activation's default.
        gain:  Scale applied after the activation, or None for the activation's default.
        clamp: Clamp the result to [-clamp, clamp], or None for no clamping.
        impl:  'ref', or 'cuda' for the CUDA kernel where enabled and available (else the reference path).

    Returns:
        Tensor of the same shape and dtype as x.
    """
    assert impl in IMPLS, f"impl must be one of {IMPLS}, got {impl!r}"
    if impl == "cuda" and _kernel_applies(x, b):
        return _bias_act_cuda(x, b=b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
    return _bias_act_ref(x, b=b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)


def _resolve_args(
    x: torch.Tensor, b: torch.Tensor | None, dim: int, act: str, alpha: float | None, gain: float | None, clamp
) -> tuple[int, float, float]:
    """Check bias_act's arguments; return dim (non-negative), alpha and gain with the activation's defaults."""
    assert isinstance(x, torch.Tensor), f"x must be a tensor, got {type(x).__name__}"
    assert act in activation_funcs, f"unknown activation {act!r}; choose one of {sorted(activation_funcs)}"
    assert clamp is None or clamp >= 0, f"clamp must be None or >= 0, got {clamp}"
    spec = activation_funcs[act]
    alpha = float(spec.def_alpha if alpha is None else alpha)
    gain = float(spec.def_gain if gain is None else gain)
    if b is not None:
        assert -x.ndim <= dim < x.ndim, f"dim={dim} is out of range for a {x.ndim}-D x"
        dim = dim % x.ndim
        assert isinstance(b, torch.Tensor) and b.shape == (x.shape[dim],), (
            f"b must be a 1-D tensor of length x.shape[{dim}] = {x.shape[dim]}, got "
            f"{list(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__}"
        )
    return dim, alpha, gain


def _bias_act_ref(
    x: torch.Tensor,
    b: torch.Tensor | None,
    dim: int,
    act: str,
    alpha: float | None,
    gain: float | None,
    clamp: float | None,
) -> torch.Tensor:
    """Pure-PyTorch bias_act; see bias_act for the arguments."""
    dim, alpha, gain = _resolve_args(x, b, dim, act, alpha, gain, clamp)
    spec = activation_funcs[act]

    if b is not None:
        # Reshape b to [1, ..., C, ..., 1] so it broadcasts along every axis but dim.
        bias_shape = [-1 if i == dim else 1 for i in range(x.ndim)]
        x = x + b.to(x.dtype).reshape(bias_shape)

    x = spec.func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


# ----------------------------------------------------------------------------
# CUDA kernel path: torch.library custom ops, so torch.compile traces through them and autograd composes.


def _kernel_applies(x, b) -> bool:
    """True when the CUDA kernel is enabled, built, and handles these tensors (else the reference path runs)."""
    if not isinstance(x, torch.Tensor) or x.dtype not in _KERNEL_DTYPES:
        return False
    tensors = (x,) if b is None else (x, b) if isinstance(b, torch.Tensor) else None
    return tensors is not None and custom_ops.kernel_for("bias_act", *tensors) is not None


def _bias_act_cuda(
    x: torch.Tensor,
    b: torch.Tensor | None,
    dim: int,
    act: str,
    alpha: float | None,
    gain: float | None,
    clamp: float | None,
) -> torch.Tensor:
    """bias_act through the CUDA kernel; see bias_act for the arguments."""
    dim, alpha, gain = _resolve_args(x, b, dim, act, alpha, gain, clamp)
    if b is None:
        dim = 0  # unused by the kernel without a bias
    else:
        b = b.to(x.dtype).contiguous()  # the reference adds b in x's dtype too
    clamp = -1.0 if clamp is None else float(clamp)
    return _bias_act_op(x.contiguous(), b, dim, ACT_IDS[act], alpha, gain, clamp)


def _reduce_to_bias(dx: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum a gradient over every axis but dim: the gradient of the broadcast bias."""
    return dx.sum([i for i in range(dx.ndim) if i != dim])


@torch.library.custom_op("ganforge::bias_act", mutates_args=())
def _bias_act_op(
    x: torch.Tensor, b: torch.Tensor | None, dim: int, act: int, alpha: float, gain: float, clamp: float
) -> torch.Tensor:
    """clamp(f(x + b) * gain) by the kernel; clamp < 0 means none."""
    return custom_ops.get_kernel("bias_act").bias_act(x, b, None, dim, act, 0, alpha, gain, clamp)


@_bias_act_op.register_fake
def _(x, b, dim, act, alpha, gain, clamp):
    return torch.empty_like(x)


def _bias_act_setup(ctx, inputs, output) -> None:
    x, b, dim, act, alpha, gain, clamp = inputs
    ctx.save_for_backward(x, b)
    ctx.args = (dim, act, alpha, gain, clamp)


def _bias_act_backward(ctx, dy):
    x, b = ctx.saved_tensors
    dx = _bias_act_grad_op(dy.contiguous(), x, b, *ctx.args, 1)
    db = _reduce_to_bias(dx, ctx.args[0]) if b is not None and ctx.needs_input_grad[1] else None
    return dx, db, None, None, None, None, None


_bias_act_op.register_autograd(_bias_act_backward, setup_context=_bias_act_setup)


@torch.library.custom_op("ganforge::bias_act_grad", mutates_args=())
def _bias_act_grad_op(
    g: torch.Tensor,
    x: torch.Tensor,
    b: torch.Tensor | None,
    dim: int,
    act: int,
    alpha: float,
    gain: float,
    clamp: float,
    order: int,
) -> torch.Tensor:
    """g * f^(order)(x + b) * gain, zero where the forward pass clamped: the chain rule through bias_act."""
    return custom_ops.get_kernel("bias_act").bias_act(x, b, g, dim, act, order, alpha, gain, clamp)


@_bias_act_grad_op.register_fake
def _(g, x, b, dim, act, alpha, gain, clamp, order):
    return torch.empty_like(x)


def _bias_act_grad_setup(ctx, inputs, output) -> None:
    g, x, b, dim, act, alpha, gain, clamp, order = inputs
    ctx.save_for_backward(g, x, b)
    ctx.args = (dim, act, alpha, gain, clamp)
    ctx.order = order


def _bias_act_grad_backward(ctx, dd):
    # The output is g * f^(n)(z) * gain * mask with z = x + b; the clamp mask is piecewise constant in z.
    g, x, b = ctx.saved_tensors
    dd = dd.contiguous()
    dg = _bias_act_grad_op(dd, x, b, *ctx.args, ctx.order) if ctx.needs_input_grad[0] else None
    dx = db = None
    if ctx.needs_input_grad[1] or (b is not None and ctx.needs_input_grad[2]):
        if ctx.order >= 2:
            raise NotImplementedError("third derivatives of bias_act are not in the CUDA kernel; use impl='ref'")
        dx = _bias_act_grad_op(dd * g, x, b, *ctx.args, ctx.order + 1)
        db = _reduce_to_bias(dx, ctx.args[0]) if b is not None and ctx.needs_input_grad[2] else None
    return dg, dx, db, None, None, None, None, None, None


_bias_act_grad_op.register_autograd(_bias_act_grad_backward, setup_context=_bias_act_grad_setup)
