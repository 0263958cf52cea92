"""StyleGAN3 generator (alias-free), configurations T (translation) and R (rotation equivariant).

Per "Alias-Free Generative Adversarial Networks" (Karras et al., NeurIPS 2021). The synthesis network starts
from Fourier features and runs 14 modulated layers whose nonlinearities are applied at twice the sampling
rate between low-pass filters designed from a geometric schedule of cutoffs and stopbands (Section 3.2,
Appendix F). Parameter and buffer names and shapes follow the published pickles (`synthesis.input.freqs`,
`synthesis.L0_36_512.affine.weight`, ...), and the mapping network is StyleGAN2's.
"""

from __future__ import annotations

import numpy as np
import torch

from torch_utils import misc
from torch_utils.alias_free import design_lowpass_filter
from torch_utils.ops import filtered_lrelu
from training import generator
from training.layers import FullyConnectedLayer, block_dtype, modulate


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    padding: int = 0,
    input_gain: torch.Tensor | None = None,
) -> torch.Tensor:
    """StyleGAN3's modulated convolution: one grouped convolution with per-sample weights.

    Args:
        x:          Input [N, I, H, W].
        weight:     Weights [O, I, k, k].
        styles:     Per-sample input-channel scales [N, I].
        demodulate: Normalize each output channel's effective weights to unit norm.
        padding:    Convolution padding.
        input_gain: Scalar (or [N, I]) multiplier of the input, folded into the weights.

    Returns:
        Output [N, O, H', W'].
    """
    batch_size = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    misc.assert_shape(styles, [batch_size, in_channels])
    # With demodulation, weights and styles are first scaled to unit RMS: demodulation divides these constants out
    # again, so this only keeps the products in a range float16 can hold.
    w = modulate(weight, styles, demodulate=demodulate, prescale="rms", input_gain=input_gain).w  # [N, O, I, k, k]
    x = x.reshape(1, batch_size * in_channels, *x.shape[2:])
    w = w.reshape(batch_size * out_channels, in_channels, kh, kw)
    x = torch.nn.functional.conv2d(x, w.to(x.dtype), padding=padding, groups=batch_size)
    return x.reshape(batch_size, out_channels, *x.shape[2:])


class SynthesisInput(torch.nn.Module):
    """Fourier features on a pixel grid, rotated and translated per sample by an affine of w (Section 3.1)."""

    def __init__(self, w_dim: int, channels: int, size: int, sampling_rate: float, bandwidth: float):
        """
        Args:
            w_dim:         Intermediate latent size.
            channels:      Number of Fourier features (and output channels).
            size:          Output width and height in samples, including the margin.
            sampling_rate: Samples per unit length; the image itself spans [-0.5, 0.5].
            bandwidth:     Radius of the disc the frequencies are drawn from.
        """
        super().__init__()
        self.w_dim = w_dim
        self.channels = channels
        self.size = size
        self.sampling_rate = sampling_rate
        self.bandwidth = bandwidth

        # Frequencies uniform in the disc of radius `bandwidth`, phases uniform in [-0.5, 0.5).
        radius = bandwidth * torch.rand([channels]).sqrt()
        angle = torch.rand([channels]) * (2 * np.pi)
        self.register_buffer("freqs", torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1))  # [C, 2]
        self.register_buffer("phases", torch.rand([channels]) - 0.5)  # [C]
        # The user's transform of the image, stored inverted (it maps output coordinates to input coordinates).
        self.register_buffer("transform", torch.eye(3, 3))
        self.weight = torch.nn.Parameter(torch.randn([channels, channels]))
        # Starts as the identity: no rotation (cos 1, sin 0) and no translation.
        self.affine = FullyConnectedLayer(w_dim, 4, weight_init=0, bias_init=[1, 0, 0, 0])

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """w [N, w_dim] -> features [N, channels, size, size]."""
        batch_size = w.shape[0]
        t = self.affine(w)  # [N, 4]: rotation (cos, sin) and translation (x, y), before normalization
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        cos, sin, tx, ty = t.unbind(dim=1)
        eye = torch.eye(3, device=w.device).expand(batch_size, 3, 3)
        rotation = eye.clone()
        rotation[:, 0, 0], rotation[:, 0, 1], rotation[:, 1, 0], rotation[:, 1, 1] = cos, -sin, sin, cos
        translation = eye.clone()
        translation[:, 0, 2], translation[:, 1, 2] = -tx, -ty
        transforms = rotation @ translation @ self.transform.unsqueeze(0)  # [N, 3, 3]: output -> input coordinates

        # Sampling the features at transformed coordinates = transforming their frequencies and phases.
        phases = self.phases.unsqueeze(0) + (self.freqs.unsqueeze(0) @ transforms[:, :2, 2:]).squeeze(2)  # [N, C]
        freqs = self.freqs.unsqueeze(0) @ transforms[:, :2, :2]  # [N, C, 2]
        # Fade out frequencies that the user transform pushed beyond what the sampling rate can represent.
        amplitudes = 1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)
        amplitudes = amplitudes.clamp(0, 1)  # [N, C]

        # Pixel centres, in units where the sampling rate is `sampling_rate`, centred on 0.
        coords = torch.arange(self.size, device=w.device, dtype=torch.float32) + 0.5 - self.size / 2
        coords = coords / self.sampling_rate
        grid = torch.stack(torch.meshgrid(coords, coords, indexing="xy"), dim=-1)  # [H, W, 2] as (x, y)
        x = torch.einsum("hwd,ncd->nhwc", grid, freqs) + phases[:, None, None, :]  # [N, H, W, C]
        x = torch.sin(x * (2 * np.pi)) * amplitudes[:, None, None, :]
        x = x @ (self.weight / np.sqrt(self.channels)).t()
        return x.permute(0, 3, 1, 2)  # [N, C, H, W]

    def extra_repr(self) -> str:
        return (
            f"w_dim={self.w_dim}, channels={self.channels}, size={self.size}, "
            f"sampling_rate={self.sampling_rate:g}, bandwidth={self.bandwidth:g}"
        )


