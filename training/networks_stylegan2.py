"""StyleGAN2 generator and discriminator.

Per "Analyzing and Improving the Image Quality of StyleGAN" (Karras et al., CVPR 2020) with the mixed-precision
and equalized-learning-rate details of StyleGAN2-ADA (Karras et al., NeurIPS 2020). Parameter and buffer names
and shapes follow the published StyleGAN2-ADA / StyleGAN3 pickles (`mapping.fc0.weight`, `synthesis.b4.const`,
`b64.fromrgb.weight`, `b4.out.weight`, ...) so published weights can be copied in by name.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from torch_utils import misc
from torch_utils.ops import bias_act, conv2d_resample, fma, upfirdn2d

# The [1, 3, 3, 1] binomial filter used for every 2x resampling (paper, Appendix B).
DEFAULT_RESAMPLE_FILTER = (1, 3, 3, 1)


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale `x` to unit root-mean-square along `dim` (the pixel norm applied to z and to embedded labels)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def block_dtype(use_fp16: bool, force_fp32: bool, device: torch.device) -> torch.dtype:
    """float16 for a mixed-precision block on CUDA, float32 otherwise (CPU half-precision convolutions are slow)."""
    return torch.float16 if use_fp16 and not force_fp32 and device.type == "cuda" else torch.float32


def fp16_resolution(img_resolution: int, num_fp16_res: int) -> int:
    """The lowest resolution that runs in float16: the `num_fp16_res` highest resolutions do, never below 8."""
    return max(2 ** (int(np.log2(img_resolution)) + 1 - num_fp16_res), 8)


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    noise: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: int = 0,
    resample_filter: torch.Tensor | None = None,
    demodulate: bool = True,
    flip_weight: bool = True,
    fused_modconv: bool = True,
) -> torch.Tensor:
    """Convolve each sample with its own style-scaled, optionally demodulated weights (paper, Section 2.2, Eq. 1-3).

    Args:
        x:               Input features [N, I, H, W].
        weight:          Shared weights [O, I, k, k].
        styles:          Per-sample input-channel scales [N, I].
        noise:           Optional noise added after the convolution, broadcastable to the output.
        up, down:        Integer resampling factors, through `conv2d_resample` with `resample_filter`.
        padding:         Convolution padding.
        resample_filter: Low-pass filter for resampling.
        demodulate:      Normalize each output channel's effective weights to unit L2 norm (Eq. 3).
        flip_weight:     False computes a true convolution (faster with up > 1); the results are the same up to
                         the learned weights' orientation, as long as a network always uses the same setting.
        fused_modconv:   One grouped convolution with per-sample weights, instead of scaling the activations
                         before and after a shared convolution. Same result, different speed and memory.

    Returns:
        Output features [N, O, H', W'].
    """
    batch_size = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    misc.assert_shape(weight, [out_channels, in_channels, kh, kw])
    misc.assert_shape(x, [batch_size, in_channels, None, None])
    misc.assert_shape(styles, [batch_size, in_channels])

    # In float16, rescale weight and styles to unit maximum before modulating so the products cannot overflow;
    # demodulation divides any such per-sample scale out again.
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (1 / np.sqrt(in_channels * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    w = weight.unsqueeze(0) * styles.reshape(batch_size, 1, in_channels, 1, 1)  # [N, O, I, k, k]
    dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt() if demodulate else None  # [N, O]

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(batch_size, in_channels, 1, 1)
        x = conv2d_resample.conv2d_resample(
            x, weight.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding, flip_weight=flip_weight
        )
        if demodulate and noise is not None:
            return fma.fma(x, dcoefs.to(x.dtype).reshape(batch_size, -1, 1, 1), noise.to(x.dtype))
        if demodulate:
            x = x * dcoefs.to(x.dtype).reshape(batch_size, -1, 1, 1)
        elif noise is not None:
            x = x + noise.to(x.dtype)
        return x

    if demodulate:
        w = w * dcoefs.reshape(batch_size, out_channels, 1, 1, 1)
    x = x.reshape(1, batch_size * in_channels, *x.shape[2:])
    w = w.reshape(batch_size * out_channels, in_channels, kh, kw)
    x = conv2d_resample.conv2d_resample(
        x,
        w.to(x.dtype),
        f=resample_filter,
        up=up,
        down=down,
        padding=padding,
        groups=batch_size,
        flip_weight=flip_weight,
    )
    x = x.reshape(batch_size, out_channels, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


# ----------------------------------------------------------------------------
# Layers with equalized learning rate: weights are stored N(0, 1) and scaled by He's constant at run time.


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


# ----------------------------------------------------------------------------
# Generator.


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


class SynthesisLayer(torch.nn.Module):
    """Modulated convolution with per-pixel noise, bias and leaky ReLU: one layer of a synthesis block."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        activation: str = "lrelu",
        resample_filter: tuple[int, ...] = DEFAULT_RESAMPLE_FILTER,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = bias_act.activation_funcs[activation].def_gain

        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", fused_modconv: bool = True, gain: float = 1
    ) -> torch.Tensor:
        """x [N, in, R/up, R/up], w [N, w_dim] -> [N, out, R, R].

        Args:
            noise_mode: 'random' draws new noise, 'const' uses the stored `noise_const`, 'none' adds none.
        """
        assert noise_mode in ("random", "const", "none"), f"noise_mode must be random, const or none, not {noise_mode}"
        in_resolution = self.resolution // self.up
        misc.assert_shape(x, [None, self.in_channels, in_resolution, in_resolution])
        styles = self.affine(w)  # [N, in]

        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
            noise = noise * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength

        x = modulated_conv2d(
            x,
            self.weight,
            styles,
            noise=noise,
            up=self.up,
            padding=self.padding,
            resample_filter=self.resample_filter,
            flip_weight=(self.up == 1),
            fused_modconv=fused_modconv,
        )
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act.bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}, "
            f"resolution={self.resolution}, up={self.up}, activation={self.activation}"
        )


