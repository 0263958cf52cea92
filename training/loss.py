"""The StyleGAN2 loss: non-saturating logistic loss, lazy R1 and path length regularization, style mixing.

Per "Analyzing and Improving the Image Quality of StyleGAN" (Karras et al., CVPR 2020): R1 (Mescheder et al.
2018) on reals with weight gamma/2, path length regularization (Section 3.2) and lazy regularization (Section
3.1), where a regularizer runs every `interval` steps with its loss multiplied by `interval`.

Path length regularization follows the published training code's order: the step's mean length joins the
running mean first, m = (1 - d) m_old + d mean_j(l_j), and each length is penalized as (l_i - m)^2 with the
gradient flowing through m into every l_j. Here the mean is over all of the step's lengths, on every rank and
in every accumulation round, so the result does not depend on how the batch is split. The exact gradient of
(w/B) sum_i (l_i - m)^2 w.r.t. l_k is (w/B) [2 (l_k - m) + g] with g = -(2d/B) sum_i (l_i - m); once the
step's [sum, count] of lengths is known (one all-reduce), each chunk back-propagates the surrogate
w (l_i - m)^2 + w g l_i with m and g held fixed, which has exactly that gradient. With several chunks per rank a
first pass computes only the lengths, remaking every chunk with the same seed, so latents and noise repeat.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable

import numpy as np
import torch

from torch_utils import distributed, training_stats
from torch_utils.ops import upfirdn2d
from training.augment import AdaController


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


@dataclasses.dataclass
class Chunk:
    """One accumulation round's inputs on one rank."""

    real_img: torch.Tensor  # Real images [N, C, H, W] in [-1, 1].
    real_c: torch.Tensor  # Their labels [N, c_dim].
    gen_z: torch.Tensor  # Latents [N, z_dim] of the generated images.
    gen_c: torch.Tensor  # Labels [N, c_dim] of the generated images.


# make_chunk(i) returns this rank's chunk i of the phase and reseeds torch for it, so that making a chunk again
# repeats every random draw that follows (style mixing, path length noise, augmentation).
ChunkMaker = Callable[[int], Chunk]


