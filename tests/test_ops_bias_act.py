"""Tests for torch_utils.ops.bias_act against the numpy formulas in numpy_ops."""

import pytest
import torch
from numpy_ops import ACTIVATIONS, assert_matches, np_bias_act

from torch_utils.ops.bias_act import activation_funcs, bias_act


def _randn(*shape, seed=0, scale=2.0) -> torch.Tensor:
    """Random float64 tensor; scale 2 reaches well into every activation's nonlinear range."""
    return scale * torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_registry_matches_the_specified_activations():
    assert set(activation_funcs) == set(ACTIVATIONS)
    for name, spec in activation_funcs.items():
        assert callable(spec.func), name
        assert (spec.def_alpha, spec.def_gain) == pytest.approx(ACTIVATIONS[name][1:]), name


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_defaults_match_numpy(act):
    x, b = _randn(3, 4, 5), _randn(4, seed=1)
    assert_matches(bias_act(x, b, act=act, impl="ref"), np_bias_act(x.numpy(), b.numpy(), act=act))


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_explicit_alpha_gain_clamp_match_numpy(act):
    x, b = _randn(2, 3, 4, 2), _randn(3, seed=1)
    y = bias_act(x, b, act=act, alpha=0.3, gain=1.7, clamp=0.8, impl="ref")
    expected = np_bias_act(x.numpy(), b.numpy(), act=act, alpha=0.3, gain=1.7, clamp=0.8)
    assert_matches(y, expected)
    assert y.abs().max() <= 0.8


DIM_CASES = [(0, [5, 2, 3]), (2, [2, 3, 4, 5]), (-1, [2, 3, 6]), (3, [1, 2, 3, 4]), (1, [7, 5])]


@pytest.mark.parametrize("dim, shape", DIM_CASES)
def test_bias_broadcasts_along_dim(dim, shape):
    x, b = _randn(*shape), _randn(shape[dim], seed=1)
    y = bias_act(x, b, dim=dim, act="lrelu", clamp=2.0)
    assert_matches(y, np_bias_act(x.numpy(), b.numpy(), dim=dim, act="lrelu", clamp=2.0))


def test_no_bias_and_zero_clamp():
    x = _randn(2, 3)
    assert_matches(bias_act(x, act="swish", gain=0.5), np_bias_act(x.numpy(), act="swish", gain=0.5))
    assert torch.equal(bias_act(x, act="tanh", clamp=0), torch.zeros_like(x))


def test_keeps_dtype_of_x():
    x, b = _randn(2, 3).float(), _randn(3, seed=1)  # float64 bias on a float32 input
    y = bias_act(x, b, act="lrelu")
    assert y.dtype == torch.float32
    assert_matches(y.double(), np_bias_act(x.double().numpy(), b.numpy(), act="lrelu"), tol=1e-5)


def test_cuda_impl_on_cpu_equals_ref():
    x, b = _randn(2, 3, 4), _randn(3, seed=1)
    kwargs = dict(act="swish", alpha=0.1, gain=1.3, clamp=1.0)
    assert torch.equal(bias_act(x, b, impl="cuda", **kwargs), bias_act(x, b, impl="ref", **kwargs))


GRAD_CASES = [("linear", None), ("lrelu", None), ("lrelu", 1.0), ("swish", 0.7), ("tanh", None), ("elu", 2.0)]


@pytest.mark.parametrize("act, clamp", GRAD_CASES)
def test_first_and_second_derivatives(act, clamp):
    x = _randn(2, 3, 2).requires_grad_(True)
    b = _randn(3, seed=1).requires_grad_(True)

    def fn(x, b):
        return bias_act(x, b, act=act, gain=1.5, clamp=clamp)

    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(act="gelu"), "unknown activation 'gelu'"),
        (dict(impl="triton"), "impl must be one of"),
        (dict(clamp=-1.0), "clamp must be None or >= 0"),
        (dict(b=torch.zeros(4)), "b must be a 1-D tensor of length"),
        (dict(b=torch.zeros(3), dim=3), "out of range"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(AssertionError, match=message):
        bias_act(torch.zeros(2, 3, 5), **kwargs)