class ToRGBLayer(torch.nn.Module):
    """Modulated 1x1 convolution to image channels, without demodulation."""

    def __init__(
        self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1, conv_clamp: float | None = None
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size**2)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        """x [N, in, H, W], w [N, w_dim] -> [N, img_channels, H, W]."""
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act.bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}"


class SynthesisBlock(torch.nn.Module):
    """One resolution of the synthesis network: (constant or 2x upsampling conv), conv, and a toRGB skip output."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        is_last: bool,
        resample_filter: tuple[int, ...] = DEFAULT_RESAMPLE_FILTER,
        conv_clamp: float | None = 256,
        use_fp16: bool = False,
        **layer_kwargs,
    ):
        """
        Args:
            in_channels: Channels from the previous block; 0 for the first block, which starts from `const`.
            conv_clamp:  Clamp the convolutions' outputs to [-conv_clamp, conv_clamp] (the published default 256);
                         None: no clamp.
            use_fp16:    Run this block in float16 on CUDA.
        """
        super().__init__()
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.use_fp16 = use_fp16
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(resample_filter))

        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(
                in_channels,
                out_channels,
                w_dim,
                resolution,
                up=2,
                resample_filter=resample_filter,
                conv_clamp=conv_clamp,
                **layer_kwargs,
            )
        self.conv1 = SynthesisLayer(
            out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp, **layer_kwargs
        )
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        force_fp32: bool = False,
        fused_modconv: bool | None = None,
        update_emas: bool = False,
        **layer_kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and the running RGB image at half resolution -> both at this block's resolution.

        Args:
            ws:            [N, num_conv + num_torgb, w_dim]; the toRGB w is shared with the next block's first conv.
            fused_modconv: None fuses in eval mode only (grouped convolutions are faster for inference).
            update_emas:   Unused here; accepted so every block takes the same arguments.
        """
        misc.assert_shape(ws, [None, self.num_conv + self.num_torgb, self.w_dim])
        device = ws.device
        dtype = block_dtype(self.use_fp16, force_fp32, device)
        if fused_modconv is None:
            fused_modconv = not self.training
        w_iter = iter(ws.unbind(dim=1))

        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
        else:
            misc.assert_shape(x, [None, self.in_channels, self.resolution // 2, self.resolution // 2])
            x = x.to(dtype)
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
        x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)

        if img is not None:
            misc.assert_shape(img, [None, self.img_channels, self.resolution // 2, self.resolution // 2])
            img = upfirdn2d.upsample2d(img, self.resample_filter)
        y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv).to(torch.float32)
        img = y if img is None else img + y
        return x, img

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, use_fp16={self.use_fp16}"


class SynthesisNetwork(torch.nn.Module):
    """Maps ws to an image through blocks at 4, 8, ..., img_resolution, summing their toRGB outputs (skip)."""

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 4,
        **block_kwargs,
    ):
        """
        Args:
            channel_base: Channels at resolution r are min(channel_base // r, channel_max).
            num_fp16_res: Run the this-many highest resolutions in float16 on CUDA.
            block_kwargs: Passed to every SynthesisBlock (conv_clamp, resample_filter, layer options).
        """
        assert img_resolution >= 4 and img_resolution & (img_resolution - 1) == 0, "img_resolution: a power of 2"
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.num_fp16_res = num_fp16_res
        self.block_resolutions = [2**i for i in range(2, int(np.log2(img_resolution)) + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_res = fp16_resolution(img_resolution, num_fp16_res)

        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(
                channels[res // 2] if res > 4 else 0,
                channels[res],
                w_dim,
                res,
                img_channels,
                is_last=(res == img_resolution),
                use_fp16=(res >= fp16_res),
                **block_kwargs,
            )
            self.num_ws += block.num_conv
            setattr(self, f"b{res}", block)
        self.num_ws += block.num_torgb

    def forward(self, ws: torch.Tensor, **block_kwargs) -> torch.Tensor:
        """ws [N, num_ws, w_dim] -> images [N, img_channels, img_resolution, img_resolution], float32."""
        misc.assert_shape(ws, [None, self.num_ws, self.w_dim])
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            x, img = block(x, img, ws.narrow(1, w_idx, block.num_conv + block.num_torgb), **block_kwargs)
            w_idx += block.num_conv
        return img

    def extra_repr(self) -> str:
        return (
            f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, "
            f"img_channels={self.img_channels}, num_fp16_res={self.num_fp16_res}"
        )


class Generator(torch.nn.Module):
    """The StyleGAN2 generator: mapping network followed by synthesis network."""

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        mapping_kwargs: dict | None = None,
        **synthesis_kwargs,
    ):
        """
        Args:
            z_dim:            Latent size.
            c_dim:            Label size, 0 for unconditional.
            w_dim:            Intermediate latent size.
            img_resolution:   Output resolution, a power of two.
            img_channels:     Output channels (1 or 3).
            mapping_kwargs:   Options of the MappingNetwork (num_layers, lr_multiplier, ...).
            synthesis_kwargs: Options of the SynthesisNetwork (channel_base, channel_max, num_fp16_res, conv_clamp).
        """
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, **(mapping_kwargs or {}))

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
        **synthesis_kwargs,
    ) -> torch.Tensor:
        """z [N, z_dim], c [N, c_dim] -> images [N, img_channels, R, R] in about [-1, 1]."""
        ws = self.mapping(
            z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff, update_emas=update_emas
        )
        return self.synthesis(ws, update_emas=update_emas, **synthesis_kwargs)


# ----------------------------------------------------------------------------
# Discriminator.


class DiscriminatorBlock(torch.nn.Module):
    """One resolution of the residual discriminator: (fromRGB), conv, 2x downsampling conv, and a 1x1 skip."""

    def __init__(
        self,
        in_channels: int,
        tmp_channels: int,
        out_channels: int,
        resolution: int,
        img_channels: int,
        activation: str = "lrelu",
        resample_filter: tuple[int, ...] = DEFAULT_RESAMPLE_FILTER,
        conv_clamp: float | None = None,
        use_fp16: bool = False,
    ):
        """
        Args:
            in_channels: Channels from the previous block; 0 for the first block, which reads the image.
        """
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.use_fp16 = use_fp16
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(resample_filter))

        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation=activation, conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation=activation, conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(
            tmp_channels,
            out_channels,
            3,
            activation=activation,
            down=2,
            resample_filter=resample_filter,
            conv_clamp=conv_clamp,
        )
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2, resample_filter=resample_filter)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor, force_fp32: bool = False) -> torch.Tensor:
        """Features (or, for the first block, the image) at this resolution -> features at half resolution."""
        dtype = block_dtype(self.use_fp16, force_fp32, img.device)
        if self.in_channels == 0:
            misc.assert_shape(img, [None, self.img_channels, self.resolution, self.resolution])
            x = self.fromrgb(img.to(dtype))
        else:
            misc.assert_shape(x, [None, self.in_channels, self.resolution, self.resolution])
            x = x.to(dtype)
        # Residual connection scaled so the sum keeps unit variance (paper, Appendix B).
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv0(x)
        x = self.conv1(x, gain=math.sqrt(0.5))
        return y + x

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, use_fp16={self.use_fp16}"


