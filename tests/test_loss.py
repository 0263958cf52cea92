"""Tests for training/loss.py: R1, D loss and path length terms against hand computations on toy networks."""

import numpy as np
import pytest
import torch

from torch_utils import distributed, training_stats
from training.augment import AdaController, AugmentPipe
from training.loss import Chunk, Phase, StyleGAN2Loss
from training.training_loop import reduce_gradients


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
    """img = sum_i (ws[:, i] + curvature * ws[:, i]^2) @ A_i, reshaped to [N, 1, 2, 2].

    With curvature 0 the Jacobian w.r.t. w_i is A_i, the same for every sample (hand computations); otherwise
    it depends on w, so path lengths depend on the mapping's scale too.
    """

    def __init__(self, curvature=0.0):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.A = torch.nn.Parameter(torch.randn(2, 3, 4, generator=generator, dtype=torch.float64))
        self.curvature = curvature

    def forward(self, ws, update_emas=False):
        ws = ws + self.curvature * ws.square()
        return torch.einsum("niw,iwp->np", ws, self.A).reshape(-1, 1, 2, 2)


class ToyG(torch.nn.Module):
    def __init__(self, curvature=0.0):
        super().__init__()
        self.mapping = ToyMapping()
        self.synthesis = ToySynthesis(curvature)


def chunk_maker(chunks, seeds):
    """A ChunkMaker over fixed chunks that reseeds torch with seeds[i] for chunk i, as the training loop does."""

    def make_chunk(index):
        torch.manual_seed(seeds[index])
        return chunks[index]

    return make_chunk


def gen_chunk(z, real=None):
    """A chunk of latents z [N, 3] (unconditional), with optional reals."""
    return Chunk(real_img=real, real_c=None, gen_z=z, gen_c=torch.zeros(len(z), 0))


def noise_by_seed(bank):
    """A stand-in for torch.randn_like: returns bank[seed] for the seed torch was last seeded with, so runs that
    split the same samples into different chunks see the same path length noise."""

    def randn_like(tensor):
        noise = bank[torch.initial_seed()]
        assert noise.shape == tensor.shape, (noise.shape, tensor.shape)
        return noise.to(tensor.dtype)

    return randn_like


def record_reports(monkeypatch):
    """Capture every training_stats.report(name, value) as {name: [values]}."""
    reports = {}

    def report(name, value):
        reports.setdefault(name, []).append(torch.as_tensor(value).detach().clone())
        return value

    monkeypatch.setattr(training_stats, "report", report)
    return reports


def published_pl_step(G, z, noise, pl_mean, weight, decay, gain):
    """The published path length step written out with autograd: m = lerp(pl_mean, mean(l), decay) keeps its
    graph, the loss is gain * mean(weight * (l - m)^2). Returns the penalty [N] and the new mean (detached)."""
    ws = G.mapping(z, None)
    img = G.synthesis(ws)
    (grads,) = torch.autograd.grad((img * noise / np.sqrt(4)).sum(), ws, create_graph=True)
    lengths = grads.square().sum(dim=2).mean(dim=1).sqrt()
    m = torch.as_tensor(pl_mean, dtype=lengths.dtype).lerp(lengths.mean(), decay)
    penalty = (lengths - m).square()
    (penalty * weight).mean().mul(gain).backward()
    return penalty.detach(), m.detach()


def test_phases_are_named_values():
    assert [p.value for p in Phase] == ["Gmain", "Greg", "Gboth", "Dmain", "Dreg", "Dboth"]
    assert Phase.Greg.network == "G" and Phase.Greg.has_reg and not Phase.Greg.has_main
    assert Phase.Dboth.has_main and Phase.Dboth.has_reg and Phase.Dmain.network == "D"


def test_r1_penalty_gradient_matches_hand_computation():
    D, G = ToyD(), ToyG()
    loss = StyleGAN2Loss(G, D, r1_gamma=3.0)
    real = torch.randn(5, 3, 2, 2, dtype=torch.float64)
    collector = training_stats.Collector(regex="Loss/r1_penalty")
    loss.accumulate_gradients(Phase.Dreg, chunk_maker([gen_chunk(torch.zeros(5, 3), real)], [0]), 1, gain=16.0)
    collector.update()

    w, x = D.w.detach(), real
    penalty = (4 * w.square() * x.square()).sum(dim=[1, 2, 3])  # |2 w x|^2 per sample
    assert collector.mean("Loss/r1_penalty") == pytest.approx(float(penalty.mean()))
    # d/dw of gain * mean(gamma/2 * sum 4 w^2 x^2) = gain * gamma/2 * 8 w mean(x^2)
    expected_grad = 16.0 * 3.0 / 2 * 8 * w * x.square().mean(dim=0, keepdim=True)
    assert torch.allclose(D.w.grad, expected_grad)


