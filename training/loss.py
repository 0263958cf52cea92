"""The StyleGAN2 loss: non-saturating logistic loss, lazy R1 and path length regularization, style mixing.

Per "Analyzing and Improving the Image Quality of StyleGAN" (Karras et al., CVPR 2020): R1 (Mescheder et al.
2018) on reals with weight gamma/2, path length regularization (Section 3.2) and lazy regularization (Section
3.1), where a regularizer runs every `interval` steps with its loss multiplied by `interval`.
"""

from __future__ import annotations

import enum

import numpy as np
import torch

from torch_utils import distributed, training_stats
from torch_utils.ops import upfirdn2d


class Phase(enum.Enum):
    """One optimizer step's worth of work. With lazy regularization the main and regularization terms of a
    network are separate phases (Gmain + Greg, Dmain + Dreg); without it each network has one phase (Gboth,
    Dboth)."""

    Gmain = "Gmain"
    Greg = "Greg"
    Gboth = "Gboth"
    Dmain = "Dmain"
    Dreg = "Dreg"
    Dboth = "Dboth"

    @property
    def network(self) -> str:
        """'G' or 'D': the network this phase updates."""
        return self.value[0]

    @property
    def has_main(self) -> bool:
        """Whether the phase includes the adversarial loss."""
        return self.value.endswith(("main", "both"))

    @property
    def has_reg(self) -> bool:
        """Whether the phase includes the regularizer (path length for G, R1 for D)."""
        return self.value.endswith(("reg", "both"))


