"""Tests for training/loss.py: R1 and path length terms against hand computations on toy networks."""

import numpy as np
import pytest
import torch

from torch_utils import training_stats
from training.loss import Phase, StyleGAN2Loss


class ToyD(torch.nn.Module):
    """D(x) = sum(w * x^2): grad_x D = 2 w x, so R1 = sum(4 w^2 x^2) per sample."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(0.1, 0.9, 12, dtype=torch.float64).reshape(1, 3, 2, 2))

    def forward(self, img, c, update_emas=False):
        return (self.w * img.square()).sum(dim=[1, 2, 3]).unsqueeze(1)


class ToyMapping(torch.nn.Module):
    """ws = scale * z broadcast to num_ws copies, with a learned scale (initially 1)."""

    num_ws = 2

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones([], dtype=torch.float64))

    def forward(self, z, c, update_emas=False):
        return (self.scale * z).unsqueeze(1).repeat(1, self.num_ws, 1)


class ToySynthesis(torch.nn.Module):
    """img = sum_i ws[:, i] @ A_i, reshaped to [N, 1, 2, 2]: the Jacobian w.r.t. w_i is A_i."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.A = torch.nn.Parameter(torch.randn(2, 3, 4, generator=generator, dtype=torch.float64))

    def forward(self, ws, update_emas=False):
        return torch.einsum("niw,iwp->np", ws, self.A).reshape(-1, 1, 2, 2)


class ToyG(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.mapping = ToyMapping()
        self.synthesis = ToySynthesis()


def test_phases_are_named_values():
    assert [p.value for p in Phase] == ["Gmain", "Greg", "Gboth", "Dmain", "Dreg", "Dboth"]
    assert Phase.Greg.network == "G" and Phase.Greg.has_reg and not Phase.Greg.has_main
    assert Phase.Dboth.has_main and Phase.Dboth.has_reg and Phase.Dmain.network == "D"


def test_r1_penalty_gradient_matches_hand_computation():
    D, G = ToyD(), ToyG()
    loss = StyleGAN2Loss(G, D, r1_gamma=3.0)
    real = torch.randn(5, 3, 2, 2, dtype=torch.float64)
    collector = training_stats.Collector(regex="Loss/r1_penalty")
    loss.accumulate_gradients(Phase.Dreg, real, None, None, None, gain=16.0)
    collector.update()

    w, x = D.w.detach(), real
    penalty = (4 * w.square() * x.square()).sum(dim=[1, 2, 3])  # |2 w x|^2 per sample
    assert collector.mean("Loss/r1_penalty") == pytest.approx(float(penalty.mean()))
    # d/dw of gain * mean(gamma/2 * sum 4 w^2 x^2) = gain * gamma/2 * 8 w mean(x^2)
    expected_grad = 16.0 * 3.0 / 2 * 8 * w * x.square().mean(dim=0, keepdim=True)
    assert torch.allclose(D.w.grad, expected_grad)


def test_dmain_real_term_is_softplus_of_minus_logits():
    D, G = ToyD(), ToyG()
    loss = StyleGAN2Loss(G, D, r1_gamma=0.0)
    real = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    loss._accumulate_D_real(real, None, gain=1.0, main=True, r1=False)
    logits = (D.w.detach() * real.square()).sum(dim=[1, 2, 3])
    # d softplus(-l)/dw = -sigmoid(-l) * x^2, averaged over the batch.
    expected = (-torch.sigmoid(-logits)[:, None, None, None] * real.square()).mean(dim=0, keepdim=True)
    assert torch.allclose(D.w.grad, expected)


def test_path_length_penalty_matches_hand_computation():
    G, D = ToyG(), ToyD()
    loss = StyleGAN2Loss(G, D, pl_weight=2.0, pl_batch_shrink=2, pl_decay=0.01)
    z = torch.randn(6, 3, dtype=torch.float64)
    collector = training_stats.Collector(regex="Loss/pl_penalty")

    torch.manual_seed(123)
    loss.accumulate_gradients(Phase.Greg, None, None, z, torch.zeros(6, 0), gain=4.0)
    torch.manual_seed(123)
    y = torch.randn(3, 1, 2, 2, dtype=torch.float64).reshape(3, 4) / np.sqrt(4)  # pl_noise of the 3 kept samples
    collector.update()

    A = G.synthesis.A.detach()  # [num_ws, w_dim, pixels]
    jty = torch.einsum("iwp,np->niw", A, y)  # J_{w_i}^T y for each sample and ws index
    lengths = jty.square().sum(dim=2).mean(dim=1).sqrt()  # [3]
    assert collector.mean("Loss/pl_penalty") == pytest.approx(float(lengths.square().mean()))  # pl_mean was 0
    # d/dA_i of gain * weight * mean_n (1/num_ws) sum_i |A_i y_n|^2 = gain * weight * mean_n (2/num_ws) A_i y_n y_n^T
    expected_grad = 4.0 * 2.0 * torch.einsum("niw,np->iwp", jty, y) * (2 / 2) / 3
    assert torch.allclose(G.synthesis.A.grad, expected_grad)

    # The running mean only moves at the end of the phase, by pl_decay toward this step's mean length.
    assert float(loss.pl_mean) == 0.0
    loss.end_phase(Phase.Greg)
    assert float(loss.pl_mean) == pytest.approx(0.01 * float(lengths.mean()))
    state = loss.state_dict()
    fresh = StyleGAN2Loss(ToyG(), ToyD(), pl_weight=2.0)
    fresh.load_state_dict(state)
    assert float(fresh.pl_mean) == float(loss.pl_mean)
