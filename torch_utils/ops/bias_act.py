"""Fused bias + activation + gain + clamp, the tail of every layer in the generators and discriminators.

The reference path is composed of plain PyTorch ops, so first and second derivatives come from autograd.
`impl='cuda'` is accepted for forward compatibility and runs the same reference path until a CUDA kernel lands.
"""

import math

import torch
import torch.nn.functional as F

from dnnlib import EasyDict

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
        impl:  'ref' or 'cuda' (runs the reference path until a CUDA kernel lands).

    Returns:
        Tensor of the same shape and dtype as x.
    """
    assert impl in IMPLS, f"impl must be one of {IMPLS}, got {impl!r}"
    return _bias_act_ref(x, b=b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)


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
        # Reshape b to [1, ..., C, ..., 1] so it broadcasts along every axis but dim.
        bias_shape = [-1 if i == dim else 1 for i in range(x.ndim)]
        x = x + b.to(x.dtype).reshape(bias_shape)

    x = spec.func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x
