"""Adaptive draft length: large k when drafts are good, small k or plain decoding when they are not."""

from __future__ import annotations

import numpy as np
import pytest

from mlx_spec.core.loading import load_pair
from mlx_spec.core.loop import measure_step_costs
from mlx_spec.core.policy import AdaptivePolicy, BatchPolicy, MoECosts, StepCosts, expected_tokens
from mlx_spec.core.loop import SpecStats, speculative_generate_step, token_ids
from mlx_spec.core.target import Target
from test_speculative import ConstantDrafter, OracleDrafter


def flat_costs():  # bandwidth-bound dense target: verifying 1..9 tokens costs the same, a draft step 0.1
    return StepCosts([1.0 + 0.1 * k for k in range(9)], smoothing=0.0)


def simulate(policy, alpha: float, steps: int = 300, seed: int = 0) -> list[int]:
    """Feed the policy outcomes where each draft is accepted with probability alpha."""
    rng = np.random.RandomState(seed)
    chosen = []
    for _ in range(steps):
        k = policy.choose()
        n = 0
        while n < k and rng.random_sample() < alpha:
            n += 1
        policy.update(k, n)
        policy.observe(k, 1.0 + 0.1 * k)
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


def test_probes_are_rarer_when_a_draft_step_costs_more():
    """Parked at plain decoding, probes stay within 2% of the time: a k = 1 step costing 2x a plain one
    (a launch-bound GPU batch) is probed every ~50 steps, not every 16."""
    from mlx_spec.core.policy import probe_interval

    assert probe_interval(StepCosts([1.0, 1.2] + [1.3] * 7, smoothing=0), 16) == 16
    assert probe_interval(StepCosts([1.0, 2.0] + [2.5] * 7, smoothing=0), 16) == 50
    policy = AdaptivePolicy(8, StepCosts([1.0, 3.0] + [3.5] * 7, smoothing=0), probe_every=16)
    tail = simulate(policy, 0.0, steps=400)[100:]
    assert 0 < tail.count(1) <= len(tail) / 40


def test_probes_back_off_while_nothing_is_accepted_and_resume_after_an_accept():
    """Parked with drafts that are never accepted, the interval between probes doubles per failed probe
    (16, 32, 64, 128, then stays); one accepted probe brings it back to 16."""
    policy = AdaptivePolicy(8, flat_costs(), probe_every=16)
    chosen = simulate(policy, 0.0, steps=700)
    parked = chosen.index(0)  # the prior's first drafts, then plain decoding
    probes = [i for i, k in enumerate(chosen) if k and i > parked]
    gaps = np.diff([parked - 1] + probes).tolist()
    assert gaps[:4] == [17, 33, 65, 129] and set(gaps[4:]) == {129}, gaps
    assert policy.probes.failed == len(probes)
    while policy.choose() == 0:
        policy.update(0, 0)
    policy.update(1, 1)  # the probe's draft was accepted
    assert policy.probes.failed == 0 and policy.probes.due(policy.costs) is False
    policy.seen = type(policy.seen)(8, prior=0.0)  # forget the accept: parked again
    for _ in range(16):
        assert policy.choose() == 0
        policy.update(0, 0)
    assert policy.choose() == 1


def test_probing_state_carries_over_to_the_next_generation():
    """A drafter that failed its probes in one generation is not probed afresh at step 16 of the next."""
    first = AdaptivePolicy(8, flat_costs(), probe_every=16)
    simulate(first, 0.0, steps=300)
    assert first.probes.failed >= 3
    second = AdaptivePolicy(8, flat_costs(), probe_every=16).remember(first)
    assert (second.probes.failed, second.probes.since_draft) == (first.probes.failed, first.probes.since_draft)
    chosen = simulate(second, 0.0, steps=80)
    parked = chosen.index(0)  # after the drafts its half-weight memory still allows
    assert 1 not in chosen[parked : parked + 60]  # the first probe of a fresh state would come 16 steps in
    batch = BatchPolicy(4, costs_for=lambda b: flat_costs())
    batch.probes.failed = 2
    assert BatchPolicy(4, costs_for=lambda b: flat_costs()).remember(batch).probes.failed == 2


def test_batch_probes_back_off_too():
    policy = BatchPolicy(4, costs_for=lambda b: flat_costs(), probe_every=16)
    rows = [policy.new_row() for _ in range(2)]
    for a in rows:
        a.accepted, a.reached = [0.0] * 4, [50.0] * 4  # drafts never accepted
    chosen = []
    for _ in range(200):
        k = policy.choose(rows)
        policy.update(k, [0, 0])
        chosen.append(k)
    assert [i for i, k in enumerate(chosen) if k][:3] == [16, 16 + 33, 16 + 33 + 65]


