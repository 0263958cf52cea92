"""Tests for the CUDA kernels of bias_act, upfirdn2d and filtered_lrelu, and for torch_utils.custom_ops.

Three groups:
  * custom_ops on CPU: the one-time fallback, the build key, dispatch (seconds, no compiler needed).
  * The Python side of the kernel path on CPU, with a stand-in for the compiled modules that implements each
    kernel's contract (documented in torch_utils/ops/cuda/*.h) from the reference ops: checks the custom ops'
    autograd (transposed paddings, derivative orders, the stored mask) with gradcheck in float64.
  * The kernels themselves (`pytest -n0 -m cuda tests/test_ops_cuda.py`, skipped without a GPU): each op against
    its reference over the reference tests' grids of options, values and gradients, float32 and float16, with
    the output buffers poisoned with NaN first.
"""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_ops_bias_act import DIM_CASES
from test_ops_filtered_lrelu import CASES as FLRELU_CASES
from test_ops_filtered_lrelu import _filter as flrelu_filter
from test_ops_upfirdn2d import CASES as UPFIRDN_CASES
from test_ops_upfirdn2d import FILTERS as UPFIRDN_FILTERS

from torch_utils import custom_ops
from torch_utils.ops import bias_act as BA
from torch_utils.ops import filtered_lrelu as FL
from torch_utils.ops import upfirdn2d as U

