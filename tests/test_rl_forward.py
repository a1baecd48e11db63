"""The forward-process RL objectives (`vidpost.rl.forward`) on hand-worked numbers and their identities."""

from __future__ import annotations

import math

import pytest
import torch

from vidpost.rl.forward import (
    awm_log_likelihood,
    awm_loss,
    nft_loss,
    nft_optimality,
    old_policy_decay,
    rsft_select,
    velocity_kl,
)


def test_optimality_maps_clipped_advantages_onto_the_unit_interval():
    a = torch.tensor([-10.0, -5.0, 0.0, 2.5, 5.0, 7.0])
    assert nft_optimality(a).tolist() == [0.0, 0.0, 0.5, 0.75, 1.0, 1.0]


def test_nft_loss_on_hand_worked_numbers():
    # x0 = 0, x_t = 1, σ = ½; v_old = [2, 0], v_θ = [2, 2], β = ½:
    # v⁺ = [2, 1] → x0⁺ = [0, ½] → mean sq ⅛ / mean abs ¼ = ½;  v⁻ = [2, −1] → x0⁻ = [0, 3/2] → 9/8 / ¾ = 3/2
    # loss = (¾·½ + ¼·3/2) / ½ · 5 = 7.5
    x0, x_t = torch.zeros(1, 2), torch.ones(1, 2)
    v_old, v = torch.tensor([[2.0, 0.0]]), torch.tensor([[2.0, 2.0]], requires_grad=True)
    loss, parts = nft_loss(v, v_old, x_t, x0, torch.tensor([0.5]), torch.tensor([0.75]), beta=0.5)
    assert parts["positive"].item() == pytest.approx(0.5)
    assert parts["negative"].item() == pytest.approx(1.5)
    assert loss.item() == pytest.approx(7.5)


def _nft_grad(r: float, v_old: torch.Tensor, x_t, x0, sigma, beta: float = 1.0) -> torch.Tensor:
    v = v_old.clone().requires_grad_(True)
    loss, _ = nft_loss(v, v_old, x_t, x0, sigma, torch.full((len(x0),), r), beta=beta)
    loss.backward()
    return v.grad


def test_nft_gradient_at_the_old_policy_is_proportional_to_two_r_minus_one():
    """At v_θ = v_old both implicit policies are v_old: the gradient is (2r − 1)·(the positive policy's), so a
    neutral sample (r = ½) contributes nothing and a bad one pushes exactly opposite to a good one."""
    g = torch.Generator().manual_seed(0)
    x0, eps, v_old = (torch.randn(3, 4, 2, 5, 5, generator=g) for _ in range(3))
    sigma = torch.tensor([0.2, 0.5, 0.9])
    x_t = (1 - sigma.view(-1, 1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1, 1) * eps
    good, bad, neutral = (_nft_grad(r, v_old, x_t, x0, sigma, beta=0.3) for r in (1.0, 0.0, 0.5))
    assert neutral.abs().max().item() < 1e-6
    assert torch.allclose(bad, -good, atol=1e-6)
    assert torch.allclose(_nft_grad(0.8, v_old, x_t, x0, sigma, beta=0.3), 0.6 * good, atol=1e-6)
    # a good sample's step moves v_θ towards the target ε − x0 (the loss falls along −grad)
    target = eps - x0
    assert ((target - v_old) * -good).sum().item() > 0


def test_nft_refuses_a_non_positive_beta():
    with pytest.raises(ValueError, match="beta must be positive"):
        nft_loss(
            torch.zeros(1, 2),
            torch.zeros(1, 2),
            torch.zeros(1, 2),
            torch.zeros(1, 2),
            torch.ones(1),
            torch.ones(1),
            beta=0.0,
        )


def test_velocity_kl_and_the_old_policy_schedule():
    assert velocity_kl(torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 1.0]])).item() == pytest.approx(2.5)
    assert [old_policy_decay(s) for s in (0, 100, 499, 10_000)] == [0.0, 0.1, pytest.approx(0.499), 0.5]


def test_awm_log_likelihood_weightings_on_hand_worked_numbers():
    # v = [1, 1], target ε − x0 = [0, 2]: mean squared error 1
    v, x0, eps, s = torch.ones(1, 2), torch.zeros(1, 2), torch.tensor([[0.0, 2.0]]), torch.tensor([0.5])
    assert awm_log_likelihood(v, x0, eps, s).item() == pytest.approx(-1.0)
    assert awm_log_likelihood(v, x0, eps, s, weighting="t").item() == pytest.approx(-0.5)
    ghuber = -0.5 / 0.25 * ((1 + 1e-10) ** 0.25 - 1e-10**0.25)
    assert awm_log_likelihood(v, x0, eps, s, weighting="ghuber").item() == pytest.approx(ghuber)
    with pytest.raises(ValueError, match="unknown AWM weighting"):
        awm_log_likelihood(v, x0, eps, s, weighting="elbo")


def test_awm_on_policy_is_an_advantage_weighted_flow_matching_loss_and_the_clip_acts_off_policy():
    lp = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 0.5])
    loss, ratio = awm_loss(lp, lp.detach(), adv)
    assert torch.equal(ratio.detach(), torch.ones(3)) and loss.item() == pytest.approx(-adv.mean().item())
    loss.backward()
    assert torch.allclose(lp.grad, -adv / 3)
    # off policy: a ratio of e^0.1 with A > 0 is beyond 1 + c and carries no gradient
    lp2 = torch.tensor([0.1], requires_grad=True)
    loss2, ratio2 = awm_loss(lp2, torch.zeros(1), torch.ones(1), clip_range=0.01)
    assert ratio2.item() == pytest.approx(math.exp(0.1)) and loss2.item() == pytest.approx(-1.01)
    loss2.backward()
    assert lp2.grad.item() == 0.0


def test_rsft_selection():
    rewards = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.3, 0.2])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    assert rsft_select(rewards, groups, k=1).tolist() == [1, 3]  # the tie goes to the earlier sample
    assert rsft_select(rewards, groups, k=3).tolist() == list(range(6))  # k = G: SFT on every sample
    assert rsft_select(rewards, groups, threshold=0.4).tolist() == [1, 2]
    assert rsft_select(rewards, groups, k=2, threshold=0.25).tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="needs k"):
        rsft_select(rewards, groups)
