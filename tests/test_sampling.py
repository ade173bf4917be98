"""Speculative sampling follows the target's distribution exactly (checked statistically).

A second-order Markov target over V = 5 tokens is small enough to enumerate: the exact probability
of every sequence of the first three generated tokens is computed from it, under the same sampling
settings. The real loop (speculative_generate_step + RejectionSampler) then draws N sequences with
drafters that are equal to the target, random, and adversarial (no mass where the target has mass),
and Pearson's chi-square compares counts with the exact probabilities (cells expected below 5 pooled;
critical value at the 0.1% upper tail, Wilson-Hilferty). A deliberately biased sampler (resampling
from p instead of max(0, p - q) after a rejection) must fail the same check, so the check can fail.
"""

from __future__ import annotations

from dataclasses import replace

from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest

from mlx_spec.core.errors import MlxSpecError
from mlx_spec.core.sampling import Distribution, Processors, RejectionSampler, SamplingSettings, make_strategy
from mlx_spec.core.settings import ProcessorSettings
from mlx_spec.core.loop import SpecStats, speculative_generate_step, token_ids
from tabular import TabularDrafter, TabularTarget, chi_square, chi_square_critical, empirical

V = 5
N = 2000
PROMPT = [1, 3]
SETTINGS = SamplingSettings(temp=0.9)


class BiasedRejectionSampler(RejectionSampler):
    """Wrong on purpose: after a rejection it samples from p instead of normalize(max(0, p - q))."""

    def accept(self, drafts, draft_logits, target_logits):
        k = drafts.shape[0]
        p = self.distribution(target_logits)
        if k == 0:
            return super().accept(drafts, draft_logits, target_logits)
        q = self.distribution(draft_logits)
        index = drafts.reshape(k, 1)
        p_x = mx.take_along_axis(p[:k], index, axis=-1).reshape(k)
        q_x = mx.take_along_axis(q, index, axis=-1).reshape(k)
        n = mx.cumprod((mx.random.uniform(shape=(k,), key=self.key()) * q_x < p_x).astype(mx.int32)).sum()
        candidates = mx.random.categorical(mx.log(p), key=self.key())  # the bug: p, not the residual
        return n, mx.take(candidates.astype(mx.int32), n).reshape(1)


def drafters(target: TabularTarget) -> dict:
    rng = np.random.RandomState(5)
    adversarial = np.full((V, V), -1e9, dtype=np.float32)
    adversarial[:, 0] = 0.0  # always proposes token 0: no mass anywhere else
    restricted = target.table.copy()
    restricted[..., ::2] = -np.inf  # p itself on a head restricted to half the vocabulary: q = 0 on the rest
    return {
        "equal": TabularDrafter(V, target=target),
        "random": TabularDrafter(V, table=(rng.standard_normal((V, V)) * 2).astype(np.float32)),
        "adversarial": TabularDrafter(V, table=adversarial),
        "restricted": TabularDrafter(V, target=SimpleNamespace(table=restricted)),
    }


def sample_first_three(target, drafter, strategy, n=N, k=2, processors=None) -> tuple[list[tuple], SpecStats]:
    total = SpecStats()
    samples = []
    for _ in range(n):
        stats = SpecStats()
        out = token_ids(speculative_generate_step(PROMPT, target, drafter, draft_tokens=k, max_tokens=5, strategy=strategy,
                                                  stats=stats, processors=processors))
        samples.append(tuple(out[:3]))
        total.drafted += stats.drafted
        total.accepted += stats.accepted
    return samples, total


@pytest.fixture(scope="module")
def target():
    return TabularTarget(V, seed=1)


@pytest.fixture(scope="module")
def exact(target):
    return target.exact_joint(PROMPT, 3, Distribution(SETTINGS))


@pytest.mark.parametrize("name", ["equal", "random", "adversarial", "restricted"])
def test_speculative_sampling_matches_the_target(target, exact, name):
    strategy = make_strategy(replace(SETTINGS, seed=11))
    samples, stats = sample_first_three(target, drafters(target)[name], strategy, n=1000 if name == "restricted" else 1500)
    stat, df = chi_square(empirical(samples), exact, len(samples))
    assert stat < chi_square_critical(df), (name, stat, df)
    rate = stats.accepted / stats.drafted
    if name == "equal":
        assert rate > 0.99  # p == q: every draft accepted
    if name == "adversarial":
        assert rate < 0.5
    if name == "restricted":  # accepted where p's token is in the head
        assert 0.05 < rate < 0.9


