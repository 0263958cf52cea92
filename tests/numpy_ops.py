"""Independent float64 numpy references for torch_utils/ops, computed straight from each op's definition.

Nothing here calls torch: upsampling reads the original samples by index instead of building a zero-inserted
image, and convolutions sum over taps explicitly, so a shared mistake with the torch code is unlikely.
"""

import math

import numpy as np

SELU_ALPHA = 1.6732632423543772848170429916717  # Klambauer et al. 2017, eq. 2
SELU_SCALE = 1.0507009873554804934193349852946

# name -> (formula(x, alpha), default alpha, default gain), as specified for bias_act.
ACTIVATIONS = {
    "linear": (lambda x, a: x, 0.0, 1.0),
    "relu": (lambda x, a: np.maximum(x, 0), 0.0, math.sqrt(2)),
    "lrelu": (lambda x, a: np.where(x >= 0, x, a * x), 0.2, math.sqrt(2)),
    "tanh": (lambda x, a: np.tanh(x), 0.0, 1.0),
    "sigmoid": (lambda x, a: 1 / (1 + np.exp(-x)), 0.0, 1.0),
    "elu": (lambda x, a: np.where(x > 0, x, np.expm1(np.minimum(x, 0))), 0.0, 1.0),
    "selu": (lambda x, a: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0))), 0.0, 1.0),
    "softplus": (lambda x, a: np.logaddexp(0, x), 0.0, 1.0),
    "swish": (lambda x, a: x / (1 + np.exp(-x)), 0.0, math.sqrt(2)),
}


def assert_matches(actual, expected: np.ndarray, tol: float = 1e-10) -> None:
    """Assert that a torch result has the expected shape and values (float64 tolerance)."""
    actual = actual.detach().cpu().numpy()
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol)


def _xy(v) -> tuple[int, int]:
    """Return an int-or-(x, y) argument as (x, y)."""
    return (v, v) if isinstance(v, int) else tuple(v)


def _pad4(p) -> tuple[int, int, int, int]:
    """Return an int, (x, y) or (x0, x1, y0, y1) padding as (x0, x1, y0, y1)."""
    if isinstance(p, int):
        return p, p, p, p
    return (p[0], p[0], p[1], p[1]) if len(p) == 2 else tuple(p)


def np_bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None) -> np.ndarray:
    """x + b along dim, then activation, gain and clamp."""
    formula, def_alpha, def_gain = ACTIVATIONS[act]
    x = np.asarray(x, dtype=np.float64)
    if b is not None:
        x = np.moveaxis(np.moveaxis(x, dim, -1) + b, -1, dim)  # b runs along the last axis after the move
    y = formula(x, def_alpha if alpha is None else alpha) * (def_gain if gain is None else gain)
    return y if clamp is None else np.clip(y, -clamp, clamp)


