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
from training import generator

# The shared layers moved to training.layers; snapshots written before name them here, so they stay importable here.
from training.layers import (
    DEFAULT_RESAMPLE_FILTER,
    Conv2dLayer,
    FullyConnectedLayer,
    MappingNetwork,
    SkipOutputLayer,
    block_dtype,
    fp16_resolution,
    modulate,
)
from training.layers import normalize_2nd_moment as normalize_2nd_moment


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

    # In float16, prescale weight and styles to unit maximum before modulating so the products cannot overflow.
    prescale = "max" if x.dtype == torch.float16 else None
    weight, styles, dcoefs, w = modulate(
        weight, styles, demodulate=demodulate, prescale=prescale, per_sample_weights=fused_modconv, flat_dcoefs=True
    )  # dcoefs: [N, O]; w: [N, O, I, k, k] when fused

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
# Generator.


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


class ToRGBLayer(SkipOutputLayer):
    """Modulated 1x1 convolution to image channels, without demodulation."""

    def __init__(
        self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1, conv_clamp: float | None = None
    ):
        super().__init__(in_channels, out_channels, w_dim, kernel_shape=(kernel_size, kernel_size))
        self.w_dim = w_dim
        self.conv_clamp = conv_clamp

    @property
    def clamp(self) -> float | None:
        return self.conv_clamp

    def modulated(self, x: torch.Tensor, styles: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        """x [N, in, H, W], styles [N, in] -> [N, img_channels, H, W]."""
        return modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)

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


class SynthesisNetwork(generator.SynthesisNetwork):
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
        super().__init__(w_dim, img_resolution, img_channels)
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


class Generator(generator.Generator):
    """The StyleGAN2 generator: mapping network followed by the synthesis network of modulated convolution blocks.

    Synthesis options (`synthesis_kwargs`): channel_base, channel_max, num_fp16_res, conv_clamp, and the layers'
    kernel_size, use_noise, activation, resample_filter. Forward options: noise_mode ('random', 'const', 'none'),
    fused_modconv, force_fp32.
    """

    synthesis_class = SynthesisNetwork


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
