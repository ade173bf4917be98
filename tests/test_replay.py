"""The policy replay (tools/replay.py): match lengths from the real drafter and loop pieces, step
intervals by neighbours, and modeled costs that price the policy's decisions."""

from __future__ import annotations

import pytest

from mlx_spec.core.loop import speculative_generate_step, token_ids
from mlx_spec.core.policy import AdaptivePolicy, FixedPolicy
from mlx_spec.tools.replay import Drift, StepTimes, match_lengths, replay
from test_policy import dense  # noqa: F401  (fixture)
from test_speculative import OracleDrafter


class FirstRight(OracleDrafter):
    """The target's own next token as the first draft, a wrong one after it."""

    def __call__(self, inputs, position, shared_kv):
        logits, hidden = super().__call__(inputs, position, shared_kv)
        if self.step > 1:
            logits = logits[..., ::-1]  # another token (the oracle's one-hot, mirrored)
        return logits, hidden


def test_match_lengths_count_the_drafts_the_target_confirms(dense):  # noqa: F811
    target, drafter = dense
    prompt = [2] + list(range(20, 50))
    plain = token_ids(speculative_generate_step(prompt, target, None, max_tokens=40))
    for cls, expect in ((OracleDrafter, lambda j: min(4, 39 - j)), (FirstRight, lambda j: min(1, 39 - j))):
        d = cls(prompt, plain, target.vocab_size, target.hidden_size, drafter.sliding_span)
        tokens, m = match_lengths(target, d, prompt, 40, 4)
        assert tokens == plain
        assert m == [expect(j) for j in range(40)], cls.__name__


def synthetic_run(ks: list[int], seconds: dict) -> dict:
    """A bench run's recorded steps: each interval from its kind of neighbours."""
    times = []
    for i, k in enumerate(ks):
        before = ks[i - 1] if i else 0
        after = ks[i + 1] if i + 1 < len(ks) else 0
        times.append(seconds[("plain", before > 0, after > 0)] if k == 0 else seconds[("run" if before else "queued", k)])
    return {"config": "k=auto", "stats": {"drafts_per_step": [[5] * k for k in ks], "step_seconds": times}}


SECONDS = {("plain", False, False): 1.0, ("plain", False, True): 1.5, ("plain", True, False): 2.0, ("plain", True, True): 2.5,
           ("queued", 1): 0.2, ("queued", 2): 0.3, ("run", 1): 1.3, ("run", 2): 1.5}


def test_step_times_by_neighbours():
    ks = [0] * 6 + [1, 1, 1] + [0] * 5 + [2, 2, 2] + [0] * 5 + [1] + [0] * 5
    times = StepTimes.from_runs([synthetic_run(ks, SECONDS)], k_max=4)
    assert (times.plain, times.before, times.after) == (1.0, 1.5, 2.0)
    assert (times.queued[1], times.run[1], times.run[2]) == (0.2, 1.3, 1.5)
    assert times.run[4] == pytest.approx(1.9)  # beyond the measured k: the slope of the last two
    assert times.interval(1, 0, 2) == times.between == pytest.approx(2.5)  # not seen: before + after - plain


def test_replay_prices_the_policys_decisions():
    times = StepTimes(1.0, 1.5, 2.0, 2.5, {k: 0.2 + 0.1 * k for k in range(1, 9)}, {k: 1.2 + 0.1 * k for k in range(1, 9)})
    never, always = ("never", [0] * 200), ("always", [8] * 200)
    ([k1_never], [k1_always]) = (replay([x], 96, times, 8, make_policy=lambda c: FixedPolicy(1), warm_up=False) for x in (never, always))
    assert k1_never.speedup < 0.8 < 1.3 < k1_always.speedup  # k = 1 pays only when its drafts are right
    parked, after, later = replay([never, always, always], 96, times, 8, drift=Drift(0.1, seed=1, slow=0.1))
    assert 0.9 < parked.speedup <= 1.05 and parked.drafting_steps < 10  # a never-right drafter: parked, a few probes
    assert after.ks[:16] == [0] * 16  # remembered as bad: its probes backed off
    assert max(later.ks) == 8 and later.speedup > 1.5  # found good by a probe, then remembered as good
    alone = replay([always], 96, times, 8, make_policy=lambda c: AdaptivePolicy(8, c), warm_up=False)[0]
    assert alone.ks[0] > 0 and alone.speedup > 2  # the prior (0.5) starts drafting at once