class SynthesisLayer(torch.nn.Module):
    """Modulated convolution followed by an upsample-lrelu-downsample nonlinearity (filtered_lrelu)."""

    def __init__(
        self,
        w_dim: int,
        is_torgb: bool,
        is_critically_sampled: bool,
        use_fp16: bool,
        in_channels: int,
        out_channels: int,
        in_size: int,
        out_size: int,
        in_sampling_rate: float,
        out_sampling_rate: float,
        in_cutoff: float,
        out_cutoff: float,
        in_half_width: float,
        out_half_width: float,
        conv_kernel: int = 3,
        filter_size: int = 6,
        lrelu_upsampling: int = 2,
        use_radial_filters: bool = False,
        conv_clamp: float | None = 256,
        magnitude_ema_beta: float = 0.999,
    ):
        """
        Args:
            is_torgb:              The last layer: 1x1, no demodulation, no nonlinearity.
            is_critically_sampled: Sampled right at 2x its cutoff (the last layers); keeps separable filters.
            use_fp16:              Compute in float16 on CUDA.
            in_size, out_size:     Input and output width in samples (margin included).
            *_sampling_rate, *_cutoff, *_half_width: The filter schedule (Section 3.2, Appendix F).
            conv_kernel:           3 for StyleGAN3-T, 1 for StyleGAN3-R.
            filter_size:           Filter taps per unit of up/downsampling factor.
            lrelu_upsampling:      How much higher than needed the nonlinearity's sampling rate is.
            use_radial_filters:    Radially symmetric downsampling filters (StyleGAN3-R).
            conv_clamp:            Clamp the output to [-conv_clamp, conv_clamp]; None: no clamp.
            magnitude_ema_beta:    Decay of the tracked input magnitude per update.
        """
        super().__init__()
        self.w_dim = w_dim
        self.is_torgb = is_torgb
        self.is_critically_sampled = is_critically_sampled
        self.use_fp16 = use_fp16
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.in_size = in_size
        self.out_size = out_size
        self.in_sampling_rate = in_sampling_rate
        self.out_sampling_rate = out_sampling_rate
        self.tmp_sampling_rate = max(in_sampling_rate, out_sampling_rate) * (1 if is_torgb else lrelu_upsampling)
        self.conv_kernel = 1 if is_torgb else conv_kernel
        self.conv_clamp = conv_clamp
        self.magnitude_ema_beta = magnitude_ema_beta

        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, self.conv_kernel, self.conv_kernel]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("magnitude_ema", torch.ones([]))

        self.up_factor = int(np.rint(self.tmp_sampling_rate / in_sampling_rate))
        self.down_factor = int(np.rint(self.tmp_sampling_rate / out_sampling_rate))
        assert in_sampling_rate * self.up_factor == self.tmp_sampling_rate, "sampling rates must be powers of 2"
        assert out_sampling_rate * self.down_factor == self.tmp_sampling_rate, "sampling rates must be powers of 2"
        self.up_taps = filter_size * self.up_factor if self.up_factor > 1 and not is_torgb else 1
        self.down_taps = filter_size * self.down_factor if self.down_factor > 1 and not is_torgb else 1
        self.down_radial = use_radial_filters and not is_critically_sampled
        up_filter = design_lowpass_filter(self.up_taps, in_cutoff, in_half_width * 2, self.tmp_sampling_rate)
        down_filter = design_lowpass_filter(
            self.down_taps, out_cutoff, out_half_width * 2, self.tmp_sampling_rate, radial=self.down_radial
        )
        self.register_buffer("up_filter", up_filter)
        self.register_buffer("down_filter", down_filter)

        # Padding so that the output has out_size samples, centred as in the paper's symmetric interpretation of
        # sample positions (Appendix C.3): the total is what the filters and the convolution do not supply.
        pad_total = (out_size - 1) * self.down_factor + 1  # Wanted size before downsampling.
        pad_total -= (in_size + self.conv_kernel - 1) * self.up_factor  # Size after convolution and upsampling.
        pad_total += self.up_taps + self.down_taps - 2  # What the two filters take away.
        pad_lo = (pad_total + self.up_factor) // 2
        pad_hi = pad_total - pad_lo
        self.padding = [pad_lo, pad_hi, pad_lo, pad_hi]

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        noise_mode: str = "random",
        force_fp32: bool = False,
        update_emas: bool = False,
    ) -> torch.Tensor:
        """x [N, in_channels, in_size, in_size], w [N, w_dim] -> [N, out_channels, out_size, out_size].

        Args:
            noise_mode:  Accepted for the generators' common interface; StyleGAN3 has no noise inputs.
            update_emas: Update the tracked input magnitude with this batch (training only).
        """
        misc.assert_shape(x, [None, self.in_channels, self.in_size, self.in_size])
        if update_emas:
            magnitude = x.detach().to(torch.float32).square().mean()
            self.magnitude_ema.copy_(magnitude.lerp(self.magnitude_ema, self.magnitude_ema_beta))
        input_gain = self.magnitude_ema.rsqrt()  # Normalizes the input to unit magnitude on average.

        styles = self.affine(w)
        if self.is_torgb:
            styles = styles * (1 / np.sqrt(self.in_channels * self.conv_kernel**2))
        dtype = block_dtype(self.use_fp16, force_fp32, x.device)
        x = modulated_conv2d(
            x.to(dtype),
            self.weight,
            styles,
            demodulate=not self.is_torgb,
            padding=self.conv_kernel - 1,
            input_gain=input_gain,
        )
        x = filtered_lrelu.filtered_lrelu(
            x,
            fu=self.up_filter,
            fd=self.down_filter,
            b=self.bias.to(x.dtype),
            up=self.up_factor,
            down=self.down_factor,
            padding=self.padding,
            gain=1 if self.is_torgb else np.sqrt(2),
            slope=1 if self.is_torgb else 0.2,
            clamp=self.conv_clamp,
        )
        misc.assert_shape(x, [None, self.out_channels, self.out_size, self.out_size])
        return x

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, in_size={self.in_size}, "
            f"out_size={self.out_size}, in_sampling_rate={self.in_sampling_rate:g}, "
            f"out_sampling_rate={self.out_sampling_rate:g}, up={self.up_factor}, down={self.down_factor}, "
            f"is_torgb={self.is_torgb}, use_fp16={self.use_fp16}"
        )


