"""CREPS generator: column-row entangled pixel synthesis, without spatial convolutions.

Per "Efficient Scale-Invariant Generator with Column-Row Entangled Pixel Synthesis" (Nguyen et al., CVPR 2023).
Instead of feature maps, the synthesis network carries a "thick bi-line": for every channel, `rank` features
along the rows and `rank` along the columns, sampled at L coordinates in [0, 1], a tensor [N, C, L, 2*rank].
Modulated fully-connected layers (1x1, per sample) transform it block by block; after each block the row and
column halves are combined by an outer product into per-pixel features [N, C, L, L], accumulated through small
per-block decoders. A final decoder and two modulated blocks on the full image produce RGB. Because every
layer acts on coordinates, the output resolution L is a rendering choice (`scale`).

Parameter and buffer names and shapes follow the published CREPS pickles (`synthesis.b4.input.freqs`,
`synthesis.b8.fc0.affine.weight`, `synthesis.decoder_8.0.weight`, `synthesis.block0.tores.weight`, ...).
"""

from __future__ import annotations

import numpy as np
import torch

from torch_utils import misc
from torch_utils.ops import bias_act
from training import generator
from training.layers import FullyConnectedLayer, SkipOutputLayer, block_dtype, fp16_resolution, modulate

# The clamp of the two final image blocks, fixed in the published SynthesisNetwork whatever its options.
FINAL_BLOCK_CLAMP = 256


def modulated_fc(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True) -> torch.Tensor:
    """A per-sample modulated (and optionally demodulated) 1x1 layer over channels.

    Args:
        x:          Input [N, I, H, W] (H, W: any positions, e.g. line samples x rank).
        weight:     Shared weights [O, I].
        styles:     Per-sample input-channel scales [N, I].
        demodulate: Normalize each output channel's effective weights to unit L2 norm.

    Returns:
        Output [N, O, H, W].
    """
    batch_size = x.shape[0]
    out_channels, in_channels = weight.shape
    misc.assert_shape(x, [batch_size, in_channels, None, None])
    misc.assert_shape(styles, [batch_size, in_channels])
    # In float16, prescale weight and styles to unit maximum before modulating so the products cannot overflow.
    prescale = "max" if x.dtype == torch.float16 else None
    w = modulate(weight, styles, demodulate=demodulate, prescale=prescale).w  # [N, O, I]
    return torch.einsum("nihw,noi->nohw", x, w.to(x.dtype))


class ModulatedLayer(torch.nn.Module):
    """Modulated, demodulated fully-connected layer with bias, leaky ReLU and clamp."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, fc_clamp: float | None = None):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.fc_clamp = fc_clamp
        self.act_gain = bias_act.activation_funcs["lrelu"].def_gain
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x [N, in, H, W], w [N, w_dim] -> [N, out, H, W]."""
        x = modulated_fc(x, self.weight, self.affine(w))
        return bias_act.bias_act(x, self.bias.to(x.dtype), act="lrelu", gain=self.act_gain, clamp=self.fc_clamp)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"