ACTS = sorted(BA.activation_funcs)
_needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _randn(*shape, seed=0, scale=1.0, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """Random tensor from a fixed seed (generated on the CPU, so every device sees the same numbers)."""
    x = scale * torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return x.to(device=device, dtype=dtype)


def _upfirdn_filter(name):
    """The reference tests' filter `name` as setup_filter returns it, or None."""
    taps = UPFIRDN_FILTERS[name]
    return None if taps is None else U.setup_filter(taps, normalize=False)


# ----------------------------------------------------------------------------
# custom_ops on CPU


@pytest.fixture
def fresh_cache():
    """Empty get_kernel's per-process cache before and after the test."""
    custom_ops.get_kernel.cache_clear()
    yield
    custom_ops.get_kernel.cache_clear()


def test_failed_build_warns_once_and_returns_none(monkeypatch, fresh_cache):
    calls = []

    def failing_build(name, verbose=False):
        calls.append(name)
        raise RuntimeError("Error building extension 'x':\nfoo.cu(3): error: identifier 'bar' is undefined\nmore")

    monkeypatch.setattr(custom_ops, "build", failing_build)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert custom_ops.get_kernel("bias_act") is None
        assert custom_ops.get_kernel("bias_act") is None  # cached: no second build, no second warning
    assert calls == ["bias_act"]
    assert len(caught) == 1 and issubclass(caught[0].category, custom_ops.KernelBuildWarning)
    message = str(caught[0].message)
    assert "bias_act" in message and "identifier 'bar' is undefined" in message  # the op and the reason
    assert "--build-only" in message and custom_ops.ENV_ENABLE in message  # the fix


def test_missing_toolkit_falls_back(monkeypatch, tmp_path, fresh_cache):
    # A real build attempt with no usable CUDA toolkit must warn, not raise.
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    from torch.utils import cpp_extension

    def load(**kwargs):
        raise OSError("CUDA_HOME environment variable is not set. Please set it to your CUDA install root.")

    monkeypatch.setattr(cpp_extension, "load", load)
    with pytest.warns(custom_ops.KernelBuildWarning, match="CUDA_HOME environment variable is not set"):
        assert custom_ops.get_kernel("upfirdn2d") is None


def test_no_gpu_and_no_arch_list_falls_back(monkeypatch, fresh_cache):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(custom_ops.KernelBuildWarning, match="TORCH_CUDA_ARCH_LIST is not set"):
        assert custom_ops.get_kernel("filtered_lrelu") is None


def test_build_key_changes_with_sources_and_arch(tmp_path):
    sources = custom_ops.source_paths("bias_act")
    key = custom_ops.build_key("bias_act", "9.0")
    assert key == custom_ops.build_key("bias_act", "9.0")
    assert key != custom_ops.build_key("bias_act", "8.6")
    assert key != custom_ops.build_key("upfirdn2d", "9.0")
    edited = []
    for path in sources:
        copy = tmp_path / path.name
        copy.write_bytes(path.read_bytes() + (b"// edited\n" if path.suffix == ".cu" else b""))
        edited.append(copy)
    assert custom_ops.build_key("bias_act", "9.0", edited) != key
    headers = [p for p in sources if p.suffix in (".h", ".cuh")]
    assert {p.name for p in headers} >= {"bias_act.h", "common.h"}  # headers count too


def test_build_folder_is_under_torch_extensions_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert custom_ops.build_root() == tmp_path


def test_kernels_are_off_by_default(monkeypatch):
    monkeypatch.delenv(custom_ops.ENV_ENABLE, raising=False)
    assert not custom_ops.kernels_enabled()
    monkeypatch.setenv(custom_ops.ENV_ENABLE, "1")
    assert custom_ops.kernels_enabled()


def test_cpu_tensors_use_the_reference_path(monkeypatch):
    monkeypatch.setenv(custom_ops.ENV_ENABLE, "1")

    def no_build(name):
        raise AssertionError(f"CPU tensors must not build or load the {name} kernel")

    monkeypatch.setattr(custom_ops, "get_kernel", no_build)
    x, b, f = _randn(1, 2, 6, 6), _randn(2, seed=1), U.setup_filter([1, 3, 3, 1])
    assert torch.equal(BA.bias_act(x, b, act="lrelu"), BA.bias_act(x, b, act="lrelu", impl="ref"))
    assert torch.equal(U.upfirdn2d(x, f, up=2, padding=2), U.upfirdn2d(x, f, up=2, padding=2, impl="ref"))
    kwargs = dict(b=b, up=2, down=2, padding=2, clamp=0.5)
    assert torch.equal(FL.filtered_lrelu(x, f, f, **kwargs), FL.filtered_lrelu(x, f, f, impl="ref", **kwargs))


# ----------------------------------------------------------------------------
# The kernel path's Python side on CPU, with a stand-in for the compiled modules.


class StandInKernels:
    """The compiled modules' functions, implemented from the reference ops as each .h file specifies."""

    @staticmethod
    def bias_act(x, b, g, dim, act, order, alpha, gain, clamp):
        """clamp(f(x + b) * gain), or g times its order-th derivative in z = x + b (cuda/bias_act.h)."""
        name = list(BA.activation_funcs)[act]
        clamp = None if clamp < 0 else clamp
        z = x if b is None else x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
        fn = lambda z: BA._bias_act_ref(z, None, 0, name, alpha, gain, clamp)  # noqa: E731
        # The op is elementwise, so the gradient of its sum is its derivative. torch.func works inside a custom
        # op, where autograd does not record.
        for _ in range(order):
            fn = torch.func.grad(lambda z, fn=fn: fn(z).sum())
        return fn(z) if order == 0 else g * fn(z)

    @staticmethod
    def upfirdn2d(x, w, upx, upy, downx, downy, px0, px1, py0, py1, gain):
        """upfirdn2d correlating with w (cuda/upfirdn2d.h)."""
        return U._upfirdn2d_ref(x, w, (upx, upy), (downx, downy), (px0, px1, py0, py1), True, gain)

    @staticmethod
    def filtered_lrelu(x, b, wu, wd, up, down, px0, px1, py0, py1, gain, slope, clamp):
        """(y, mask) with the mask over the upsampled region the outputs read (cuda/filtered_lrelu.h)."""
        u = U._upfirdn2d_ref(x + b[None, :, None, None], wu, up, 1, (px0, px1, py0, py1), True, up * up)
        out_h, out_w = (u.shape[2] - wd.shape[0]) // down + 1, (u.shape[3] - wd.shape[1]) // down + 1
        u = u[:, :, : (out_h - 1) * down + wd.shape[0], : (out_w - 1) * down + wd.shape[1]]
        v = F.leaky_relu(u, slope) * gain
        mask = (u > 0).to(torch.uint8)
        if clamp >= 0:
            mask[(v < -clamp) | (v > clamp)] = 2
            v = v.clamp(-clamp, clamp)
        return U._upfirdn2d_ref(v, wd, 1, down, 0, True, 1), mask


@pytest.fixture
def stand_in(monkeypatch):
    """Route the kernel path's custom ops to StandInKernels."""
    monkeypatch.setattr(custom_ops, "get_kernel", lambda name: StandInKernels)


def _check_values_and_grads(fast, ref, inputs, check_gradgrad=True):
    """fast(*inputs) equals ref(*inputs), with equal gradients; gradcheck and gradgradcheck on fast."""
    inputs = [t.detach().requires_grad_(True) for t in inputs]
    y_fast, y_ref = fast(*inputs), ref(*inputs)
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-10, atol=1e-10)
    dy = _randn(*y_ref.shape, seed=7)
    g_fast = torch.autograd.grad(y_fast, inputs, dy)
    g_ref = torch.autograd.grad(y_ref, inputs, dy)
    for a, b in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(fast, inputs)
    if check_gradgrad:
        assert torch.autograd.gradgradcheck(fast, inputs)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("clamp", [None, 0.8])
