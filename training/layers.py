"""Layers shared by the generators (StyleGAN2, StyleGAN3, CREPS) and the discriminator.

Equalized learning rate (Karras et al. 2018, Section 4.1): weights are stored N(0, 1) and scaled by He's constant
at run time. `modulate` is the style modulation and demodulation of StyleGAN2 (Karras et al. 2020, Section 2.2,
Eq. 1-3), which StyleGAN2's and StyleGAN3's modulated convolutions and CREPS's modulated dense layers share.

These classes lived in `training.networks_stylegan2`, which still re-exports them: snapshots written before the
move name them by that path, and `training.safe_pickle` resolves both.
"""

from __future__ import annotations

import math
import os
from typing import Literal, NamedTuple

import numpy as np
import torch

from torch_utils import misc
from torch_utils.ops import bias_act, conv2d_resample, upfirdn2d

# The [1, 3, 3, 1] binomial filter used for every 2x resampling (StyleGAN2 paper, Appendix B).
DEFAULT_RESAMPLE_FILTER = (1, 3, 3, 1)


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale `x` to unit root-mean-square along `dim` (the pixel norm applied to z and to embedded labels)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


CPU_FP16_ENV = "GANFORGE_CPU_FP16"  # "1": the float16 blocks run in float16 on the CPU too, as they do on CUDA.


def block_dtype(use_fp16: bool, force_fp32: bool, device: torch.device) -> torch.dtype:
    """float16 for a mixed-precision block on CUDA, or on the CPU with GANFORGE_CPU_FP16=1 (correct but slow, so
    not the default: it is how the CPU tests run the float16 paths); float32 otherwise."""
    if not use_fp16 or force_fp32:
        return torch.float32
    return torch.float16 if device.type == "cuda" or os.environ.get(CPU_FP16_ENV) == "1" else torch.float32


def fp16_resolution(img_resolution: int, num_fp16_res: int) -> int:
    """The lowest resolution that runs in float16: the `num_fp16_res` highest resolutions do, never below 8."""
    return max(2 ** (int(np.log2(img_resolution)) + 1 - num_fp16_res), 8)


# ----------------------------------------------------------------------------
# Style modulation.


class Modulation(NamedTuple):
    """What `modulate` computes: the per-sample weights, and the factors they are made of."""

    weight: torch.Tensor  # [O, I, *k]: the shared weights, prescaled.
    styles: torch.Tensor  # [N, I]: the styles, prescaled.
    dcoefs: torch.Tensor | None  # [N, O, 1, *k] ([N, O] with flat_dcoefs): demodulation; None without it.
    w: torch.Tensor | None  # [N, O, I, *k]: per-sample weights; None when not asked for.


