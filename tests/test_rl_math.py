"""GRPO maths: SDE steps (zero noise = ODE, closed-form log-prob, marginal-preserving mean), advantages and
the clipped objective, each against hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch

from vidpost.models.sampling import ode_step
from vidpost.rl.advantages import group_advantages, mix_advantages, reward_advantages, zero_std_fraction
from vidpost.rl.iteration import choose_prompts, choose_steps, micro_batches, split_updates
from vidpost.rl.loss import clipped_policy_loss, gaussian_kl, ratio_stats
from vidpost.rl.sde import KINDS, sde_step
from vidpost.seeding import step_generator


@pytest.fixture
def state():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 2, 4, 4, generator=g)
    v = torch.randn(3, 4, 2, 4, 4, generator=g)
    eps = torch.randn(3, 4, 2, 4, 4, generator=g)
    return x, v, eps


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("s", "s_next"), [(1.0, 0.95), (0.6, 0.5), (0.1, 0.0)])
def test_zero_noise_equals_ode(kind, s, s_next, state):
    x, v, eps = state
    prev, log_prob, mean, std = sde_step(kind, v, s, s_next, x, noise_level=0.0, noise=eps)
    torch.testing.assert_close(prev, ode_step(x, v, s, s_next), atol=1e-6, rtol=0)
    assert float(std.abs().max()) == 0 and torch.equal(log_prob, torch.zeros(3))


@pytest.mark.parametrize("kind", KINDS)
def test_log_prob_is_the_closed_form_gaussian(kind, state):
    x, v, eps = state
    prev, log_prob, mean, std = sde_step(kind, v, 0.7, 0.6, x, noise_level=0.5, noise=eps)
    torch.testing.assert_close(prev, mean + std * eps)
    sd = float(std.flatten()[0])
    by_hand = (-((prev - mean) ** 2) / (2 * sd**2) - math.log(sd) - 0.5 * math.log(2 * math.pi)).flatten(1).mean(1)
    torch.testing.assert_close(log_prob, by_hand)
    ref = torch.distributions.Normal(mean, sd).log_prob(prev).flatten(1).mean(1)
    torch.testing.assert_close(log_prob, ref)
    # Evaluating a given prev_sample returns it unchanged with the same log-prob.
    again, lp2, _, _ = sde_step(kind, v, 0.7, 0.6, x, noise_level=0.5, prev_sample=prev)
    assert again is prev
    torch.testing.assert_close(lp2, log_prob)


def test_hand_worked_stds():
    x = torch.zeros(1, 1)
    v = torch.zeros(1, 1)
    _, _, _, std = sde_step("dance", v, 0.5, 0.25, x, noise_level=0.3, noise=torch.zeros(1, 1))
    assert float(std) == pytest.approx(0.3 * math.sqrt(0.25))
    _, _, _, std = sde_step("flow", v, 0.5, 0.25, x, noise_level=0.7, noise=torch.zeros(1, 1))
    assert float(std) == pytest.approx(0.7 * math.sqrt(0.5 / 0.5) * math.sqrt(0.25))
    _, _, _, std = sde_step("flow", v, 1.0, 0.9, x, noise_level=0.7, noise=torch.zeros(1, 1))
    assert float(std) == pytest.approx(0.7 * math.sqrt(1.0 / 0.1) * math.sqrt(0.1))  # σ = 1 uses σ_max = 0.9
    _, _, _, std = sde_step("cps", v, 0.5, 0.25, x, noise_level=0.5, noise=torch.zeros(1, 1))
    assert float(std) == pytest.approx(0.25 * math.sin(math.pi / 4))


@pytest.mark.parametrize("kind", KINDS)
def test_sde_preserves_the_marginal_for_an_exact_velocity(kind):
    """x0 fixed, x_σ = (1−σ)·x0 + σ·ε, exact v = ε − x0: one SDE step lands on the σ_next marginal (mean
    (1−σ')·x0, std σ')."""
    torch.manual_seed(0)
    n, s, s_next = 200_000, 0.6, 0.45
    x0 = torch.full((n, 1), 0.8)
    eps = torch.randn(n, 1)
    x = (1 - s) * x0 + s * eps
    v = eps - x0
    prev, *_ = sde_step(kind, v, s, s_next, x, noise_level=0.4)
    # For an exact velocity the per-sample x0 is known, so the marginal of x_{σ'} given x0 is N((1−σ')x0, σ'²).
    # CPS re-noises exactly; the Euler–Maruyama steps of "dance" and "flow" match to first order in Δσ.
    tol = 0.005 if kind == "cps" else 0.02
    assert prev.mean().item() == pytest.approx((1 - s_next) * 0.8, abs=tol)
    assert prev.std().item() == pytest.approx(s_next, abs=tol)


def test_per_sample_sigmas_broadcast(state):
    x, v, eps = state
    sig, nxt = torch.tensor([0.9, 0.5, 0.3]), torch.tensor([0.8, 0.4, 0.2])
    prev, lp, _, _ = sde_step("dance", v, sig, nxt, x, noise_level=0.3, noise=eps)
    for i in range(3):
        p_i, lp_i, _, _ = sde_step(
            "dance", v[i : i + 1], float(sig[i]), float(nxt[i]), x[i : i + 1], noise_level=0.3, noise=eps[i : i + 1]
        )
        torch.testing.assert_close(prev[i : i + 1], p_i)
        torch.testing.assert_close(lp[i : i + 1], lp_i)


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown SDE kind"):
        sde_step("ddim", torch.zeros(1, 1), 0.5, 0.4, torch.zeros(1, 1), noise_level=0.1)


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    adv = group_advantages(rewards, groups, eps=0.0)
    s = math.sqrt(2 / 3)  # population std of 1, 2, 3
    assert adv.tolist() == pytest.approx([-1 / s, 0.0, 1 / s, 0.0, 0.0, 0.0], abs=1e-6)
    assert zero_std_fraction(rewards, groups) == 0.5
    # Clamp at ±5: one outlier in a big group.
    big = torch.tensor([0.0] * 99 + [1.0])
    assert group_advantages(big, torch.zeros(100)).max().item() == 5.0
    # Global std: the batch's std scales every group.
    glob = group_advantages(rewards, groups, eps=0.0, global_std=True)
    std_all = rewards.std(unbiased=False).item()
    assert glob.tolist() == pytest.approx([-1 / std_all, 0.0, 1 / std_all, 0.0, 0.0, 0.0], abs=1e-6)
    # Interleaved group ids work the same as contiguous ones.
    perm = torch.tensor([3, 0, 4, 1, 5, 2])
    torch.testing.assert_close(group_advantages(rewards[perm], groups[perm], eps=0.0), adv[perm])


def test_mix_advantages():
    a = {"hps": torch.tensor([1.0, -1.0]), "motion": torch.tensor([0.5, 0.5])}
    assert mix_advantages(a, {"hps": 1.0, "motion": 0.2}).tolist() == pytest.approx([1.1, -0.9])
    with pytest.raises(KeyError):
        mix_advantages(a, {"clip": 1.0})


def test_clipped_loss_by_hand():
    adv = torch.tensor([1.0, -1.0, 2.0])
    old = torch.zeros(3)
    new = torch.log(torch.tensor([1.5, 1.5, 0.5]))
    loss, ratio = clipped_policy_loss(new, old, adv, clip_range=0.2)
    # max(−A·r, −A·clip(r)): [max(−1.5, −1.2), max(1.5, 1.2), max(−1.0, −1.6)] = [−1.2, 1.5, −1.0]
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 1.0) / 3)
    stats = ratio_stats(ratio, new, old, 0.2)
    assert stats["clip_fraction"] == 1.0 and stats["ratio_max"] == pytest.approx(1.5)


def test_ratio_is_one_and_gradient_is_minus_advantage_when_policies_match():
    logp = torch.tensor([-1.3, 0.2, 0.7], requires_grad=True)
    adv = torch.tensor([0.5, -2.0, 1.0])
    loss, ratio = clipped_policy_loss(logp, logp.detach(), adv, clip_range=1e-4)
    assert torch.equal(ratio, torch.ones(3))
    loss.backward()
    torch.testing.assert_close(logp.grad, -adv / 3)


def test_gaussian_kl():
    m = torch.zeros(2, 4)
    ref = torch.ones(2, 4)
    std = torch.tensor([[0.5], [1.0]])
    assert gaussian_kl(m, ref, std).tolist() == pytest.approx([2.0, 0.5])
    assert gaussian_kl(m, m, std).tolist() == [0.0, 0.0]


def test_reward_advantages_mix_per_reward_or_normalise_the_total():
    groups = torch.tensor([0, 0, 1, 1])
    scores = {"a": torch.tensor([1.0, 3.0, 0.0, 0.0]), "b": torch.tensor([0.0, 1.0, 2.0, 0.0])}
    weights = {"a": 1.0, "b": 0.5}
    total = scores["a"] + 0.5 * scores["b"]
    mixed = reward_advantages(scores, total, groups, weights, per_reward=True, eps=0.0)
    expected = group_advantages(scores["a"], groups, eps=0.0) + 0.5 * group_advantages(scores["b"], groups, eps=0.0)
    assert torch.equal(mixed, expected)
    assert torch.allclose(mixed, torch.tensor([-1.5, 1.5, 0.5, -0.5]))
    on_total = reward_advantages(scores, total, groups, weights, per_reward=False, eps=0.0)
    assert torch.equal(on_total, group_advantages(total, groups, eps=0.0))


def test_micro_batches_and_their_split_into_optimizer_steps():
    micro = micro_batches(7, 3)
    assert [m.tolist() for m in micro] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [len(part) for part in split_updates(micro, 2)] == [1, 2]
    assert [len(part) for part in split_updates(micro, 10)] == [1, 1, 1]  # at most one step per micro-batch
    assert [len(part) for part in split_updates(micro, 0)] == [3]


def test_iteration_draws_are_functions_of_seed_and_iteration():
    pool = [f"p{i}" for i in range(10)]
    assert choose_prompts(pool, 4, seed=1, step=3) == choose_prompts(pool, 4, seed=1, step=3)
    assert len(set(choose_prompts(pool, 4, seed=1, step=3))) == 4
    assert len(choose_prompts(pool[:2], 5, seed=0, step=0)) == 5  # small pool: with replacement
    sde = torch.tensor([False, True, True, True, False, True])
    steps = choose_steps(sde, 0.5, step_generator(0, 7, 0, 2))
    assert steps == choose_steps(sde, 0.5, step_generator(0, 7, 0, 2))
    assert len(steps) == 2 and steps == sorted(steps) and all(sde[i] for i in steps)
    assert len(choose_steps(sde, 0.0, step_generator(0, 0, 0, 2))) == 1