def test_stand_in_bias_act(stand_in, act, clamp):
    kwargs = dict(act=act, alpha=0.3, gain=1.7, clamp=clamp)

    def fast(x, b):
        return BA._bias_act_cuda(x, b, dim=1, **kwargs)

    def ref(x, b):
        return BA._bias_act_ref(x, b, dim=1, **kwargs)

    _check_values_and_grads(fast, ref, [_randn(2, 3, 4, seed=1, scale=2), _randn(3, seed=2)])


@pytest.mark.parametrize("dim, shape", DIM_CASES)
def test_stand_in_bias_act_dims(stand_in, dim, shape):
    def fast(x, b):
        return BA._bias_act_cuda(x, b, dim=dim, act="swish", alpha=None, gain=None, clamp=1.0)

    def ref(x, b):
        return BA._bias_act_ref(x, b, dim=dim, act="swish", alpha=None, gain=None, clamp=1.0)

    _check_values_and_grads(fast, ref, [_randn(*shape, scale=2), _randn(shape[dim], seed=1)], check_gradgrad=False)


def test_stand_in_bias_act_third_derivative_is_refused(stand_in):
    x = _randn(2, 3, scale=2).requires_grad_(True)
    y = BA._bias_act_cuda(x, None, 1, "tanh", None, None, None)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="third derivatives"):
        torch.autograd.grad(gg.sum(), x)


@pytest.mark.parametrize("name, up, down, padding, flip_filter, gain, shape", UPFIRDN_CASES)
def test_stand_in_upfirdn2d(stand_in, name, up, down, padding, flip_filter, gain, shape):
    f = _upfirdn_filter(name)
    kwargs = dict(up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)

    def fast(x):
        return U._upfirdn2d_cuda(x, f, **kwargs)

    def ref(x):
        return U._upfirdn2d_ref(x, f, **kwargs)

    _check_values_and_grads(fast, ref, [_randn(*shape)])


@pytest.mark.parametrize("up, down, fu, fd, padding, gain, slope, clamp, flip_filter, bias", FLRELU_CASES)
def test_stand_in_filtered_lrelu(stand_in, up, down, fu, fd, padding, gain, slope, clamp, flip_filter, bias):
    fu, fd = flrelu_filter(fu, 2), flrelu_filter(fd, 3)
    args = (up, down, padding, gain, slope, clamp, flip_filter)

    def fast(x, b=None):
        return FL._filtered_lrelu_cuda(x, fu, fd, b, *args)

    def ref(x, b=None):
        return FL._filtered_lrelu_ref(x, fu, fd, b, *args)

    _check_values_and_grads(fast, ref, [_randn(1, 3, 5, 6)] + ([_randn(3, seed=1)] if bias else []))


def test_fake_implementations_give_the_real_shapes(stand_in):
    # torch.compile traces with these; they must agree with the kernels' outputs.
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, b, f = _randn(2, 3, 7, 6), _randn(3, seed=1), U.setup_filter(np.ones(8)).double()
    calls = [
        lambda x: BA._bias_act_cuda(x, b, 1, "lrelu", None, None, 0.5),
        lambda x: U._upfirdn2d_cuda(x, f, (2, 3), (3, 1), (1, 2, -1, 4), False, 2.0),
        lambda x: FL._filtered_lrelu_cuda(x, f, f, b, 4, 2, (9, 8, 7, 10), 1.4, 0.2, None, False),
    ]
    for call in calls:
        real = call(x)
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fake = call(mode.from_tensor(x))
        assert fake.shape == real.shape and fake.dtype == real.dtype


# ----------------------------------------------------------------------------
# The kernels on a GPU: pytest -n0 -m cuda tests/test_ops_cuda.py