def test_dmain_reports_fake_plus_real_loss_per_sample(monkeypatch):
    D, G = ToyD(), ToyG()
    loss = StyleGAN2Loss(G, D, r1_gamma=0.0)
    torch.manual_seed(0)
    real, z = torch.randn(4, 3, 2, 2, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    fake = G.synthesis(G.mapping(z, None)).detach().expand(-1, 3, -1, -1)  # ToyD sees the 1-channel fakes x3.
    reports = record_reports(monkeypatch)
    loss.accumulate_gradients(Phase.Dmain, chunk_maker([gen_chunk(z, real)], [0]), 1, gain=1.0)

    w = D.w.detach()
    real_logits = (w * real.square()).sum(dim=[1, 2, 3])  # [4]
    fake_logits = (w * fake.square()).sum(dim=[1, 2, 3])  # [4]
    [logged] = reports["Loss/D/loss"]
    expected = torch.nn.functional.softplus(fake_logits) + torch.nn.functional.softplus(-real_logits)
    assert torch.allclose(logged.flatten(), expected)
    # d/dw of mean(softplus(D(fake)) + softplus(-D(real))): sigmoid(l_f) fake^2 - sigmoid(-l_r) real^2.
    expected_grad = (
        torch.sigmoid(fake_logits)[:, None, None, None] * fake.square()
        - torch.sigmoid(-real_logits)[:, None, None, None] * real.square()
    ).mean(dim=0, keepdim=True)
    assert torch.allclose(D.w.grad, expected_grad)


def test_d_phases_hand_the_real_logits_to_ada_and_keep_no_signs_of_their_own():
    D, G = ToyD(), ToyG()
    D.w.data[:, 0] = -1.0
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(5, 3, 2, 2, generator=generator, dtype=torch.float64)
    real[:2, 0] *= 4  # Large in the channel that D weighs negatively: these two get negative logits.
    z = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    ada = AdaController(AugmentPipe())
    loss = StyleGAN2Loss(G, D, ada=ada, r1_gamma=1.0, pl_weight=0.0)
    real_logits = D(real, None).detach()  # [5, 1]
    assert 0 < int((real_logits > 0).sum()) < 5
    for phase in (Phase.Gmain, Phase.Dmain, Phase.Dreg, Phase.Gboth, Phase.Dboth):  # G phases see no reals
        loss.accumulate_gradients(phase, chunk_maker([gen_chunk(z, real)], [0]), 1, gain=1.0)
    pending = ada.state_dict()["real_signs"]
    assert pending.tolist() == [3 * float(real_logits.sign().sum()), 15.0]  # Dmain, Dreg, Dboth
    assert list(loss.state_dict()) == ["pl_mean"] and list(loss.snapshot()) == ["pl_mean"]


def test_path_length_penalty_matches_hand_computation(monkeypatch):
    G, D = ToyG(), ToyD()
    loss = StyleGAN2Loss(G, D, pl_weight=2.0, pl_batch_shrink=2, pl_decay=0.01)
    z = torch.randn(6, 3, dtype=torch.float64)
    y = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    monkeypatch.setattr(torch, "randn_like", noise_by_seed({123: y}))
    collector = training_stats.Collector(regex="Loss/pl_penalty")
    G.requires_grad_(True)
    loss.accumulate_gradients(Phase.Greg, chunk_maker([gen_chunk(z)], [123]), 1, gain=4.0)
    collector.update()

    A = G.synthesis.A.detach()  # [num_ws, w_dim, pixels]
    y = y.reshape(3, 4) / np.sqrt(4)  # The pl_noise of the 3 kept samples.
    jty = torch.einsum("iwp,np->niw", A, y)  # J_{w_i}^T y = A_i y for each sample and ws index
    lengths = jty.square().sum(dim=2).mean(dim=1).sqrt()  # [3]
    # The running mean (0 before) moves first, and the penalty is against the moved mean.
    m = 0.01 * lengths.mean()
    assert collector.mean("Loss/pl_penalty") == pytest.approx(float((lengths - m).square().mean()))
    assert float(loss.pl_mean) == pytest.approx(float(m))
    # loss = gain * weight / B * sum_n (l_n - m)^2 with m = d * mean(l): dloss/dl_n = gain * weight / B *
    # (2 (l_n - m) - 2 d mean_k(l_k - m)), and dl_n/dA_i = (A_i y_n) y_n^T / (num_ws l_n).
    dloss_dl = 4.0 * 2.0 / 3 * (2 * (lengths - m) - 2 * 0.01 * (lengths - m).mean())  # [3]
    expected_grad = torch.einsum("n,niw,np->iwp", dloss_dl / (2 * lengths), jty, y)
    assert torch.allclose(G.synthesis.A.grad, expected_grad)

    state = loss.state_dict()
    fresh = StyleGAN2Loss(ToyG(), ToyD(), pl_weight=2.0)
    fresh.load_state_dict(state)
    assert float(fresh.pl_mean) == float(loss.pl_mean)


def test_path_length_step_equals_the_published_formula(monkeypatch):
    torch.manual_seed(5)
    z = torch.randn(8, 3, dtype=torch.float64)
    y = torch.randn(4, 1, 2, 2, dtype=torch.float64)
    ours, published = ToyG(curvature=0.3), ToyG(curvature=0.3)
    ours.requires_grad_(True)
    loss = StyleGAN2Loss(ours, ToyD(), pl_weight=2.0, pl_batch_shrink=2, pl_decay=0.3)
    loss.pl_mean.fill_(0.75)  # A running mean from earlier steps, so both parts of the gradient matter.
    monkeypatch.setattr(torch, "randn_like", noise_by_seed({7: y}))
    reports = record_reports(monkeypatch)
    loss.accumulate_gradients(Phase.Greg, chunk_maker([gen_chunk(z)], [7]), 1, gain=4.0)
    monkeypatch.undo()

    penalty, m = published_pl_step(published, z[:4], y, 0.75, weight=2.0, decay=0.3, gain=4.0)
    assert torch.allclose(reports["Loss/pl_penalty"][0], penalty)
    assert float(loss.pl_mean) == pytest.approx(float(m), rel=1e-6)  # pl_mean is float32.
    for name in ["synthesis.A", "mapping.scale"]:
        ours_grad = ours.get_parameter(name).grad
        published_grad = published.get_parameter(name).grad
        torch.testing.assert_close(ours_grad, published_grad, rtol=1e-6, atol=1e-9, msg=name)
    # Holding m fixed would give a different gradient: the part through the batch mean is not negligible here.
    held = ToyG(curvature=0.3)
    ws = held.mapping(z[:4], None)
    (grads,) = torch.autograd.grad((held.synthesis(ws) * y / 2).sum(), ws, create_graph=True)
    lengths = grads.square().sum(dim=2).mean(dim=1).sqrt()
    ((lengths - m).square() * 2.0).mean().mul(4.0).backward()
    assert not torch.allclose(held.synthesis.A.grad, published.synthesis.A.grad, rtol=1e-3)


def _pl_run(G, chunks, seeds, bank):
    """Run Greg of one step over `chunks` (this process's), then the gradient reduction; return the state."""
    loss = StyleGAN2Loss(G, ToyD(), pl_weight=2.0, pl_batch_shrink=2, pl_decay=0.3)
    loss.pl_mean.fill_(0.75)
    G.requires_grad_(True)
    original = torch.randn_like
    torch.randn_like = noise_by_seed(bank)
    try:
        gain = 4.0 * len(chunks[0].gen_z) / 8  # The lazy interval times the chunk's share of the batch of 8.
        loss.accumulate_gradients(Phase.Greg, chunk_maker(chunks, seeds), len(chunks), gain=gain)
    finally:
        torch.randn_like = original
    reduce_gradients(G, "G")
    return {"pl_mean": loss.pl_mean.clone(), **{name: p.grad.clone() for name, p in G.named_parameters()}}


def _pl_bank():
    """Latents of a batch of 8 and the path length noise of its samples 0, 1, 4, 5 (the first half of each
    4-sample chunk): under seed 0 for a single chunk of all 8, under seeds 1 and 2 for two chunks of 4."""
    generator = torch.Generator().manual_seed(11)
    z = torch.randn(8, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(4, 1, 2, 2, generator=generator, dtype=torch.float64)
    return z, {0: y, 1: y[:2], 2: y[2:]}


def _pl_rank_worker(out_dir):
    """One of two ranks: chunk `rank` of the split batch."""
    torch.set_num_threads(1)
    rank = distributed.get_rank()
    z, bank = _pl_bank()
    chunk = gen_chunk(z[4 * rank : 4 * rank + 4])
    state = _pl_run(ToyG(curvature=0.3), [chunk], [1 + rank], bank)
    torch.save(state, f"{out_dir}/rank{rank}.pt")


@pytest.mark.slow
def test_path_length_gradient_does_not_depend_on_chunks_or_ranks(tmp_path):
    z, bank = _pl_bank()
    # One chunk holding the 8 latents; its path length samples are z[:4], so reorder to make them 0, 1, 4, 5.
    whole = gen_chunk(z[[0, 1, 4, 5, 2, 3, 6, 7]])
    one = _pl_run(ToyG(curvature=0.3), [whole], [0], bank)
    two = _pl_run(ToyG(curvature=0.3), [gen_chunk(z[:4]), gen_chunk(z[4:])], [1, 2], bank)
    distributed.launch(_pl_rank_worker, (str(tmp_path),), num_processes=2)
    ranks = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert float(one["pl_mean"]) != 0.75
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-9, atol=1e-12, msg=f"2 chunks: {name}")
        for rank, state in enumerate(ranks):
            torch.testing.assert_close(state[name], one[name], rtol=1e-9, atol=1e-12, msg=f"rank {rank}: {name}")