def test_biased_sampler_is_caught(target, exact):
    biased = BiasedRejectionSampler(replace(SETTINGS, seed=11))
    samples, _ = sample_first_three(target, drafters(target)["adversarial"], biased)
    stat, df = chi_square(empirical(samples), exact, len(samples))
    assert stat > chi_square_critical(df), (stat, df)


def test_filters_apply_to_p_and_q(target):
    """top-k / top-p / min-p shape both distributions; the output stays exact under them."""
    settings = SamplingSettings(temp=0.7, top_k=3, top_p=0.95, min_p=0.02)
    exact = target.exact_joint(PROMPT, 3, Distribution(settings))
    strategy = make_strategy(replace(settings, seed=3))
    samples, _ = sample_first_three(target, drafters(target)["random"], strategy, n=2000)
    assert all(exact[s] > 0 for s in samples)  # never a filtered-out token
    stat, df = chi_square(empirical(samples), exact, len(samples))
    assert stat < chi_square_critical(df), (stat, df)


def test_processors_apply_to_p_and_q_position_by_position(target):
    """Logit bias and presence / frequency / repetition penalties inside a block: each drafted position's
    p and q are processed with the history up to it, so the output follows the processed distribution
    (and not the unprocessed one: the check can tell them apart)."""
    settings = ProcessorSettings(logit_bias={4: 1.5}, presence_penalty=0.8, frequency_penalty=0.6, repetition_penalty=1.4,
                                 presence_context_size=3)
    processors = Processors(settings, V)
    exact = target.exact_joint(PROMPT, 3, Distribution(SETTINGS), processors)
    samples, stats = sample_first_three(target, drafters(target)["random"], make_strategy(replace(SETTINGS, seed=5)), n=1000,
                                        processors=processors)
    assert stats.accepted > 0 and stats.accepted < stats.drafted
    stat, df = chi_square(empirical(samples), exact, len(samples))
    assert stat < chi_square_critical(df), (stat, df)
    plain = target.exact_joint(PROMPT, 3, Distribution(SETTINGS))
    stat, df = chi_square(empirical(samples), plain, len(samples))
    assert stat > chi_square_critical(df), (stat, df)


def test_seed_makes_runs_reproducible(target):
    def run(seed):
        return sample_first_three(target, drafters(target)["random"], make_strategy(replace(SETTINGS, seed=seed)), n=50)[0]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_temperature_zero_is_the_greedy_loop(target):
    from mlx_spec.core.sampling import GREEDY

    assert make_strategy(SamplingSettings(temp=0.0)) is GREEDY


@pytest.mark.parametrize("kwargs", [dict(temp=-1), dict(top_p=1.5), dict(min_p=-0.1), dict(top_k=-2)])
def test_invalid_settings_are_clear_errors(kwargs):
    with pytest.raises(MlxSpecError, match="invalid sampling settings"):
        SamplingSettings(**kwargs)


def test_batch_rows_with_given_drafts_are_accepted_as_one_hot():
    """accept_rows: a row whose drafts were given (prompt lookup) is decided with q one-hot at them,
    whatever drafter logits the batch holds for it (those belong to other rows), exactly as the single
    loop decides it; a row without the flag is decided with its drafter logits (so the flag matters:
    with q(x) ~ 0 every draft passes u * q(x) < p(x))."""
    from mlx_spec.core.sampling import accept_rows

    rng = np.random.RandomState(0)
    target_logits = mx.array(4 * rng.standard_normal((3, 50)).astype(np.float32))  # peaked: p(argmax) high
    drafts = mx.array(mx.argmax(target_logits[:2], axis=-1).astype(mx.int32))  # likely drafts: mostly accepted
    garbage = mx.array(np.full((2, 50), -30.0, dtype=np.float32))
    garbage[:, 7] = 30.0  # q all on token 7: q(x) ~ 0 at the drafts, which it would then always accept
    outcomes = {}
    for seed in range(40):
        single = RejectionSampler(replace(SETTINGS, seed=seed)).accept(drafts, None, target_logits)
        flagged = accept_rows([RejectionSampler(replace(SETTINGS, seed=seed))], drafts[None], garbage[None],
                              target_logits[None], [True])
        unflagged = accept_rows([RejectionSampler(replace(SETTINGS, seed=seed))], drafts[None], garbage[None],
                                target_logits[None], [False])
        mx.eval(single, flagged, unflagged)
        assert (single[0].item(), single[1].item()) == (flagged[0].item(), flagged[1].item())
        outcomes.setdefault("one-hot", []).append(single[0].item())
        outcomes.setdefault("garbage q", []).append(unflagged[0].item())
    assert 0.3 < np.mean(outcomes["one-hot"]) < 1.8 and min(outcomes["garbage q"]) == 2