class MinibatchStdLayer(torch.nn.Module):
    """Appends the standard deviation across groups of samples as extra feature maps (Karras et al. 2018)."""

    def __init__(self, group_size: int | None, num_channels: int = 1):
        """
        Args:
            group_size:   Samples per group; None means the whole minibatch. The batch must divide evenly.
            num_channels: Split the features into this many parts, each giving one extra channel.
        """
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, C + num_channels, H, W]."""
        n, c, h, w = x.shape
        g = n if self.group_size is None else min(self.group_size, n)
        f = self.num_channels
        assert n % g == 0, f"The batch ({n}) must be divisible by the minibatch-std group size ({g})"
        # Sample i belongs to group i % (n // g): groups interleave across the batch.
        y = x.reshape(g, n // g, f, c // f, h, w).to(torch.float32)
        y = y - y.mean(dim=0)
        y = (y.square().mean(dim=0) + 1e-8).sqrt()  # [n/g, f, c/f, h, w]
        y = y.mean(dim=[2, 3, 4])  # [n/g, f]
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w).to(x.dtype)  # [n, f, h, w]
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


class DiscriminatorEpilogue(torch.nn.Module):
    """The 4x4 head: minibatch std, conv, dense, and the output (projected onto the label embedding if any)."""

    def __init__(
        self,
        in_channels: int,
        cmap_dim: int,
        resolution: int,
        mbstd_group_size: int | None = 4,
        mbstd_num_channels: int = 1,
        activation: str = "lrelu",
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(
            in_channels + mbstd_num_channels, in_channels, 3, activation=activation, conv_clamp=conv_clamp
        )
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: torch.Tensor, cmap: torch.Tensor | None) -> torch.Tensor:
        """Features [N, C, 4, 4] and label embedding [N, cmap_dim] -> logits [N, 1]."""
        misc.assert_shape(x, [None, self.in_channels, self.resolution, self.resolution])
        x = x.to(torch.float32)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)
        if self.cmap_dim > 0:
            # Projection discriminator (Miyato & Koyama 2018), normalized by the embedding size.
            misc.assert_shape(cmap, [None, self.cmap_dim])
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / np.sqrt(self.cmap_dim))
        return x

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, cmap_dim={self.cmap_dim}"


class Discriminator(torch.nn.Module):
    """The StyleGAN2 residual discriminator, conditioned by projection through its own mapping network."""

    def __init__(
        self,
        c_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 4,
        conv_clamp: float | None = 256,
        cmap_dim: int | None = None,
        block_kwargs: dict | None = None,
        mapping_kwargs: dict | None = None,
        epilogue_kwargs: dict | None = None,
    ):
        """
        Args:
            c_dim:           Label size, 0 for unconditional.
            img_resolution:  Input resolution, a power of two.
            img_channels:    Input channels.
            channel_base:    Channels at resolution r are min(channel_base // r, channel_max).
            num_fp16_res:    Run the this-many highest resolutions in float16 on CUDA.
            conv_clamp:      Clamp every convolution's output to [-conv_clamp, conv_clamp] (published default
                             256); None: no clamp.
            cmap_dim:        Label embedding size; None means the channels at 4x4.
            block_kwargs:    Options of every DiscriminatorBlock.
            mapping_kwargs:  Options of the label MappingNetwork.
            epilogue_kwargs: Options of the epilogue (mbstd_group_size, mbstd_num_channels).
        """
        assert img_resolution >= 8 and img_resolution & (img_resolution - 1) == 0, "img_resolution: a power of 2"
        super().__init__()
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.block_resolutions = [2**i for i in range(int(np.log2(img_resolution)), 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        fp16_res = fp16_resolution(img_resolution, num_fp16_res)
        cmap_dim = 0 if c_dim == 0 else (channels[4] if cmap_dim is None else cmap_dim)

        for res in self.block_resolutions:
            block = DiscriminatorBlock(
                channels[res] if res < img_resolution else 0,
                channels[res],
                channels[res // 2],
                res,
                img_channels,
                conv_clamp=conv_clamp,
                use_fp16=(res >= fp16_res),
                **(block_kwargs or {}),
            )
            setattr(self, f"b{res}", block)
        if c_dim > 0:
            self.mapping = MappingNetwork(
                z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None, **(mapping_kwargs or {})
            )
        self.b4 = DiscriminatorEpilogue(
            channels[4], cmap_dim=cmap_dim, resolution=4, conv_clamp=conv_clamp, **(epilogue_kwargs or {})
        )

    def layer_names(self) -> list[str]:
        """The convolution layers in the order an image passes them (b256.fromrgb, b256.conv0, b256.conv1,
        b256.skip, b128.conv0, ...): the layers `--freezed=N` counts, first N frozen (Mo et al. 2020, FreezeD)."""
        names = []
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            names += [f"b{res}.{layer}" for layer in ("fromrgb", "conv0", "conv1", "skip") if hasattr(block, layer)]
        return names

    def forward(self, img: torch.Tensor, c: torch.Tensor, update_emas: bool = False, **block_kwargs) -> torch.Tensor:
        """Images [N, C, R, R] and labels [N, c_dim] -> logits [N, 1] (positive means real).

        Args:
            update_emas: Unused; accepted so the loss can call G and D alike.
        """
        x = None
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x, img, **block_kwargs)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        return self.b4(x, cmap)

    def extra_repr(self) -> str:
        return f"c_dim={self.c_dim}, img_resolution={self.img_resolution}, img_channels={self.img_channels}"