@pytest.fixture
def kernels(monkeypatch):
    """Enable the kernels and skip when one cannot be built (the build warning says why)."""
    monkeypatch.setenv(custom_ops.ENV_ENABLE, "1")
    for name in custom_ops.KERNELS:
        if custom_ops.get_kernel(name) is None:
            pytest.fail(f"the {name} kernel did not build; see the warning above")


def _poison_allocator(nbytes: int, count: int = 8) -> None:
    """Leave NaN-filled blocks of nbytes in the caching allocator, so that fresh outputs start as NaN."""
    blocks = [torch.full([max(nbytes // 4, 1)], float("nan"), device="cuda") for _ in range(count)]
    del blocks


def _assert_close(actual, expected, dtype):
    """actual (any dtype) against a float64 expectation, at the tolerance of dtype's kernel."""
    rtol = 1e-3 if dtype == torch.float16 else 1e-5
    scale = expected.abs().max().item() if expected.numel() else 0.0
    assert torch.isfinite(actual).all(), "the kernel left part of its output unwritten (NaN poison survived)"
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=rtol * max(scale, 1e-3))


def _compare(fast, ref, inputs, dtype):
    """fast on dtype inputs against ref in float64 on the same (rounded) values: outputs and gradients."""
    inputs = [t.to(dtype) for t in inputs]  # rounds to dtype once, so both sides see identical values
    fast_in = [t.detach().requires_grad_(True) for t in inputs]
    ref_in = [t.detach().double().requires_grad_(True) for t in inputs]
    y_ref = ref(*ref_in)
    _poison_allocator(y_ref.numel() * y_ref.element_size())
    y_fast = fast(*fast_in)
    assert y_fast.dtype == dtype and y_fast.shape == y_ref.shape
    _assert_close(y_fast, y_ref, dtype)
    dy = _randn(*y_ref.shape, seed=7, device="cuda").to(dtype)
    grads = zip(torch.autograd.grad(y_fast, fast_in, dy), torch.autograd.grad(y_ref, ref_in, dy.double()), strict=True)
    for a, b in grads:
        _assert_close(a, b, dtype)


DTYPES = [torch.float32, torch.float16]


@pytest.mark.cuda
@_needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("clamp", [None, 0.8])
def test_cuda_bias_act(kernels, dtype, act, clamp):
    kwargs = dict(act=act, alpha=0.3, gain=1.7, clamp=clamp)
    x, b = _randn(4, 16, 9, 7, scale=2, device="cuda"), _randn(16, seed=1, device="cuda")
    _compare(
        lambda x, b: BA.bias_act(x, b, **kwargs), lambda x, b: BA.bias_act(x, b, impl="ref", **kwargs), [x, b], dtype
    )


@pytest.mark.cuda
@_needs_gpu
@pytest.mark.parametrize("dim, shape", DIM_CASES)
def test_cuda_bias_act_dims(kernels, dim, shape):
    x, b = _randn(*shape, scale=2, device="cuda"), _randn(shape[dim], seed=1, device="cuda")
    kwargs = dict(dim=dim, act="lrelu", clamp=2.0)
    _compare(
        lambda x, b: BA.bias_act(x, b, **kwargs),
        lambda x, b: BA.bias_act(x, b, impl="ref", **kwargs),
        [x, b],
        torch.float32,
    )


@pytest.mark.cuda
@_needs_gpu
@pytest.mark.parametrize("act, clamp", [("lrelu", None), ("lrelu", 1.0), ("swish", 0.7), ("tanh", None), ("elu", 2.0)])
def test_cuda_bias_act_second_derivatives(kernels, act, clamp):
    x, b = _randn(2, 3, 2, scale=2, device="cuda"), _randn(3, seed=1, device="cuda")
    x.requires_grad_(True)
    b.requires_grad_(True)

    def fn(x, b):
        return BA.bias_act(x, b, act=act, gain=1.5, clamp=clamp)

    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


@pytest.mark.cuda
@_needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, up, down, padding, flip_filter, gain, shape", UPFIRDN_CASES)
def test_cuda_upfirdn2d(kernels, dtype, name, up, down, padding, flip_filter, gain, shape):
    f = _upfirdn_filter(name)
    f = None if f is None else f.cuda()
    kwargs = dict(up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)
    x = _randn(*[shape[0], shape[1] * 8, shape[2] * 3, shape[3] * 3], device="cuda")  # larger than one block
    _compare(lambda x: U.upfirdn2d(x, f, **kwargs), lambda x: U.upfirdn2d(x, f, impl="ref", **kwargs), [x], dtype)


@pytest.mark.cuda
@_needs_gpu
@pytest.mark.parametrize("seed", range(8))
def test_cuda_upfirdn2d_random_configs(kernels, seed):
    rng = np.random.default_rng(seed)
    up, down = rng.integers(1, 9, size=2).tolist(), rng.integers(1, 9, size=2).tolist()  # factors 1-8
    taps = rng.uniform(-1, 1, size=rng.integers(1, 13, size=rng.integers(1, 3)))
    f = U.setup_filter(taps, normalize=False, separable=taps.ndim == 1 and rng.random() < 0.5).cuda()
    fh, fw = f.shape[0], f.shape[-1]
    x = _randn(2, 5, int(rng.integers(fh + 2, fh + 20)), int(rng.integers(fw + 2, fw + 20)), seed=seed, device="cuda")
    kwargs = dict(up=up, down=down, padding=rng.integers(-1, 6, size=4).tolist(), flip_filter=bool(rng.random() < 0.5))
    _compare(
        lambda x: U.upfirdn2d(x, f, **kwargs), lambda x: U.upfirdn2d(x, f, impl="ref", **kwargs), [x], torch.float32
    )


@pytest.mark.cuda
@_needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("up, down, fu, fd, padding, gain, slope, clamp, flip_filter, bias", FLRELU_CASES)
def test_cuda_filtered_lrelu(kernels, dtype, up, down, fu, fd, padding, gain, slope, clamp, flip_filter, bias):
    fu, fd = (None if f is None else f.cuda() for f in (flrelu_filter(fu, 2), flrelu_filter(fd, 3)))
    args = (up, down, padding, gain, slope, clamp, flip_filter)
    x, b = _randn(2, 12, 21, 26, device="cuda"), _randn(12, seed=1, device="cuda")  # several tiles per plane

    def fast(x, b=None):
        return FL.filtered_lrelu(x, fu, fd, b, *args)

    def ref(x, b=None):
        return FL.filtered_lrelu(x, fu, fd, b, *args, impl="ref")

    _compare(fast, ref, [x, b] if bias else [x], dtype)


@pytest.mark.cuda
@_needs_gpu
def test_cuda_filtered_lrelu_stylegan3_shapes(kernels):
    # The 256x256 StyleGAN3-T layers: separable 12-tap filters, up 2, down 2, 10 pixels of margin.
    f = U.setup_filter(np.hanning(12), device="cuda", separable=True)
    x, b = _randn(2, 64, 36, 36, device="cuda"), _randn(64, seed=1, device="cuda")
    kwargs = dict(up=2, down=2, padding=(11, 10, 11, 10), gain=2**0.5, clamp=256.0)
    _compare(
        lambda x, b: FL.filtered_lrelu(x, f, f, b, **kwargs),
        lambda x, b: FL.filtered_lrelu(x, f, f, b, impl="ref", **kwargs),
        [x, b],
        torch.float32,
    )


@pytest.mark.cuda
@_needs_gpu
def test_cuda_ops_pass_opcheck_and_compile(kernels):
    # torch.library's own checks of the custom ops' schemas, fake implementations and autograd registration.
    x, b = _randn(2, 4, 8, 8, device="cuda"), _randn(4, seed=1, device="cuda")
    w = torch.ones([3, 3], device="cuda") / 9
    f = U.setup_filter([1, 3, 3, 1], device="cuda")
    torch.library.opcheck(BA._bias_act_op, (x.float(), b.float(), 1, BA.ACT_IDS["lrelu"], 0.2, 1.4, -1.0))
    torch.library.opcheck(U._upfirdn2d_op, (x.float(), w, 2, 2, 1, 1, 1, 1, 1, 1, 1.0))
    torch.library.opcheck(FL._filtered_lrelu_op, (x.float(), b.float(), f, f, 2, 2, 2, 2, 2, 2, 1.4, 0.2, -1.0, False))

    def fn(x):
        return FL.filtered_lrelu(BA.bias_act(x, b, act="lrelu"), f, f, up=2, down=2, padding=2)

    torch.testing.assert_close(torch.compile(fn)(x), fn(x))