def test_a_draft_step_is_never_priced_below_its_warm_up_ratio_to_plain():
    """Observations that made k = 1 look cheap against plain decoding (a step queued behind a plain
    one ran mostly during it; noise) do not make the policy draft with drafts seldom accepted: the
    warm-up table, timed back to back, bounds a draft step's price against plain from below."""
    costs = StepCosts([1.0, 1.3, 1.4], smoothing=0.5)
    for _ in range(20):  # plain steps, then one k = 1 step observed at a third of a plain one
        for k, seconds in ((0, 1.0), (0, 1.0), (0, 1.0), (1, 0.3)):
            costs.observe(k, seconds)
    assert costs.step(0) == pytest.approx(1.0) and costs.step(1) == pytest.approx(1.3)
    costs.relative[1] = 0.5  # however it was learned
    assert costs.step(1) == pytest.approx(1.3)
    policy = AdaptivePolicy(2, costs)
    policy.seen.accepted, policy.seen.reached = [6.0, 0.0], [30.0, 0.0]  # acceptance 0.2
    assert policy.best() == 0
    assert StepCosts([1.0, 0.8]).step(1) == 1.0  # and never below plain (an odd table)


def test_expensive_verify_picks_shorter_drafts():
    """Same acceptance; verify cost growing with tokens (an MoE loading more experts) -> smaller k."""
    alpha = 0.7
    dense = int(np.median(simulate(AdaptivePolicy(8, flat_costs()), alpha)[100:]))
    growing = StepCosts([0.1 * k + 1.0 + 0.45 * k for k in range(9)], smoothing=0.0)
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
    plain = token_ids(speculative_generate_step(prompt, target, None, max_tokens=150))
    costs = [1e-3 + 1e-4 * k for k in range(9)]
    oracle = OracleDrafter(prompt, plain, target.vocab_size, target.hidden_size, drafter.sliding_span)
    never = ConstantDrafter(target.vocab_size, target.hidden_size, drafter.sliding_span)
    for d, check in ((oracle, lambda ks: np.median(ks) == 8), (never, lambda ks: ks.count(0) / len(ks) > 0.8)):
        policy = AdaptivePolicy(8, StepCosts(list(costs), smoothing=0.0))
        out = token_ids(speculative_generate_step(prompt, target, d, policy=policy, max_tokens=150))
        assert out == plain
        assert check(policy.history[10:]), policy.history
    # and with the distilled drafter and measured costs, still exact
    policy = AdaptivePolicy(8, measure_step_costs(target, drafter, 8))
    stats = SpecStats()
    assert token_ids(speculative_generate_step(prompt, target, drafter, policy=policy, max_tokens=150, stats=stats)) == plain


def test_measured_cost_table(dense):
    """Whole-step costs for k = 0..4 from the real step: positive, and drafting more costs more."""
    target, drafter = dense
    costs = measure_step_costs(target, drafter, 4, repeats=3)
    assert len(costs.measured) == 5 and all(t > 0 for t in costs.measured)
    assert costs.measured[4] > costs.measured[0]  # four draft steps and a 5-token verify vs one plain step


def test_costs_follow_observations_and_go_stale():
    """Plain steps set the machine's pace, and every price follows it; a lasting pace change marks the
    table stale; an outlier is clipped."""
    costs = StepCosts([1.0, 1.2, 1.4])
    for _ in range(3):
        costs.observe(0, 1.0)
    assert costs.step(1) == pytest.approx(1.2) and not costs.stale
    costs.observe(0, 100.0)  # one wild outlier: at most a 2x ratio, smoothed
    costs.observe(0, 1.0)
    assert costs.step(0) < 1.2
    for _ in range(60):
        costs.observe(0, 2.0)  # the machine got twice as slow
    assert costs.stale and costs.step(0) == pytest.approx(2.0, rel=0.1)
    assert costs.step(1) / costs.step(0) == pytest.approx(1.2)  # prices keep their ratios to plain
    assert costs.step(3) / costs.step(0) == pytest.approx(1.6)  # beyond the table: extrapolated


