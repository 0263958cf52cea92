"""The contract every generator keeps: a mapping network from (z, c) to ws, then a synthesis network from ws to
images. StyleGAN2, StyleGAN3 and CREPS subclass `Generator`, naming their `SynthesisNetwork` subclass; what a
synthesis network can do beyond rendering ws (any output size, an input transform) it says itself, so tools ask
the network instead of its class."""

from __future__ import annotations

import torch

from training.layers import MappingNetwork


class SynthesisNetwork(torch.nn.Module):
    """Base of the synthesis networks: maps ws [N, num_ws, w_dim] to float32 images [N, img_channels, R, R].

    `forward(ws, noise_mode=..., force_fp32=..., update_emas=..., ...)` takes the options every synthesis network
    accepts (those it has no use for are ignored) plus its own. Capabilities are class attributes and methods:

    - `supports_any_scale`: `forward(ws, scale=s)` renders the same image at round(s * img_resolution) pixels
      (gen_images.py --scale); False here, True for CREPS.
    - `set_input_transform(matrix)`: renders the image translated and rotated (StyleGAN3 only; gen_images.py
      --translate/--rotate and the equivariance metrics look for the method).
    """

    supports_any_scale = False
    num_ws: int  # How many ws forward() reads; set by each subclass once its layers exist.

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int):
        """
        Args:
            w_dim:          Intermediate latent size.
            img_resolution: Output (training) resolution.
            img_channels:   Output channels.
        """
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels


class Generator(torch.nn.Module):
    """Mapping network followed by a synthesis network (`synthesis_class`, named by each subclass)."""

    synthesis_class: type[SynthesisNetwork]

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
            img_resolution:   Output (training) resolution, a power of two.
            img_channels:     Output channels (1 or 3).
            mapping_kwargs:   Options of the MappingNetwork (num_layers, lr_multiplier, ...).
            synthesis_kwargs: Options of `synthesis_class` and its layers.
        """
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        # The synthesis network first: it decides num_ws, and the random initialization follows this order.
        self.synthesis = self.synthesis_class(w_dim, img_resolution, img_channels, **synthesis_kwargs)
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
        """z [N, z_dim], c [N, c_dim] -> images [N, img_channels, R, R] in about [-1, 1].

        Args:
            truncation_psi, truncation_cutoff: Truncation toward the average w (MappingNetwork.forward).
            update_emas:                       Update the tracked statistics (training only).
            synthesis_kwargs:                  Options of the synthesis network's forward (noise_mode, CREPS's scale).
        """
        ws = self.mapping(
            z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff, update_emas=update_emas
        )
        return self.synthesis(ws, update_emas=update_emas, **synthesis_kwargs)