class StyleGAN2Loss:
    """Computes each phase's loss over this rank's chunks of the batch and accumulates its gradients."""

    def __init__(
        self,
        G: torch.nn.Module,
        D: torch.nn.Module,
        augment_pipe: torch.nn.Module | None = None,
        ada: AdaController | None = None,
        r1_gamma: float = 10.0,
        style_mixing_prob: float = 0.0,
        pl_weight: float = 0.0,
        pl_batch_shrink: int = 2,
        pl_decay: float = 0.01,
        blur_init_sigma: float = 0.0,
        blur_fade_kimg: float = 0.0,
        G_stats_network: str = "D",
    ):
        """
        Args:
            G, D:              The networks being trained (not the EMA copy).
            augment_pipe:      Applied to every image D sees, reals and fakes; None: no augmentation.
            ada:               Shown D's outputs on reals (`observe`), from which it tunes augment_pipe's p; None:
                               p stays as it is.
            r1_gamma:          R1 weight gamma; the penalty is gamma/2 * |grad D(x)|^2 on reals. 0 disables R1.
            style_mixing_prob: Probability that a generated sample switches to a second latent at a random layer.
            pl_weight:         Path length regularization weight; 0 disables it.
            pl_batch_shrink:   Regularize path length on batch / pl_batch_shrink samples to save compute.
            pl_decay:          Decay of the running mean of path lengths (the target `a` in the paper's Eq. 4).
            blur_init_sigma:   Blur every image D sees with a Gaussian of this sigma (pixels) at the start.
            blur_fade_kimg:    Fade the blur linearly to zero over this many kimg (StyleGAN3 paper, Section 5).
            G_stats_network:   Whose phases advance G's tracked statistics (the average w, StyleGAN3's layer
                               magnitudes), from each phase's first chunk: "D" for StyleGAN2/3, whose published
                               D phase does it with its fakes, or "G" for CREPS, whose published mapping network
                               does it in G's own phases (Gmain, Greg) with their latents. The preset table
                               (`Preset.G_stats_network`) records it per generator.
        """
        assert G_stats_network in ("G", "D"), f"G_stats_network must be 'G' or 'D', not {G_stats_network!r}"
        self.G = G
        self.D = D
        self.augment_pipe = augment_pipe
        self.ada = ada
        self.r1_gamma = r1_gamma
        self.style_mixing_prob = style_mixing_prob
        self.pl_weight = pl_weight
        self.pl_batch_shrink = pl_batch_shrink
        self.pl_decay = pl_decay
        self.blur_init_sigma = blur_init_sigma
        self.blur_fade_kimg = blur_fade_kimg
        self.G_stats_network = G_stats_network
        self.blur_sigma = 0.0  # The current blur, set by accumulate_gradients from the image count.
        device = next(G.parameters()).device
        self.pl_mean = torch.zeros([], device=device)
        self._pl_reduced = False  # Whether this phase's path length all-reduce has run (see join_collectives).

    def run_G(self, z: torch.Tensor, c: torch.Tensor, update_emas: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Generate images [N, C, H, W] and return them with their ws [N, num_ws, w_dim], with style mixing.

        Args:
            update_emas: Advance G's tracked statistics with this batch. The second latents of style mixing never
                         do (the published CREPS mapping would also count them, but no CREPS preset mixes styles).
        """
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
        self, phase: Phase, make_chunk: ChunkMaker, num_chunks: int, gain: float, cur_nimg: int = 0
    ) -> None:
        """Back-propagate `gain` times each chunk's mean loss of `phase` into the networks' .grad.

        Collective when the phase includes path length regularization (pl_weight > 0): every rank must call it,
        with the same `num_chunks`, because the step's path lengths are summed over ranks.

        Args:
            phase:      Which terms to compute.
            make_chunk: Makes this rank's chunk i, 0 <= i < num_chunks, reseeding torch for it (see ChunkMaker).
                        Called once per chunk, and once more before that with path length regularization over
                        several chunks.
            num_chunks: This rank's accumulation rounds.
            gain:       Multiplier of each chunk's mean loss: the lazy interval times the chunk's share of the batch.
            cur_nimg:   Real images shown so far, which sets the blur's fade.
        """
        fade = max(1 - cur_nimg / (self.blur_fade_kimg * 1000), 0) if self.blur_fade_kimg > 0 else 0
        self.blur_sigma = fade * self.blur_init_sigma
        # G's tracked statistics advance once per phase, from this rank's first chunk, whatever the chunk count.
        tracks = phase.network == self.G_stats_network
        with_pl = self._has_pl(phase)
        self._pl_reduced = False
        pl_target = None
        if with_pl and num_chunks > 1:
            # Every chunk's penalty needs the mean over all of the step's lengths before its backward pass.
            pl_target = self._pl_target_from_first_pass(make_chunk, num_chunks, update_emas=tracks)
        for index in range(num_chunks):
            chunk = make_chunk(index)
            first = index == 0
            if phase.network == "G":
                # Path length first, so the first pass (path length only) sees the same random draws.
                if with_pl:
                    self._accumulate_G_pl(chunk, gain, pl_target, update_emas=tracks and first and pl_target is None)
                if phase.has_main:
                    self._accumulate_G_main(chunk, gain, update_emas=tracks and first)
            else:
                fake_loss = None
                if phase.has_main:
                    fake_loss = self._accumulate_D_fake(chunk, gain, update_emas=tracks and first)
                r1 = phase.has_reg and self.r1_gamma > 0
                self._accumulate_D_real(chunk, gain, fake_loss=fake_loss, main=phase.has_main, r1=r1)

    def _has_pl(self, phase: Phase) -> bool:
        """Whether `phase` computes the path length penalty, whose accumulation makes one all-reduce."""
        return phase.network == "G" and phase.has_reg and self.pl_weight > 0

    def join_collectives(self, phase: Phase) -> None:
        """After `accumulate_gradients(phase)` stopped early on this rank (out of memory): make the collective calls
        it had still to make, adding nothing, so the other ranks' accumulation completes and every rank can then
        agree to redo the phase (--batch-gpu=auto). A no-op with one process."""
        if distributed.is_distributed() and self._has_pl(phase) and not self._pl_reduced:
            nothing = torch.zeros([2], dtype=torch.float64, device=self.pl_mean.device)  # [sum, count]
            distributed.all_reduce_sum(nothing)
            self._pl_reduced = True

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A copy of the state a phase changes (the path length mean), on its device, for `restore`: a failed phase
        is undone without a device synchronization. What `ada` observed is its own (AdaController.snapshot)."""
        return {"pl_mean": self.pl_mean.clone()}

    def restore(self, saved: dict[str, torch.Tensor]) -> None:
        """Put back what `snapshot` copied."""
        self.pl_mean.copy_(saved["pl_mean"])

    def _accumulate_G_main(self, chunk: Chunk, gain: float, update_emas: bool) -> None:
        """Non-saturating generator loss: softplus(-D(G(z)))."""
        gen_img, _ = self.run_G(chunk.gen_z, chunk.gen_c, update_emas=update_emas)
        gen_logits = self.run_D(gen_img, chunk.gen_c)
        training_stats.report("Loss/scores/fake", gen_logits)
        training_stats.report("Loss/signs/fake", gen_logits.sign())
        loss_G = torch.nn.functional.softplus(-gen_logits)  # [N, 1]
        training_stats.report("Loss/G/loss", loss_G)
        loss_G.mean().mul(gain).backward()

    def _path_lengths(self, chunk: Chunk, update_emas: bool, create_graph: bool) -> torch.Tensor:
        """|J_w^T y| / sqrt(num_ws) (paper Eq. 4, averaged over the ws) with y ~ N(0, I) / sqrt(H*W), for the
        first 1/pl_batch_shrink of the chunk's latents: [N // pl_batch_shrink]."""
        batch_size = max(chunk.gen_z.shape[0] // self.pl_batch_shrink, 1)
        gen_img, gen_ws = self.run_G(chunk.gen_z[:batch_size], chunk.gen_c[:batch_size], update_emas=update_emas)
        pl_noise = torch.randn_like(gen_img) / np.sqrt(gen_img.shape[2] * gen_img.shape[3])
        # Differentiating only w.r.t. ws, autograd skips the weight gradients of this inner backward pass.
        (pl_grads,) = torch.autograd.grad((gen_img * pl_noise).sum(), gen_ws, create_graph=create_graph)
        return pl_grads.square().sum(dim=2).mean(dim=1).sqrt()  # [N]

    def _pl_target_from_first_pass(
        self, make_chunk: ChunkMaker, num_chunks: int, update_emas: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute every chunk's path lengths without a graph and fold them into the running mean (see
        `_advance_pl_mean`). Remaking each chunk repeats its latents and noise in the second pass."""
        local = torch.zeros([2], dtype=torch.float64, device=self.pl_mean.device)
        for index in range(num_chunks):
            # The tracked statistics advance here, so the second pass sees them as this pass's later chunks did.
            lengths = self._path_lengths(make_chunk(index), update_emas=update_emas and index == 0, create_graph=False)
            local[0] += lengths.detach().double().sum()
            local[1] += len(lengths)
        return self._advance_pl_mean(local)

    def _advance_pl_mean(self, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Blend the step's mean path length, over all ranks, into `pl_mean`; collective.

        Args:
            local: [sum, count] of this rank's path lengths of the step, float64.

        Returns:
            The new mean m = lerp(m_old, mean_j l_j, pl_decay) and the gradient coefficient
            g = -(2 d / B) sum_i (l_i - m) = -2 d (mean_j l_j - m) over all B lengths, both float64 scalars.
        """
        totals = distributed.all_reduce_sum(local.clone())
        self._pl_reduced = True
        mean_length = totals[0] / totals[1]
        pl_mean = self.pl_mean.double().lerp(mean_length, self.pl_decay)
        coefficient = -2 * self.pl_decay * (mean_length - pl_mean)
        self.pl_mean.copy_(pl_mean)
        return pl_mean, coefficient

    def _accumulate_G_pl(
        self, chunk: Chunk, gain: float, target: tuple[torch.Tensor, torch.Tensor] | None, update_emas: bool
    ) -> None:
        """Path length penalty (l_i - m)^2 against the running mean m that already includes this step's lengths.

        Args:
            target: The new running mean and gradient coefficient from `_advance_pl_mean`; None: this chunk holds
                    all of this rank's lengths, so they are folded in here.
        """
        pl_lengths = self._path_lengths(chunk, update_emas=update_emas, create_graph=True)
        if target is None:
            local = torch.stack([pl_lengths.detach().double().sum(), pl_lengths.new_tensor(len(pl_lengths)).double()])
            target = self._advance_pl_mean(local)
        pl_mean, coefficient = (t.to(pl_lengths.dtype) for t in target)
        pl_penalty = (pl_lengths - pl_mean).square()
        training_stats.report("Loss/pl_penalty", pl_penalty)
        loss_Gpl = pl_penalty * self.pl_weight
        training_stats.report("Loss/G/reg", loss_Gpl)
        # m is held fixed here; the term w * g * l_i restores the gradient that flows through the step's mean
        # inside m (module docstring), so the sum equals the published gradient.
        surrogate = loss_Gpl + pl_lengths * (coefficient * self.pl_weight)
        surrogate.mean().mul(gain).backward()

    def _accumulate_D_fake(self, chunk: Chunk, gain: float, update_emas: bool) -> torch.Tensor:
        """Discriminator loss on fakes, softplus(D(G(z))); returns it per sample [N, 1], detached."""
        with torch.no_grad():
            gen_img, _ = self.run_G(chunk.gen_z, chunk.gen_c, update_emas=update_emas)
        gen_logits = self.run_D(gen_img, chunk.gen_c, update_emas=update_emas)
        training_stats.report("Loss/scores/fake", gen_logits)
        training_stats.report("Loss/signs/fake", gen_logits.sign())
        loss_Dgen = torch.nn.functional.softplus(gen_logits)  # [N, 1]
        loss_Dgen.mean().mul(gain).backward()
        return loss_Dgen.detach()

    def _accumulate_D_real(
        self, chunk: Chunk, gain: float, fake_loss: torch.Tensor | None, main: bool, r1: bool
    ) -> None:
        """Discriminator loss on reals, softplus(-D(x)), and/or the R1 penalty gamma/2 * |grad_x D(x)|^2.

        Args:
            fake_loss: The chunk's loss on fakes per sample [N, 1] (with `main`): `Loss/D/loss` reports fake plus
                       real term per sample, as published.
        """
        if not (main or r1):
            return
        real_img_tmp = chunk.real_img.detach().requires_grad_(r1)
        real_logits = self.run_D(real_img_tmp, chunk.real_c)
        training_stats.report("Loss/scores/real", real_logits)
        training_stats.report("Loss/signs/real", real_logits.sign())
        if self.ada is not None:
            self.ada.observe(real_logits)
        loss = torch.zeros_like(real_logits)
        if main:
            loss_Dreal = torch.nn.functional.softplus(-real_logits)  # [N, 1]
            training_stats.report("Loss/D/loss", loss_Dreal if fake_loss is None else fake_loss + loss_Dreal)
            loss = loss + loss_Dreal
        if r1:
            (r1_grads,) = torch.autograd.grad(real_logits.sum(), real_img_tmp, create_graph=True)
            r1_penalty = r1_grads.square().sum(dim=[1, 2, 3]).unsqueeze(1)  # [N, 1]
            training_stats.report("Loss/r1_penalty", r1_penalty)
            loss_Dr1 = r1_penalty * (self.r1_gamma / 2)
            training_stats.report("Loss/D/reg", loss_Dr1)
            loss = loss + loss_Dr1
        loss.mean().mul(gain).backward()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The loss's own state for exact resume: the path length mean."""
        return {"pl_mean": self.pl_mean.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what `state_dict` returned. The `real_signs` of states written before AdaController kept them are
        not the loss's: Trainer.load_state_dict hands them to the controller."""
        self.pl_mean.copy_(state["pl_mean"])