def layer_schedule(
    img_resolution: int,
    num_layers: int = 14,
    num_critical: int = 2,
    first_cutoff: float = 2,
    first_stopband: float = 2**2.1,
    last_stopband_rel: float = 2**0.3,
) -> dict[str, np.ndarray]:
    """Cutoffs, stopbands, sampling rates and half-widths of layers 0..num_layers (Appendix F, Eq. 14-15).

    Cutoff and stopband grow geometrically from the first layer to the last non-critical one and stay flat
    for the last `num_critical` layers, which are critically sampled at the output resolution.
    """
    last_cutoff = img_resolution / 2
    last_stopband = last_cutoff * last_stopband_rel
    exponents = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
    cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
    stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
    sampling_rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, img_resolution))))
    half_widths = np.maximum(stopbands, sampling_rates / 2) - cutoffs
    return dict(cutoffs=cutoffs, stopbands=stopbands, sampling_rates=sampling_rates, half_widths=half_widths)


class SynthesisNetwork(generator.SynthesisNetwork):
    """Fourier input, 14 alias-free layers and a 1x1 toRGB layer."""

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_layers: int = 14,
        num_critical: int = 2,
        first_cutoff: float = 2,
        first_stopband: float = 2**2.1,
        last_stopband_rel: float = 2**0.3,
        margin_size: int = 10,
        output_scale: float = 0.25,
        num_fp16_res: int = 4,
        **layer_kwargs,
    ):
        """
        Args:
            channel_base:  Layer i has min(channel_base / 2 / cutoff_i, channel_max) channels.
            num_layers:    Layers after the input, not counting toRGB.
            num_critical:  How many of the last layers are critically sampled.
            first_cutoff, first_stopband, last_stopband_rel: The filter schedule (Appendix F).
            margin_size:   Extra samples on each side of every layer but the last two.
            output_scale:  Multiplier of the final image.
            num_fp16_res:  Layers whose sampling rate times 2**num_fp16_res exceeds the output resolution run in
                           float16 on CUDA.
            layer_kwargs:  Passed to every SynthesisLayer (conv_kernel, use_radial_filters, conv_clamp, ...).
        """
        super().__init__(w_dim, img_resolution, img_channels)
        self.num_ws = num_layers + 2
        self.num_layers = num_layers
        self.margin_size = margin_size
        self.output_scale = output_scale
        self.num_fp16_res = num_fp16_res

        schedule = layer_schedule(
            img_resolution, num_layers, num_critical, first_cutoff, first_stopband, last_stopband_rel
        )
        cutoffs, rates, half_widths = schedule["cutoffs"], schedule["sampling_rates"], schedule["half_widths"]
        sizes = rates + margin_size * 2
        sizes[-2:] = img_resolution
        channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
        channels[-1] = img_channels

        self.input = SynthesisInput(w_dim, int(channels[0]), int(sizes[0]), rates[0], cutoffs[0])
        self.layer_names = []
        for idx in range(num_layers + 1):
            prev = max(idx - 1, 0)
            layer = SynthesisLayer(
                w_dim,
                is_torgb=(idx == num_layers),
                is_critically_sampled=(idx >= num_layers - num_critical),
                use_fp16=bool(rates[idx] * 2**num_fp16_res > img_resolution),
                in_channels=int(channels[prev]),
                out_channels=int(channels[idx]),
                in_size=int(sizes[prev]),
                out_size=int(sizes[idx]),
                in_sampling_rate=int(rates[prev]),
                out_sampling_rate=int(rates[idx]),
                in_cutoff=cutoffs[prev],
                out_cutoff=cutoffs[idx],
                in_half_width=half_widths[prev],
                out_half_width=half_widths[idx],
                **layer_kwargs,
            )
            name = f"L{idx}_{layer.out_size}_{layer.out_channels}"
            setattr(self, name, layer)
            self.layer_names.append(name)

    def forward(self, ws: torch.Tensor, **layer_kwargs) -> torch.Tensor:
        """ws [N, num_ws, w_dim] -> images [N, img_channels, R, R], float32."""
        misc.assert_shape(ws, [None, self.num_ws, self.w_dim])
        ws = ws.to(torch.float32).unbind(dim=1)
        x = self.input(ws[0])
        for name, w in zip(self.layer_names, ws[1:], strict=True):
            x = getattr(self, name)(x, w, **layer_kwargs)
        return (x * self.output_scale).to(torch.float32)

    def set_input_transform(self, matrix: np.ndarray) -> None:
        """Render images transformed by `matrix` (3x3, `torch_utils.alias_free.make_transform`); the input's
        `transform` buffer takes its inverse, as it maps output to input coordinates."""
        self.input.transform.copy_(torch.from_numpy(np.linalg.inv(matrix)))

    def extra_repr(self) -> str:
        return (
            f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, "
            f"img_channels={self.img_channels}, num_layers={self.num_layers}, num_fp16_res={self.num_fp16_res}"
        )


class Generator(generator.Generator):
    """The StyleGAN3 generator: StyleGAN2's mapping network followed by the alias-free synthesis network.

    Synthesis options (`synthesis_kwargs`): those of SynthesisNetwork (channel_base, channel_max, num_fp16_res, the
    filter schedule, ...) and of its layers (conv_kernel, use_radial_filters, conv_clamp, magnitude_ema_beta, ...).
    """

    synthesis_class = SynthesisNetwork