class ToResidual(SkipOutputLayer):
    """Modulated linear layer (no demodulation) whose output is summed across blocks (the skip connection)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, fc_clamp: float | None = None):
        super().__init__(in_channels, out_channels, w_dim)
        self.fc_clamp = fc_clamp

    @property
    def clamp(self) -> float | None:
        return self.fc_clamp

    def modulated(self, x: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
        """x [N, in, H, W], styles [N, in] -> [N, out, H, W]."""
        return modulated_fc(x, self.weight, styles, demodulate=False)


def line_coordinates(resolution: int, size: int, device: torch.device) -> torch.Tensor:
    """Sample positions [size] along a row or column for rendering `size` pixels of a `resolution` model.

    At the training resolution these are linspace(0, 1, resolution), the published convention. Other sizes
    sample the same continuous image: pixel i of the training grid is centred at i / (resolution - 1) and is
    1 / (resolution - 1) wide, so `size` pixels tile that extent with centres spaced (resolution / size) times
    as far apart. Box-downsampling a 2x rendering then lands exactly on the 1x sample positions.
    """
    if size == resolution:
        return torch.linspace(0, 1, resolution, device=device)
    centres = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) * (resolution / size) - 0.5
    return centres / (resolution - 1)


class LineInput(torch.nn.Module):
    """Fourier features of the line coordinates: the first block's thick bi-line, modulated by w."""

    def __init__(self, channels: int, w_dim: int, resolution: int, rank: int = 8, bandwidth: float = 10):
        """
        Args:
            channels:   Output channels (half sines, half cosines).
            resolution: Training resolution: the number of line samples at scale 1.
            rank:       Features per channel along each of the row and column lines.
            bandwidth:  Standard deviation of the random frequencies.
        """
        super().__init__()
        assert channels % 2 == 0, "LineInput needs an even number of channels"
        self.channels = channels
        self.resolution = resolution
        self.rank = rank
        self.register_buffer("freqs", torch.randn([1, channels // 2 * rank]) * bandwidth)
        # Both lines sample the same positions; [1, L, 2 lines, 1] as stored in published networks.
        self.register_buffer("coords", torch.linspace(0, 1, resolution).reshape(1, -1, 1, 1).repeat(1, 1, 2, 1))
        self.weight = torch.nn.Parameter(torch.randn([1, channels, 1, 2 * rank]))
        self.affine = FullyConnectedLayer(w_dim, channels * 2 * rank, bias_init=1)

    def forward(self, w: torch.Tensor, size: int) -> torch.Tensor:
        """w [N, w_dim] -> thick bi-line [N, channels, size, 2 * rank]."""
        batch_size = w.shape[0]
        half, rank = self.channels // 2, self.rank
        coords = (
            self.coords[0, :, 0, 0] if size == self.resolution else line_coordinates(self.resolution, size, w.device)
        )
        # angle[l, line, c, k] = 2 pi t_l f_{c,k}; the row line and the column line start out identical.
        angles = (coords[:, None] * self.freqs[0]).reshape(size, 1, half, rank).expand(size, 2, half, rank)
        angles = angles.permute(2, 0, 1, 3).reshape(half, size, 2 * rank) * (2 * np.pi)  # [C/2, L, 2r]
        x = torch.sin(torch.cat([angles, angles + np.pi / 2], dim=0))  # [C, L, 2r]: sines, then cosines
        modulation = self.weight * self.affine(w).reshape(batch_size, self.channels, 1, 2 * rank)
        return x.unsqueeze(0) * modulation / np.sqrt(self.channels)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, resolution={self.resolution}, rank={self.rank}"


class LineBlock(torch.nn.Module):
    """Modulated layers over a thick bi-line (or, for the final blocks, an image), with a summed skip output."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        res_channels: int,
        fc_clamp: float | None = 256,
        use_fp16: bool = False,
    ):
        """
        Args:
            in_channels:  Channels from the previous block; 1 marks the first block, which starts from LineInput.
            resolution:   Training resolution (line samples at scale 1).
            res_channels: Channels of the skip output summed across blocks.
            fc_clamp:     Clamp the layers' outputs to [-fc_clamp, fc_clamp]; None: no clamp.
            use_fp16:     Compute in float16 on CUDA.
        """
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.use_fp16 = use_fp16
        if in_channels == 1:
            self.input = LineInput(out_channels, w_dim, resolution)
        else:
            self.fc0 = ModulatedLayer(in_channels, out_channels, w_dim, fc_clamp=fc_clamp)
        self.fc1 = ModulatedLayer(out_channels, out_channels, w_dim, fc_clamp=fc_clamp)
        self.tores = ToResidual(out_channels, res_channels, w_dim, fc_clamp=fc_clamp)
        self.num_fc = 1 if in_channels == 1 else 2
        self.num_ws = 3  # (input or fc0), fc1, tores

    def forward(
        self,
        x: torch.Tensor | None,
        res: torch.Tensor | None,
        ws: torch.Tensor,
        size: int,
        force_fp32: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and the summed skip output -> both updated. ws [N, 3, w_dim]."""
        w_first, w_fc1, w_tores = ws.unbind(dim=1)
        dtype = block_dtype(self.use_fp16, force_fp32, ws.device)
        if self.in_channels == 1:
            x = self.input(w_first, size).to(dtype)
        else:
            x = self.fc0(x.to(dtype), w_first)
        x = self.fc1(x, w_fc1)
        if self.in_channels == 1:
            # The published network builds the first block's skip output but never applies it (its w is unused
            # too); the skip sum starts at the second block. The layer stays so published weights load.
            return x, res
        y = self.tores(x, w_tores).to(torch.float32)
        res = y if res is None else res + y
        return x, res

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, use_fp16={self.use_fp16}"


def make_decoder(channels: int, out_channels: int | None = None) -> torch.nn.Sequential:
    """Per-pixel MLP channels -> 2x -> 4x -> 2x -> channels, leaky ReLU throughout."""
    widths = [channels, 2 * channels, 4 * channels, 2 * channels, out_channels or channels]
    return torch.nn.Sequential(
        *[FullyConnectedLayer(a, b, activation="lrelu") for a, b in zip(widths[:-1], widths[1:], strict=True)]
    )


class SynthesisNetwork(generator.SynthesisNetwork):
    """Line blocks b4 ... b{R} (channels per the usual schedule), decoders, and two final image blocks."""

    supports_any_scale = True  # gen_images.py --scale: the output size is a rendering choice.

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        biline_channels: int = 32,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 0,
        fc_clamp: float | None = 256,
        fp16_final_blocks: bool = True,
    ):
        """
        Args:
            biline_channels:   Channels of the bi-line skip outputs and of the per-pixel features.
            channel_base:      Block b{r} has min(channel_base // r, channel_max) channels.
            num_fp16_res:      Run the line blocks of the this-many highest "resolutions" in float16 on CUDA.
            fc_clamp:          Clamp the line blocks' layer outputs to [-fc_clamp, fc_clamp]; None: no clamp.
            fp16_final_blocks: Run the two final image blocks in float16 on CUDA. The published network always
                               does, and always clamps them at 256 (FINAL_BLOCK_CLAMP), whatever its other options;
                               False (our --fp32) computes them in float32 with the same clamp.
        """
        assert img_resolution >= 4 and img_resolution & (img_resolution - 1) == 0, "img_resolution: a power of 2"
        assert biline_channels > img_channels, "biline_channels must exceed img_channels"
        super().__init__(w_dim, img_resolution, img_channels)
        self.biline_channels = biline_channels
        self.num_fp16_res = num_fp16_res
        self.block_resolutions = [2**i for i in range(2, int(np.log2(img_resolution)) + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_res = fp16_resolution(img_resolution, num_fp16_res)  # Above img_resolution when num_fp16_res == 0.

        for res in self.block_resolutions:
            block = LineBlock(
                channels[res // 2] if res > 4 else 1,
                channels[res],
                w_dim,
                img_resolution,
                biline_channels,
                fc_clamp=fc_clamp,
                use_fp16=res >= fp16_res,
            )
            setattr(self, f"b{res}", block)
        # decoder_{r} carries the accumulated pixel features into block r. The first combined features come from
        # b8, so decoder_8 is never applied; it exists in the published networks and stays for loading them.
        for res in self.block_resolutions[1:]:
            setattr(self, f"decoder_{res}", make_decoder(biline_channels))
        self.decoder_last = make_decoder(biline_channels)
        self.decoder_img = FullyConnectedLayer(biline_channels, img_channels)
        self.block0 = LineBlock(
            biline_channels,
            4 * biline_channels,
            w_dim,
            img_resolution,
            img_channels,
            fc_clamp=FINAL_BLOCK_CLAMP,
            use_fp16=fp16_final_blocks,
        )
        self.block1 = LineBlock(
            4 * biline_channels,
            2 * biline_channels,
            w_dim,
            img_resolution,
            img_channels,
            fc_clamp=FINAL_BLOCK_CLAMP,
            use_fp16=fp16_final_blocks,
        )
        # One w for the input, one per fc layer of the line blocks, one for the last skip output; the final
        # image blocks reuse the last w.
        self.num_ws = 1 + sum(getattr(self, f"b{res}").num_fc for res in self.block_resolutions) + 1

    def block_ws(self, ws: torch.Tensor) -> list[torch.Tensor]:
        """Each line block's three ws: a block starts where the previous block's fc layers' ws began plus their
        count, so consecutive blocks share ws (the published indexing)."""
        slices, start = [], 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            slices.append(ws.narrow(1, start, block.num_ws))
            start += block.num_fc
        return slices

    def forward(
        self,
        ws: torch.Tensor,
        scale: float = 1.0,
        noise_mode: str = "const",
        force_fp32: bool = False,
        update_emas: bool = False,
    ) -> torch.Tensor:
        """ws [N, num_ws, w_dim] -> images [N, img_channels, S, S] with S = round(scale * img_resolution).

        Args:
            scale:       Output size relative to the training resolution (the same image, sampled more densely).
            noise_mode:  Accepted for the generators' common interface; CREPS has no noise inputs.
            update_emas: Accepted for the common interface; CREPS tracks no statistics in synthesis.
        """
        misc.assert_shape(ws, [None, self.num_ws, self.w_dim])
        size = int(round(scale * self.img_resolution))
        assert size >= 1, f"scale={scale} gives no pixels"
        ws = ws.to(torch.float32)
        batch_size = ws.shape[0]

        x = biline = feature = None
        for res, block_w in zip(self.block_resolutions, self.block_ws(ws), strict=True):
            x, biline = getattr(self, f"b{res}")(x, biline, block_w, size, force_fp32=force_fp32)
            if biline is None:  # The first block contributes no skip output (see LineBlock).
                continue
            # Outer product of the row and column halves over the rank: [N, C, L, 2r] -> [N, C, L, L].
            rows, cols = (biline * np.sqrt(0.5)).chunk(2, dim=-1)
            pixels = (rows @ cols.transpose(-2, -1)).permute(0, 2, 3, 1).reshape(-1, self.biline_channels)
            feature = pixels if feature is None else getattr(self, f"decoder_{res}")(feature) + pixels

        feature = self.decoder_last(feature)  # [N*L*L, C]
        img = self.decoder_img(feature)  # [N*L*L, img_channels]
        feature = feature.reshape(batch_size, size, size, -1).permute(0, 3, 1, 2)
        img = img.reshape(batch_size, size, size, -1).permute(0, 3, 1, 2)
        final_ws = ws[:, -1:].repeat(1, 3, 1)
        feature, img = self.block0(feature, img, final_ws, size, force_fp32=force_fp32)
        _, img = self.block1(feature, img, final_ws, size, force_fp32=force_fp32)
        return img

    def extra_repr(self) -> str:
        return (
            f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, "
            f"img_channels={self.img_channels}, biline_channels={self.biline_channels}"
        )


class Generator(generator.Generator):
    """The CREPS generator: StyleGAN2's mapping network followed by the column-row synthesis network.

    Its tracked average w advances in G's own training phases (Gmain, Greg), not in D's as for StyleGAN2/3: the
    published CREPS mapping network updates it whenever it runs in training mode without `update_emas`. Our
    mapping network updates it when called with `update_emas=True`, so the loss passes that in the phases the
    preset table names (`Preset.G_stats_network="G"` for creps).

    Synthesis options (`synthesis_kwargs`): those of SynthesisNetwork (biline_channels, channel_base, channel_max,
    num_fp16_res, fc_clamp, fp16_final_blocks). Forward options: scale (output size relative to the training
    resolution), force_fp32.
    """

    synthesis_class = SynthesisNetwork