def _upsampled_padded(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, up: tuple, pad0: tuple) -> np.ndarray:
    """Read x upsampled by zero insertion and padded, at the given rows and columns: [N, C, len(rows), len(cols)].

    In the upsampled image, position i holds x[i / up] when i % up == 0 and zero otherwise; padding shifts
    positions by the leading pad amount, and anything outside the upsampled image is zero.
    """
    (upx, upy), (px0, py0) = up, pad0
    in_h, in_w = x.shape[2:]
    r, c = rows - py0, cols - px0  # positions in the upsampled, unpadded image
    row_ok = (r >= 0) & (r < in_h * upy) & (r % upy == 0)
    col_ok = (c >= 0) & (c < in_w * upx) & (c % upx == 0)
    samples = x[:, :, np.where(row_ok, r // upy, 0)][:, :, :, np.where(col_ok, c // upx, 0)]
    return samples * row_ok[:, None] * col_ok[None, :]


def np_upfirdn2d(x, f=None, up=1, down=1, padding=0, flip_filter=False, gain=1.0) -> np.ndarray:
    """Upsample by zero insertion, pad (negative crops), FIR-filter ('valid', true convolution), decimate."""
    x = np.asarray(x, dtype=np.float64)
    f = np.ones([1, 1]) if f is None else np.asarray(f, dtype=np.float64)
    if f.ndim == 1:
        f = np.outer(f, f)  # a separable filter: f[ky] * f[kx]
    fh, fw = f.shape
    upx, upy = _xy(up)
    downx, downy = _xy(down)
    px0, px1, py0, py1 = _pad4(padding)
    out_h = (x.shape[2] * upy + py0 + py1 - fh) // downy + 1
    out_w = (x.shape[3] * upx + px0 + px1 - fw) // downx + 1

    y = np.zeros([x.shape[0], x.shape[1], out_h, out_w])
    for ky in range(fh):  # ky, kx: offset inside the window that starts at (oy * downy, ox * downx)
        for kx in range(fw):
            # A true convolution weighs window offset k with tap f[size - 1 - k]; a correlation with f[k].
            tap = f[ky, kx] if flip_filter else f[fh - 1 - ky, fw - 1 - kx]
            rows = np.arange(out_h) * downy + ky
            cols = np.arange(out_w) * downx + kx
            y += tap * _upsampled_padded(x, rows, cols, (upx, upy), (px0, py0))
    return y * gain


def np_conv2d_valid(x: np.ndarray, w: np.ndarray, groups: int = 1, flip_weight: bool = True) -> np.ndarray:
    """'valid' grouped 2-D correlation with w (flip_weight=True) or true convolution (False)."""
    batch, _, in_h, in_w = x.shape
    cout, cin_g, kh, kw = w.shape
    cout_g = cout // groups
    out_h, out_w = in_h - kh + 1, in_w - kw + 1
    y = np.zeros([batch, cout, out_h, out_w])
    for g in range(groups):
        xs = x[:, g * cin_g : (g + 1) * cin_g]
        ws = w[g * cout_g : (g + 1) * cout_g]
        for ky in range(kh):
            for kx in range(kw):
                tap = ws[:, :, ky, kx] if flip_weight else ws[:, :, kh - 1 - ky, kw - 1 - kx]  # [cout_g, cin_g]
                window = xs[:, :, ky : ky + out_h, kx : kx + out_w]
                y[:, g * cout_g : (g + 1) * cout_g] += np.einsum("oi,nihw->nohw", tap, window)
    return y


def np_conv2d_resample(
    x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True, flip_filter=False
) -> np.ndarray:
    """The conv2d_resample definition: widen padding, upsample (or pad), valid conv, downsample."""
    x, w = np.asarray(x, dtype=np.float64), np.asarray(w, dtype=np.float64)
    fh, fw = (1, 1) if f is None else (f.shape[0], f.shape[-1])
    px0, px1, py0, py1 = _pad4(padding)
    if up > 1:
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    x = np_upfirdn2d(x, f if up > 1 else None, up=up, padding=(px0, px1, py0, py1), flip_filter=flip_filter, gain=up**2)
    x = np_conv2d_valid(x, w, groups=groups, flip_weight=flip_weight)
    if down > 1:
        x = np_upfirdn2d(x, f, down=down, flip_filter=flip_filter)
    return x


def np_filtered_lrelu(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter) -> np.ndarray:
    """Bias, upsample (gain up**2), leaky ReLU * gain, clamp, downsample."""
    x = np.asarray(x, dtype=np.float64)
    if b is not None:
        x = x + np.asarray(b)[None, :, None, None]
    x = np_upfirdn2d(x, fu, up=up, padding=padding, flip_filter=flip_filter, gain=up**2)
    x = np.where(x >= 0, x, slope * x) * gain
    if clamp is not None:
        x = np.clip(x, -clamp, clamp)
    return np_upfirdn2d(x, fd, down=down, flip_filter=flip_filter)