class StyleGAN2Loss:
    """Computes each phase's loss for one chunk of the batch and accumulates its gradients."""

    def __init__(
        self,
        G: torch.nn.Module,
        D: torch.nn.Module,
        augment_pipe: torch.nn.Module | None = None,
        r1_gamma: float = 10.0,
        style_mixing_prob: float = 0.0,
        pl_weight: float = 0.0,
        pl_batch_shrink: int = 2,
        pl_decay: float = 0.01,
        blur_init_sigma: float = 0.0,
        blur_fade_kimg: float = 0.0,
    ):
        """
        Args:
            G, D:              The networks being trained (not the EMA copy).
            augment_pipe:      Applied to every image D sees, reals and fakes; None: no augmentation.
            r1_gamma:          R1 weight gamma; the penalty is gamma/2 * |grad D(x)|^2 on reals. 0 disables R1.
            style_mixing_prob: Probability that a generated sample switches to a second latent at a random layer.
            pl_weight:         Path length regularization weight; 0 disables it.
            pl_batch_shrink:   Regularize path length on batch / pl_batch_shrink samples to save compute.
            pl_decay:          Decay of the running mean of path lengths (the target `a` in the paper's Eq. 4).
            blur_init_sigma:   Blur every image D sees with a Gaussian of this sigma (pixels) at the start.
            blur_fade_kimg:    Fade the blur linearly to zero over this many kimg (StyleGAN3 paper, Section 5).
        """
        self.G = G
        self.D = D
        self.augment_pipe = augment_pipe
        self.r1_gamma = r1_gamma
        self.style_mixing_prob = style_mixing_prob
        self.pl_weight = pl_weight
        self.pl_batch_shrink = pl_batch_shrink
        self.pl_decay = pl_decay
        self.blur_init_sigma = blur_init_sigma
        self.blur_fade_kimg = blur_fade_kimg
        self.blur_sigma = 0.0  # The current blur, set by accumulate_gradients from the image count.
        device = next(G.parameters()).device
        self.pl_mean = torch.zeros([], device=device)
        # Path lengths seen during the current step: [sum, count], folded into pl_mean by end_phase().
        self._pl_pending = torch.zeros([2], dtype=torch.float64, device=device)
        # Signs of D's outputs on reals since the last ADA update: [sum, count], read by take_real_sign_mean().
        self._real_signs = torch.zeros([2], dtype=torch.float64, device=device)

    def run_G(self, z: torch.Tensor, c: torch.Tensor, update_emas: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Generate images [N, C, H, W] and return them with their ws [N, num_ws, w_dim], with style mixing."""
        ws = self.G.mapping(z, c, update_emas=update_emas)
        if self.style_mixing_prob > 0:
            num_ws = ws.shape[1]
            cutoff = int(torch.randint(1, num_ws, []))
            if float(torch.rand([])) >= self.style_mixing_prob:
                cutoff = num_ws
            if cutoff < num_ws:
                mixed = self.G.mapping(torch.randn_like(z), c, update_emas=False)
                ws = torch.cat([ws[:, :cutoff], mixed[:, cutoff:]], dim=1)
        img = self.G.synthesis(ws, update_emas=update_emas)
        return img, ws

    def run_D(self, img: torch.Tensor, c: torch.Tensor, update_emas: bool = False) -> torch.Tensor:
        """Logits [N, 1] of D on (blurred, augmented) images."""
        blur_size = int(np.floor(self.blur_sigma * 3))
        if blur_size > 0:
            taps = torch.arange(-blur_size, blur_size + 1, device=img.device, dtype=torch.float32)
            kernel = (-(taps / self.blur_sigma).square()).exp2()  # Gaussian, written as 2^(-x^2 / sigma^2).
            img = upfirdn2d.filter2d(img, kernel / kernel.sum())
        if self.augment_pipe is not None:
            img = self.augment_pipe(img)
        return self.D(img, c, update_emas=update_emas)

    def accumulate_gradients(
        self,
        phase: Phase,
        real_img: torch.Tensor,
        real_c: torch.Tensor,
        gen_z: torch.Tensor,
        gen_c: torch.Tensor,
        gain: float,
        cur_nimg: int = 0,
        update_emas: bool = True,
    ) -> None:
        """Back-propagate `gain` times the mean loss of `phase` over this chunk into the networks' .grad.

        Args:
            phase:       Which terms to compute.
            real_img:    Real images [N, C, H, W] in [-1, 1].
            real_c:      Their labels [N, c_dim].
            gen_z:       Latents [N, z_dim] for the generated images.
            gen_c:       Labels [N, c_dim] for the generated images.
            gain:        Multiplier of the chunk's mean loss: the lazy interval times the chunk's share of the batch.
            cur_nimg:    Real images shown so far, which sets the blur's fade.
            update_emas: Let the D phase update G's tracked statistics (the average w) with this chunk.
        """
        fade = max(1 - cur_nimg / (self.blur_fade_kimg * 1000), 0) if self.blur_fade_kimg > 0 else 0
        self.blur_sigma = fade * self.blur_init_sigma
        if phase.network == "G":
            if phase.has_main:
                self._accumulate_G_main(gen_z, gen_c, gain)
            if phase.has_reg and self.pl_weight > 0:
                self._accumulate_G_pl(gen_z, gen_c, gain)
        else:
            if phase.has_main:
                self._accumulate_D_fake(gen_z, gen_c, gain, update_emas)
            self._accumulate_D_real(real_img, real_c, gain, main=phase.has_main, r1=phase.has_reg and self.r1_gamma > 0)

    def _accumulate_G_main(self, gen_z: torch.Tensor, gen_c: torch.Tensor, gain: float) -> None:
        """Non-saturating generator loss: softplus(-D(G(z)))."""
        gen_img, _ = self.run_G(gen_z, gen_c)
        gen_logits = self.run_D(gen_img, gen_c)
        training_stats.report("Loss/scores/fake", gen_logits)
        training_stats.report("Loss/signs/fake", gen_logits.sign())
        loss_G = torch.nn.functional.softplus(-gen_logits)  # [N, 1]
        training_stats.report("Loss/G/loss", loss_G)
        loss_G.mean().mul(gain).backward()

    def _accumulate_G_pl(self, gen_z: torch.Tensor, gen_c: torch.Tensor, gain: float) -> None:
        """Path length penalty (paper Eq. 4): (|J_w^T y| - a)^2 with y ~ N(0, I) / sqrt(H*W)."""
        batch_size = max(gen_z.shape[0] // self.pl_batch_shrink, 1)
        gen_img, gen_ws = self.run_G(gen_z[:batch_size], gen_c[:batch_size])
        pl_noise = torch.randn_like(gen_img) / np.sqrt(gen_img.shape[2] * gen_img.shape[3])
        # Differentiating only w.r.t. ws, autograd skips the weight gradients of this inner backward pass.
        (pl_grads,) = torch.autograd.grad((gen_img * pl_noise).sum(), gen_ws, create_graph=True)
        pl_lengths = pl_grads.square().sum(dim=2).mean(dim=1).sqrt()  # [N]
        # The target is the running mean of earlier steps (detached); this step's lengths join it in end_phase().
        self._pl_pending[0] += pl_lengths.detach().sum().double()
        self._pl_pending[1] += len(pl_lengths)
        pl_penalty = (pl_lengths - self.pl_mean).square()
        training_stats.report("Loss/pl_penalty", pl_penalty)
        loss_Gpl = pl_penalty * self.pl_weight
        training_stats.report("Loss/G/reg", loss_Gpl)
        loss_Gpl.mean().mul(gain).backward()

    def _accumulate_D_fake(self, gen_z: torch.Tensor, gen_c: torch.Tensor, gain: float, update_emas: bool) -> None:
        """Discriminator loss on fakes: softplus(D(G(z))); optionally advances G's tracked w average."""
        with torch.no_grad():
            gen_img, _ = self.run_G(gen_z, gen_c, update_emas=update_emas)
        gen_logits = self.run_D(gen_img, gen_c, update_emas=update_emas)
        training_stats.report("Loss/scores/fake", gen_logits)
        training_stats.report("Loss/signs/fake", gen_logits.sign())
        loss_Dgen = torch.nn.functional.softplus(gen_logits)
        loss_Dgen.mean().mul(gain).backward()

    def _accumulate_D_real(
        self, real_img: torch.Tensor, real_c: torch.Tensor, gain: float, main: bool, r1: bool
    ) -> None:
        """Discriminator loss on reals, softplus(-D(x)), and/or the R1 penalty gamma/2 * |grad_x D(x)|^2."""
        if not (main or r1):
            return
        real_img_tmp = real_img.detach().requires_grad_(r1)
        real_logits = self.run_D(real_img_tmp, real_c)
        training_stats.report("Loss/scores/real", real_logits)
        training_stats.report("Loss/signs/real", real_logits.sign())
        self._real_signs[0] += real_logits.detach().sign().sum().double()
        self._real_signs[1] += real_logits.numel()
        loss = torch.zeros_like(real_logits)
        if main:
            loss_Dreal = torch.nn.functional.softplus(-real_logits)
            training_stats.report("Loss/D/loss", loss_Dreal)
            loss = loss + loss_Dreal
        if r1:
            (r1_grads,) = torch.autograd.grad(real_logits.sum(), real_img_tmp, create_graph=True)
            r1_penalty = r1_grads.square().sum(dim=[1, 2, 3]).unsqueeze(1)  # [N, 1]
            training_stats.report("Loss/r1_penalty", r1_penalty)
            loss_Dr1 = r1_penalty * (self.r1_gamma / 2)
            training_stats.report("Loss/D/reg", loss_Dr1)
            loss = loss + loss_Dr1
        loss.mean().mul(gain).backward()

    def end_phase(self, phase: Phase) -> None:
        """Finish a phase on every rank: fold the step's path lengths, over all ranks, into the running mean.

        Updating once per step from every rank's samples keeps `pl_mean` identical on all ranks and independent
        of how the batch is split into accumulation rounds.
        """
        if phase.network != "G" or not phase.has_reg or self.pl_weight == 0:
            return
        pending = self._pl_pending.clone()
        if distributed.is_distributed():
            torch.distributed.all_reduce(pending)
        if pending[1] > 0:
            step_mean = (pending[0] / pending[1]).to(self.pl_mean.dtype)
            self.pl_mean.copy_(self.pl_mean.lerp(step_mean, self.pl_decay))
        self._pl_pending.zero_()

    def take_real_sign_mean(self) -> float:
        """The mean sign of D on reals since the previous call, over all ranks (ADA's r_t); resets the count.

        Collective: every rank must call it at the same step.
        """
        signs = self._real_signs.clone()
        if distributed.is_distributed():
            torch.distributed.all_reduce(signs)
        self._real_signs.zero_()
        return float(signs[0] / signs[1]) if signs[1] > 0 else 0.0

    def gather_pending(self) -> None:
        """Move every rank's pending signs of D on reals to rank 0, so rank 0's state_dict holds them all.

        Collective: call on every rank right before rank 0 saves a training state.
        """
        if distributed.is_distributed():
            torch.distributed.all_reduce(self._real_signs)
            if not distributed.is_main():
                self._real_signs.zero_()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The loss's own state for exact resume: the path length mean and the pending signs of D on reals."""
        return {"pl_mean": self.pl_mean.detach().cpu().clone(), "real_signs": self._real_signs.cpu().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what `state_dict` returned."""
        self.pl_mean.copy_(state["pl_mean"])
        # The saved counts are all ranks' together (see gather_pending); rank 0 alone takes them back.
        self._real_signs.copy_(state["real_signs"] if distributed.is_main() else torch.zeros_like(self._real_signs))
