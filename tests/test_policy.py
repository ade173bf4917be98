"""Adaptive draft length: large k when drafts are good, small k or plain decoding when they are not."""

from __future__ import annotations

import numpy as np
import pytest

from mlx_spec.core.loading import load_pair
from mlx_spec.core.policy import AdaptivePolicy, MeasuredCosts, expected_tokens, make_policy, measure_costs
from mlx_spec.core.loop import SpecStats, speculative_generate_step
from mlx_spec.core.target import Target
from test_speculative import ConstantDrafter, OracleDrafter


def flat_costs():  # bandwidth-bound dense target: verifying 1..9 tokens costs the same
    return MeasuredCosts(draft_seconds=0.1, verify_seconds=[1.0] * 9, smoothing=0.0)


def simulate(policy, alpha: float, steps: int = 300, seed: int = 0) -> list[int]:
    """Feed the policy outcomes where each draft is accepted with probability alpha."""
    rng = np.random.RandomState(seed)
    chosen = []
    for _ in range(steps):
        k = policy.choose()
        n = 0
        while n < k and rng.random_sample() < alpha:
            n += 1
        policy.update(k, n, 0.1 * k, 1.0)
        chosen.append(k)
    return chosen


def test_expected_tokens():
    assert expected_tokens([0.5, 0.5], 0) == 1
    assert expected_tokens([0.5, 0.5], 2) == pytest.approx(1.75)


@pytest.mark.parametrize("alpha,lo,hi", [(0.95, 6, 8), (0.8, 3, 8), (0.3, 0, 1), (0.02, 0, 0)])
def test_choice_follows_acceptance(alpha, lo, hi):
    policy = AdaptivePolicy(8, flat_costs())
    chosen = simulate(policy, alpha)
    settled = int(np.median(chosen[100:]))
    assert lo <= settled <= hi, (alpha, settled)


def test_parks_at_plain_decoding_but_probes():
    policy = AdaptivePolicy(8, flat_costs(), probe_every=16)
    chosen = simulate(policy, 0.0, steps=200)
    tail = chosen[50:]
    assert tail.count(0) / len(tail) > 0.9
    assert 1 in tail  # keeps probing


def test_expensive_verify_picks_shorter_drafts():
    """Same acceptance; verify cost growing with tokens (an MoE loading more experts) -> smaller k."""
    alpha = 0.7
    dense = int(np.median(simulate(AdaptivePolicy(8, flat_costs()), alpha)[100:]))
    growing = MeasuredCosts(draft_seconds=0.1, verify_seconds=[1.0 + 0.45 * i for i in range(9)], smoothing=0.0)
    moe = int(np.median(simulate(AdaptivePolicy(8, growing), alpha)[100:]))
    assert moe < dense


def test_recovers_when_drafts_get_good_again():
    policy = AdaptivePolicy(8, flat_costs(), probe_every=8)
    simulate(policy, 0.0, steps=100)
    assert policy.best() == 0
    chosen = simulate(policy, 0.95, steps=200, seed=1)
    assert int(np.median(chosen[-50:])) >= 5


@pytest.fixture(scope="module")
def dense(tiny):
    pair = load_pair(tiny / "dense" / "target", tiny / "dense" / "drafter-trained")
    return Target(pair.target.module, pair.target.text_config), pair.drafter.module


def test_auto_end_to_end(dense):
    """Through the real loop: an always-right drafter drives k to the maximum, a never-right one to 0;
    output stays the target's greedy output."""
    target, drafter = dense
    prompt = [2] + list(range(20, 60))
    plain = list(speculative_generate_step(prompt, target, None, max_tokens=150))
    costs = MeasuredCosts(draft_seconds=1e-4, verify_seconds=[1e-3] * 9, smoothing=0.0)
    oracle = OracleDrafter(prompt, plain, target.vocab_size, target.hidden_size, drafter.sliding_span)
    never = ConstantDrafter(target.vocab_size, target.hidden_size, drafter.sliding_span)
    for d, check in ((oracle, lambda ks: np.median(ks) == 8), (never, lambda ks: ks.count(0) / len(ks) > 0.8)):
        policy = AdaptivePolicy(8, MeasuredCosts(costs.draft_seconds, list(costs.verify_seconds), 0.0))
        out = list(speculative_generate_step(prompt, target, d, policy=policy, max_tokens=150))
        assert out == plain
        assert check(policy.history[10:]), policy.history
    # and with the distilled drafter and measured costs, still exact
    policy = make_policy("auto", target, drafter)
    stats = SpecStats()
    assert list(speculative_generate_step(prompt, target, drafter, policy=policy, max_tokens=150, stats=stats)) == plain


def test_measured_cost_table(dense):
    target, drafter = dense
    costs = measure_costs(target, drafter, 4, repeats=2)
    assert len(costs.verify_seconds) == 5 and all(t > 0 for t in costs.verify_seconds)
    assert costs.draft_seconds > 0


def test_seeded_auto_runs_are_reproducible(tiny):
    """With a seed, auto prices steps by weight bytes (no timings), so the same seed gives the same
    tokens and draft lengths; another seed gives other tokens."""
    import mlx_spec

    model, tokenizer = mlx_spec.load(tiny / "moe" / "target", tiny / "moe" / "drafter-trained")

    def run(seed):
        responses = list(mlx_spec.stream_generate(model, tokenizer, [2, 17, 9], max_tokens=40, temp=0.8,
                                                  seed=seed, ignore_eos=True))
        return [r.token for r in responses], responses[-1].stats.drafts_per_step

    first = run(1)
    assert run(1) == first
    assert run(2)[0] != first[0]
    assert any(first[1])  # it did speculate