def modulate(
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    prescale: Literal["max", "rms"] | None = None,
    input_gain: torch.Tensor | None = None,
    per_sample_weights: bool = True,
    flat_dcoefs: bool = False,
) -> Modulation:
    """Scale each input channel of the weights by a per-sample style and, optionally, normalize each output
    channel's scaled weights to unit L2 norm (StyleGAN2 paper, Eq. 1 and 3).

    Args:
        weight:             Shared weights [O, I, *k]: a convolution's [O, I, kh, kw] or a dense layer's [O, I].
        styles:             Per-sample input-channel scales [N, I].
        demodulate:         Compute the demodulation coefficients (Eq. 3) and, with `per_sample_weights`, apply
                            them.
        prescale:           Before modulating, rescale the weights and the styles; demodulation divides any such
                            per-sample constant out again, so this only keeps float16 products in range, and it
                            applies only with `demodulate`. 'max': weights to unit maximum per output channel
                            times 1/sqrt(fan-in), styles to unit maximum per sample (StyleGAN2 and CREPS, in
                            float16 only). 'rms': weights to unit RMS per output channel, styles to unit RMS over
                            the whole batch (StyleGAN3, always). The two round differently, so they stay apart.
        input_gain:         Scalar or [N, I] multiplier of the input, folded into the per-sample weights after
                            demodulation (StyleGAN3's magnitude normalization).
        per_sample_weights: Compute `w`. False returns only the factors, for scaling the activations before and
                            after a shared convolution instead (StyleGAN2's unfused path); `input_gain` must then
                            be None.
        flat_dcoefs:        Reduce the demodulation coefficients to [N, O] and reshape them to multiply (StyleGAN2)
                            instead of keeping the reduced dimensions (StyleGAN3, CREPS). The values and first-order
                            gradients are the same; the autograd graphs differ by one reshape, which rounds second-
                            order gradients (the path-length penalty) differently, so each network keeps its own.

    Returns:
        Modulation(weight, styles, dcoefs, w).
    """
    batch_size, in_channels = styles.shape
    out_channels = weight.shape[0]
    assert weight.ndim >= 2 and weight.shape[1] == in_channels, (
        f"weight {list(weight.shape)} vs styles [N, {in_channels}]"
    )
    assert prescale in ("max", "rms", None), f"prescale must be 'max', 'rms' or None, not {prescale!r}"
    assert per_sample_weights or input_gain is None, "input_gain is folded into the per-sample weights"
    kernel_ones = [1] * (weight.ndim - 2)  # Broadcast over the kernel positions.
    weight_dims = list(range(1, weight.ndim))  # An output channel's weights: [I, *k].

    if demodulate and prescale == "max":
        fan_in = weight[0].numel()
        weight = weight * (1 / np.sqrt(fan_in) / weight.norm(float("inf"), dim=weight_dims, keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    elif demodulate and prescale == "rms":
        weight = weight * weight.square().mean(dim=weight_dims, keepdim=True).rsqrt()
        styles = styles * styles.square().mean().rsqrt()

    w = dcoefs = None
    if demodulate or per_sample_weights:
        w = weight.unsqueeze(0) * styles.reshape(batch_size, 1, in_channels, *kernel_ones)  # [N, O, I, *k]
    if demodulate:
        dcoefs = (w.square().sum(dim=[d + 1 for d in weight_dims], keepdim=not flat_dcoefs) + 1e-8).rsqrt()
    if not per_sample_weights:
        return Modulation(weight, styles, dcoefs, None)
    if demodulate:
        w = w * (dcoefs.reshape(batch_size, out_channels, 1, *kernel_ones) if flat_dcoefs else dcoefs)
    if input_gain is not None:
        w = w * input_gain.expand(batch_size, in_channels).reshape(batch_size, 1, in_channels, *kernel_ones)
    return Modulation(weight, styles, dcoefs, w)


# ----------------------------------------------------------------------------
# Layers with equalized learning rate.


class FullyConnectedLayer(torch.nn.Module):
    """Dense layer with equalized learning rate, optional learning-rate multiplier and fused activation."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        weight_init: float = 1.0,
        bias_init: float | list[float] = 0.0,
    ):
        """
        Args:
            lr_multiplier: Scales the effective learning rate: weights are stored divided by it.
            weight_init:   Standard deviation of the initial (effective, He-scaled) weights; 0 starts at zero.
            bias_init:     Initial bias, a scalar or one value per output feature.
        """
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) * (weight_init / lr_multiplier))
        bias_values = torch.broadcast_to(torch.as_tensor(bias_init, dtype=torch.float32), [out_features])
        self.bias = torch.nn.Parameter(bias_values / lr_multiplier) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, in_features] -> [N, out_features]."""
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype) * self.bias_gain if self.bias_gain != 1 else b.to(x.dtype)
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        x = x.matmul(w.t())
        return bias_act.bias_act(x, b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(torch.nn.Module):
    """Convolution with equalized learning rate, optional 2x resampling, fused bias, activation and clamp."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str = "linear",
        up: int = 1,
        down: int = 1,
        resample_filter: tuple[int, ...] = DEFAULT_RESAMPLE_FILTER,
        conv_clamp: float | None = None,
    ):
        """
        Args:
            conv_clamp: Clamp the output to [-conv_clamp, conv_clamp] (keeps float16 finite); None: no clamp.
        """
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size**2)
        self.act_gain = bias_act.activation_funcs[activation].def_gain
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        """[N, in, H, W] -> [N, out, H*up/down, W*up/down]."""
        w = self.weight * self.weight_gain
        x = conv2d_resample.conv2d_resample(
            x,
            w.to(x.dtype),
            f=self.resample_filter,
            up=self.up,
            down=self.down,
            padding=self.padding,
            flip_weight=(self.up == 1),
        )
        b = self.bias.to(x.dtype) if self.bias is not None else None
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act.bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, activation={self.activation}, "
            f"up={self.up}, down={self.down}"
        )


class MappingNetwork(torch.nn.Module):
    """Maps latents z (and labels c) to intermediate latents w; tracks the average w for truncation."""

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: int | None,
        num_layers: int = 8,
        embed_features: int | None = None,
        layer_features: int | None = None,
        activation: str = "lrelu",
        lr_multiplier: float = 0.01,
        w_avg_beta: float | None = 0.998,
    ):
        """
        Args:
            z_dim:          Latent size; 0 for the discriminator's label-only mapping.
            c_dim:          Label size; 0 for unconditional.
            w_dim:          Output size.
            num_ws:         Broadcast w to this many copies, [N, num_ws, w_dim]; None returns [N, w_dim].
            num_layers:     Number of dense layers.
            embed_features: Label embedding size; None means w_dim.
            layer_features: Hidden layer size; None means w_dim.
            activation:     Activation of every dense layer.
            lr_multiplier:  Learning-rate multiplier of the dense layers (the paper's 0.01 for the mapping).
            w_avg_beta:     Decay of the tracked average w per update; None disables tracking.
        """
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta

        embed_features = 0 if c_dim == 0 else (w_dim if embed_features is None else embed_features)
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(
                features[idx], features[idx + 1], activation=activation, lr_multiplier=lr_multiplier
            )
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: torch.Tensor | None,
        c: torch.Tensor | None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
    ) -> torch.Tensor:
        """Map z [N, z_dim] and c [N, c_dim] to ws [N, num_ws, w_dim] (or [N, w_dim] when num_ws is None).

        Args:
            truncation_psi:    Pull w toward the tracked average: w_avg + psi * (w - w_avg); 1 disables.
            truncation_cutoff: Truncate only the first this-many ws; None truncates all.
            update_emas:       Update the tracked average with this batch (training only).
        """
        parts = []
        if self.z_dim > 0:
            misc.assert_shape(z, [None, self.z_dim])
            parts.append(normalize_2nd_moment(z.to(torch.float32)))
        if self.c_dim > 0:
            misc.assert_shape(c, [None, self.c_dim])
            parts.append(normalize_2nd_moment(self.embed(c.to(torch.float32))))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)

        if update_emas and self.w_avg_beta is not None and self.num_ws is not None:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])  # [N, num_ws, w_dim]
        if truncation_psi != 1:
            assert self.num_ws is not None and self.w_avg_beta is not None, "truncation needs a tracked w_avg"
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            truncated = self.w_avg.lerp(x[:, :cutoff], truncation_psi)
            x = torch.cat([truncated, x[:, cutoff:]], dim=1)
        return x

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"


class SkipOutputLayer(torch.nn.Module):
    """Modulated linear layer without demodulation or activation whose output joins a sum across blocks:
    StyleGAN2's toRGB (a 1x1 convolution, `ToRGBLayer`) and CREPS's toResidual (a dense layer at every position,
    `ToResidual`). Subclasses name the modulated operation (`modulated`) and the clamp's attribute (`clamp`), which
    the published networks spell differently (`conv_clamp`, `fc_clamp`)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_shape: tuple[int, ...] = ()):
        """
        Args:
            kernel_shape: The weights' shape after [out_channels, in_channels]: (k, k) for a convolution, () dense.
        """
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, *kernel_shape]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        # He's constant, applied to the styles: without demodulation it scales the product just the same.
        self.weight_gain = 1 / np.sqrt(in_channels * math.prod(kernel_shape))

    @property
    def clamp(self) -> float | None:
        """Clamp of the output, [-clamp, clamp]; None: no clamp."""
        raise NotImplementedError

    def modulated(self, x: torch.Tensor, styles: torch.Tensor, **kwargs) -> torch.Tensor:
        """The modulated operation without demodulation: x [N, in, H, W], styles [N, in] -> [N, out, H, W]."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, w: torch.Tensor, **kwargs) -> torch.Tensor:
        """x [N, in, H, W], w [N, w_dim] -> [N, out, H, W]; `kwargs` go to `modulated`."""
        x = self.modulated(x, self.affine(w) * self.weight_gain, **kwargs)
        return bias_act.bias_act(x, self.bias.to(x.dtype), clamp=self.clamp)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"