def test_a_long_run_of_drafts_follows_the_pace_and_keeps_its_price_against_plain():
    """With no plain step near, speculative steps slower than measured are the machine slowing down
    (plain decoding would be slower too); next to plain steps they are a k step's own price. Before,
    a long run of k = 1 steps moved only its own price: when the machine sped up meanwhile, k = 1
    looked as cheap as plain, and drafts accepted 0-15% of the time were drafted all generation long."""
    costs = StepCosts([1.0, 1.2, 1.4])
    for _ in range(40):
        costs.observe(1, 0.9)  # a long run of drafts on a machine that got faster
    assert costs.step(0) == pytest.approx(0.75, rel=0.05)  # plain follows the pace
    assert costs.step(1) / costs.step(0) == pytest.approx(1.2, rel=0.02)  # k = 1 keeps its price against it
    policy = AdaptivePolicy(1, costs)
    policy.seen.accepted[:], policy.seen.reached[:] = [10.0], [100.0]  # acceptance 0.1: k = 1 does not pay
    assert policy.best() == 0
    fresh = StepCosts([1.0, 1.2, 1.4])
    for _ in range(6):  # plain and k = 1 steps side by side: k = 1 costs 1.5x plain, not 1.2x
        for k, seconds in ((0, 1.0), (0, 1.0), (0, 1.0), (0, 1.0), (1, 1.5), (1, 1.5), (1, 1.5)):
            fresh.observe(k, seconds)
    assert fresh.step(0) == pytest.approx(1.0, rel=0.02)
    assert fresh.step(1) > 1.35  # its own price, learned against plain's
    assert fresh.step(2) == pytest.approx(1.4, rel=0.02)  # not observed: the table's ratio


def test_each_generation_pairs_only_its_own_steps(dense):
    """Observations are applied one step late, paired with their neighbour; the last held-back one of
    a generation is dropped when the next begins, not charged the next generation's slow first step."""
    costs = StepCosts([1.0, 1.2])
    costs.observe(1, 1.2)
    costs.observe(1, 1.2)  # a generation's last observed step (held back)
    costs.restart()
    costs.observe(0, 1.9)  # the next generation's first plain step, unpipelined
    costs.observe(0, 1.0)
    assert costs.step(1) == pytest.approx(1.2)  # not charged the 0.9
    target, drafter = dense  # and the loop restarts the pairing at every generation
    costs.pending = (1, 5.0)
    list(speculative_generate_step([2] + list(range(20, 40)), target, drafter, policy=AdaptivePolicy(2, costs), max_tokens=2))
    assert costs.pending is None  # its only step is the last one, never observed
    tables = {3: StepCosts([1.0, 1.2]), 4: StepCosts([1.0, 1.2])}  # batched: each size pairs its own steps
    batch = BatchPolicy(1, costs_for=tables.get)
    for rows, k, seconds in ((3, 1, 1.2), (3, 1, 1.2), (4, 0, 1.0), (3, 0, 1.9), (3, 0, 1.0)):
        batch.observe(rows, k, seconds)
    assert tables[3].step(1) == pytest.approx(1.2)


def test_a_draft_must_promise_more_than_noise_to_beat_plain():
    """k = 1 costing 1.2x plain: at acceptance 0.24 it promises 3% more tokens per second (inside the
    timing noise: plain is kept), at 0.35 it promises 12% (chosen)."""
    for a, want in ((0.24, 0), (0.35, 1)):
        policy = AdaptivePolicy(1, StepCosts([1.0, 1.2], smoothing=0))
        policy.seen.accepted[:], policy.seen.reached[:] = [a * 1000], [1000.0]
        assert policy.rate(1) > policy.rate(0) or a < 0.2
        assert policy.best() == want, a


def test_moe_costs_correct_for_the_experts_text_routes_to(tiny):
    """Measured on random tokens (wide routing); once real forwards route to fewer experts, the
    predicted step cost falls by those experts' bytes."""
    pair = load_pair(tiny / "moe" / "target", tiny / "moe" / "drafter-trained")
    target, drafter = pair.adapter, pair.draft_model
    costs = measure_step_costs(target, drafter, 3, repeats=2)
    assert isinstance(costs, MoECosts) and costs.measured_union[3] > costs.measured_union[0]
    before = costs.step(3)
    target.moe._per_forward[:] = [(4, 2 * target.moe.profile.num_moe_layers)]  # 4-token forwards seen loading 2 experts per layer
    assert costs.step(3) < before


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


def test_batched_cost_tables_are_made_monotone():
    """A noisy table (a longer draft measured cheaper) is pooled, not followed; k = 0 stays as measured."""
    from mlx_spec.core.loop import smooth

    assert smooth([0.1, 0.2, 0.3, 0.4]) == [0.1, 0.2, 0.3, 0.4]
    out = smooth([0.178, 0.2, 0.28, 0.333, 0.45, 0.455, 0.531, 0.479, 0.644])
    assert out[0] == 0.178 and all(a <= b for a, b in zip(out[1:], out[2:]))
    assert out[6] == out[7] == pytest.approx((0.531 + 0.479) / 2) and out[8] == 0.644
