"""Prompt-lookup drafting: the n-gram index, losslessness (greedy past the window, alone and beside the
MTP drafter), exact sampling with one-hot proposals, and the per-step choice between the two sources."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tabular import TabularTarget, chi_square, chi_square_critical, empirical
from ties import check_lossless, plain_reference, tolerance_for
from mlx_spec.core.loading import load_pair
from mlx_spec.core.lookup import Lookup, NgramIndex
from mlx_spec.core.loop import SpecStats, lookup_length, speculative_generate_step, token_ids
from mlx_spec.core.policy import AdaptivePolicy, FixedPolicy, StepCosts
from mlx_spec.core.sampling import Distribution, SamplingSettings, make_strategy


def test_index_finds_the_longest_earlier_match_and_copies_runs_with_overlap():
    index = NgramIndex(max_ngram=3, min_ngram=2)
    index.extend([5, 6, 7, 8, 1, 6, 7, 9, 2, 5, 6, 7])
    assert index.propose(3) == ([8, 1, 6], 3)  # "5 6 7" was followed by "8 1 6" (the 2-gram "6 7" by 9 more recently)
    index = NgramIndex(max_ngram=3, min_ngram=2)
    index.extend([1, 2, 3, 4, 9, 9, 1, 2, 3])
    assert index.propose(4) == ([4, 9, 9, 1], 3)
    index.extend([7])  # "3 7": never seen
    assert index.propose(4) == ([], 0)
    index = NgramIndex()
    index.extend([4, 8, 8, 8, 8])  # a run: the latest match is one token back, copied with overlap
    assert index.propose(5) == ([8, 8, 8, 8, 8], 3)
    index = NgramIndex()
    index.extend([3, 1, 2, 1, 2, 1])  # period 2
    assert index.propose(5)[0] == [2, 1, 2, 1, 2]


@pytest.fixture(scope="module")
def pairs(tiny):
    return {v: load_pair(tiny / v / "target", tiny / v / "drafter-trained") for v in ("dense", "e2b")}


def repetitive_prompt(target, seed=0):
    """A random phrase said twice and begun a third time, longer than 3 sliding windows."""
    rng = np.random.RandomState(seed)
    phrase = rng.randint(5, target.vocab_size, size=2 * target.sliding_window).tolist()
    return [2] + phrase + phrase + phrase[: target.sliding_window]


@pytest.mark.parametrize("variant", ("dense", "e2b"))
def test_lookup_is_lossless_past_the_window(pairs, variant):
    """Lookup alone (fixed k and auto) and beside the MTP drafter: token for token plain greedy, 150
    tokens crossing the tiny window ~20 times, with lookup drafts both accepted and rejected."""
    pair = pairs[variant]
    target, drafter = pair.adapter, pair.draft_model
    prompt = repetitive_prompt(target)
    plain, margins = plain_reference(target, prompt, 150)
    accepted = rejected = 0
    for name, d, policy in [("lookup k=4", None, FixedPolicy(4)),
                            ("lookup auto", None, AdaptivePolicy(6, StepCosts([1.0] * 7, smoothing=0))),
                            ("mtp+lookup auto", drafter, AdaptivePolicy(6, StepCosts([1.0 + 0.15 * k for k in range(7)], smoothing=0)))]:
        stats = SpecStats()
        out = token_ids(speculative_generate_step(prompt, target, d, policy=policy, max_tokens=150, stats=stats,
                                                  lookup=Lookup(policy.k_max)))
        check_lossless(out, plain, margins, f"{variant} {name}", tolerance=tolerance_for(target))
        assert stats.lookup_steps > 0 and stats.generated == 150
        accepted += stats.lookup_accepted
        rejected += stats.lookup_drafted - stats.lookup_accepted
        if d is None:
            assert stats.drafter_forwards == 0
    assert accepted > 0 and rejected > 0


def test_sampling_with_one_hot_lookup_proposals_is_exact():
    """A lookup draft's q is one-hot: rejection sampling must still give exactly the target's
    distribution (chi-square on the joint of the first three tokens; the check fails against another
    temperature's distribution, so it can fail)."""
    V, prompt = 5, [1, 3, 1, 3, 1]
    target = TabularTarget(V, seed=2)
    settings = SamplingSettings(temp=0.9)
    exact = target.exact_joint(prompt, 3, Distribution(settings))
    strategy = make_strategy(replace(settings, seed=9))
    samples, drafted, accepted = [], 0, 0
    for _ in range(1500):
        stats = SpecStats()
        out = token_ids(speculative_generate_step(prompt, target, None, policy=FixedPolicy(2), max_tokens=4, strategy=strategy,
                                                  stats=stats, lookup=Lookup(2, min_ngram=1)))
        samples.append(tuple(out[:3]))
        drafted += stats.lookup_drafted
        accepted += stats.lookup_accepted
    assert 0 < accepted < drafted
    stat, df = chi_square(empirical(samples), exact, len(samples))
    assert stat < chi_square_critical(df), (stat, df)
    other = target.exact_joint(prompt, 3, Distribution(SamplingSettings(temp=0.4)))
    stat, df = chi_square(empirical(samples), other, len(samples))
    assert stat > chi_square_critical(df), (stat, df)


def test_each_step_drafts_from_the_source_that_promises_more():
    costs = StepCosts([1.0, 1.3, 1.4, 1.5, 1.6])  # MTP steps: drafter forwards cost
    policy = AdaptivePolicy(4, costs)
    lookup = Lookup(4, costs=StepCosts([1.0, 1.05, 1.1, 1.15, 1.2]))  # verify only
    proposal = [7, 8, 9, 10]
    for _ in range(30):  # lookup drafts at match length 3 accepted, the MTP drafter's rejected
        lookup.update(3, 4, 4)
        policy.update(4, 0)
    k = policy.choose()
    assert lookup_length(policy, lookup, proposal, 3, k, mtp=True) == 4
    assert lookup_length(policy, lookup, proposal[:2], 3, k, mtp=True) == 2  # a shorter proposal: what it has
    assert lookup_length(policy, lookup, [], 0, k, mtp=True) == 0
    for _ in range(60):  # now the other way round
        lookup.update(3, 4, 0)
        policy.update(4, 4)
    assert lookup_length(policy, lookup, proposal, 3, policy.choose(), mtp=True) == 0
    # a fixed k: lookup when its proposal is that long (or there is no MTP drafter)
    assert lookup_length(FixedPolicy(3), lookup, proposal, 3, 3, mtp=True) == 3
    assert lookup_length(FixedPolicy(3), lookup, proposal[:2], 3, 3, mtp=True) == 0
    assert lookup_length(FixedPolicy(3), lookup, proposal[:2], 3, 0, mtp=False) == 2


@pytest.mark.parametrize("variant", ("dense", "e2b"))
def test_batched_rows_draft_by_lookup_losslessly(pairs, variant):
    """The batched engine with lookup: beside the MTP drafter (each row from its better source this
    step) and alone (rows without a match propose filler): every row is its own plain greedy output,
    lookup drafts are both accepted and rejected, and rows of other kinds join mid-run."""
    from mlx_spec.core.batch import BatchEngine
    from mlx_spec.core.policy import BatchPolicy

    pair = pairs[variant]
    target, drafter = pair.adapter, pair.draft_model
    prompts = [repetitive_prompt(target, seed) for seed in (0, 3)] + [[2] + list(range(60, 75))]
    references = [plain_reference(target, p, 90) for p in prompts]
    for d, policy in ((drafter, BatchPolicy(4, costs_for=lambda rows: StepCosts([1.0, 1.3, 1.4, 1.5, 1.6], smoothing=0))),
                      (None, BatchPolicy(4, fixed=4))):
        engine = BatchEngine(target, d, policy, lookup=True)
        ids = [engine.add(p, max_tokens=90) for p in prompts[:2]]
        outs = {i: [] for i in ids}
        steps = 0
        while engine.active:
            for o in engine.step():
                outs.setdefault(o.id, []).extend(o.tokens)
            steps += 1
            if steps == 5:
                outs[engine.add(prompts[2], max_tokens=90)] = []
        for (row_id, out), (plain, margins) in zip(sorted(outs.items()), references):
            check_lossless(out, plain, margins, f"{variant} batch lookup row {row_id}", tolerance=tolerance_for(target))
        rows = engine.stats.rows
        assert sum(r.lookup_accepted for r in rows) > 0
        assert sum(r.lookup_drafted - r.lookup_accepted for r in rows) > 0
        if d is None:
            assert engine.stats.drafter_forwards == 0 and all(r.drafter_forwards == 0 for r in rows)


def test_plain_steps_stay_pipelined_unless_lookup_may_pay():
    """After a plain step the loop waits for its token (no pipelining) only when the next step may draft
    by lookup: a suffix match whose tracked acceptance promises more than plain, or any match under a
    fixed k."""
    from mlx_spec.core.loop import lookup_may_draft

    lookup = Lookup(4, costs=StepCosts([1.0, 1.05, 1.1, 1.15, 1.2], smoothing=0))
    policy = AdaptivePolicy(4, StepCosts([1.0, 1.3, 1.4, 1.5, 1.6], smoothing=0))
    lookup.extend([5, 6, 7, 8, 9])
    assert not lookup_may_draft(policy, lookup)  # no match
    lookup.extend([5, 6])  # the suffix (5, 6) was seen before
    assert lookup_may_draft(policy, lookup)  # the prior acceptance (0.6) promises more than plain
    for seen in lookup.seen.values():  # then its drafts were never accepted
        seen.accepted[:], seen.reached[:] = [0.0] * 4, [50.0] * 4
    assert not lookup_may_draft(policy, lookup)
    assert lookup_may_draft(FixedPolicy(2), lookup)


def test_a_match_length_whose_estimate_says_no_is_probed_and_can_recover():
    """Lookup estimates move only when lookup drafts are verified: one learned low elsewhere (and
    remembered) is still drafted PROBE_DRAFTS long after PROBE_EVERY declined matches at its length,
    twice as late after each probe in a row that failed (up to 8x); greedy, a probe accepted whole
    makes the next match a probe at once, and accepted drafts bring the long drafts back."""
    from mlx_spec.core.loop import lookup_may_draft
    from mlx_spec.core.lookup import PROBE_DRAFTS, PROBE_EVERY

    policy = AdaptivePolicy(4, StepCosts([1.0, 1.3, 1.4, 1.5, 1.6], smoothing=0))
    table = StepCosts([1.0, 1.05, 1.1, 1.15, 1.2], smoothing=0)
    proposal = [7, 8, 9, 10]

    def low(lookup):  # never accepted on other text
        for seen in lookup.seen.values():
            seen.accepted[:], seen.reached[:] = [0.0] * 4, [50.0] * 4
        return lookup

    def steps_to_probe(lookup):
        for i in range(PROBE_EVERY << 4):
            k = lookup_length(policy, lookup, proposal, 3, 0, mtp=True)
            if k:
                return i, k
        raise AssertionError("never probed")

    lookup = low(Lookup(4, costs=table, greedy=True))
    assert steps_to_probe(lookup) == (PROBE_EVERY, PROBE_DRAFTS)
    lookup.update(3, PROBE_DRAFTS, 0)  # failed: the next probe comes twice as late
    assert steps_to_probe(lookup) == (2 * PROBE_EVERY, PROBE_DRAFTS)
    earlier = low(Lookup(4, costs=table, greedy=True))
    for _ in range(40):
        earlier.update(3, 4, 0)  # a whole generation of failed lookup drafts: probed 8x as rarely
    lookup = Lookup(4, costs=table, greedy=True)
    lookup.remember(earlier)
    low(lookup)  # (forty failures fade fast under GREEDY_DECAY: the estimate alone would try a cheap k = 1 again)
    assert steps_to_probe(lookup) == (8 * PROBE_EVERY, PROBE_DRAFTS)
    lookup.update(3, PROBE_DRAFTS, PROBE_DRAFTS)  # a probe accepted whole: a copy may have begun, the next match probes at once
    assert steps_to_probe(lookup) == (0, PROBE_DRAFTS)
    for _ in range(5):  # and so on while they are accepted, the estimate recovering fast (GREEDY_DECAY)
        lookup.update(3, PROBE_DRAFTS, PROBE_DRAFTS)
        assert lookup.probe_due(3)
    for _ in range(30):  # and longer drafts, as they are accepted
        lookup.update(3, 4, 4)
    assert lookup_length(policy, lookup, proposal, 3, 0, mtp=True) == 4
    sampled = low(Lookup(4, costs=table))  # sampled: whole acceptances of short drafts come by chance, no follow-up probe
    sampled.update(3, PROBE_DRAFTS, PROBE_DRAFTS)
    assert steps_to_probe(sampled) == (PROBE_EVERY, PROBE_DRAFTS)
    # after a plain step, a due probe makes the loop wait for the token (no pipelining) to draft it
    parked = low(Lookup(4, costs=table, greedy=True))
    parked.extend([5, 6, 7, 1, 5, 6, 7])  # the suffix (5, 6, 7) was seen before: a match of length 3
    waited = [lookup_may_draft(policy, parked) for _ in range(PROBE_EVERY + 1)]
    assert waited == [False] * PROBE_EVERY + [True]


def test_the_verify_only_table_follows_the_machine_through_plain_steps(pairs):
    """Beside the MTP drafter, the lookup's verify-only table also observes plain steps: its pace is the
    machine's, not set by lookup steps alone (which carry the wait before them and, unchecked, raised
    it 40% over a bench pass while plain steps ran at table speed)."""
    pair = pairs["dense"]
    target = pair.adapter
    lookup = Lookup(4, costs=StepCosts([1e-6 * (1 + 0.1 * k) for k in range(5)]))  # a table far too fast
    policy = AdaptivePolicy(4, StepCosts([1e-6 * (1 + 0.3 * k) for k in range(5)]), probe_every=1000)
    policy.seen.accepted[:], policy.seen.reached[:] = [0.0] * 4, [50.0] * 4  # parked: plain steps only
    for seen in lookup.seen.values():
        seen.accepted[:], seen.reached[:] = [0.0] * 4, [50.0] * 4
    list(speculative_generate_step([2] + list(range(40, 70)), target, pair.draft_model, policy=policy, max_tokens=30,
                                   lookup=lookup))
    assert lookup.costs.drift > 1.5 and lookup.costs.stale  # real steps are far slower: re-measured next time


def test_batched_plain_steps_stay_pipelined_unless_lookup_may_pay():
    """The batched engine's version: a plain step is not queued ahead only when some row's match would
    make the batch draft by lookup (as the batch policy prices it), or under a fixed k on any match."""
    from types import SimpleNamespace

    from mlx_spec.core.batch import BatchEngine
    from mlx_spec.core.policy import Acceptance, BatchPolicy

    def engine(fixed=None):
        costs = StepCosts([1.0, 1.05, 1.1, 1.15, 1.2], smoothing=0)
        rows = [SimpleNamespace(lookup=Lookup(4), seen=Acceptance(4)) for _ in range(2)]
        rows[0].lookup.extend([5, 6, 7, 8, 9])
        rows[1].lookup.extend([1, 2, 3, 4, 1, 2])  # the suffix (1, 2) was seen before
        return SimpleNamespace(lookup=True, rows=rows, drafter=None, k_max=4,
                               policy=BatchPolicy(4, costs_for=lambda b: costs, fixed=fixed))

    e = engine()
    assert BatchEngine._lookup_may_draft(e)  # the prior acceptance (0.6) promises more than plain
    for seen in e.rows[1].lookup.seen.values():
        seen.accepted[:], seen.reached[:] = [0.0] * 4, [50.0] * 4
    assert not BatchEngine._lookup_may_draft(e)  # its drafts were never accepted
    assert BatchEngine._lookup_may_draft(engine(fixed=2))
    e = engine()
    e.rows = e.rows[:1]  # no row repeats itself
    assert not BatchEngine._lookup_may_draft(e)


def test_adaptive_lookup_drafts_run_past_the_mtp_drafters_longest(pairs):
    """max_lookup_tokens bounds lookup drafts apart from max_draft_tokens (a copy costs no drafter
    forward and an edited text keeps matching far ahead): on a reply that copies its context they run
    past the MTP drafter's longest, losslessly, and caches keep rollback slack for the longest block."""
    from mlx_spec.core.settings import DraftSettings
    from mlx_spec.generate import decode

    pair = pairs["dense"]
    target = pair.adapter
    prompt = repetitive_prompt(target)
    plain, margins = plain_reference(target, prompt, 120)
    draft = DraftSettings("auto", max_draft_tokens=3, lookup=True, max_lookup_tokens=12)
    assert (draft.k_max, draft.lookup_k_max, draft.block_max) == (3, 12, 12)
    stats = SpecStats()
    out = [t for t, _ in decode(pair, prompt, SamplingSettings(), draft, max_tokens=120, stats=stats)]
    check_lossless(out, plain, margins, "long lookup drafts", tolerance=tolerance_for(target))
    assert max(len(d) for d in stats.drafts_per_step) > 3 and stats.lookup_accepted > 3
    assert DraftSettings(4, lookup=True).block_max == 4  # a fixed k drafts k from either source


def test_batched_rows_probe_a_match_length_whose_estimate_says_no(pairs, monkeypatch):
    """The batched engine probes as the single-sequence loop does: rows whose lookup estimates say no
    everywhere (learned low elsewhere) still draft by lookup after PROBE_EVERY declined matches, the
    batch drafting for them if it would not, and on replies that copy their context the probes are
    accepted. Without probes these rows never draft by lookup. Lossless all the same."""
    from mlx_spec.core import batch
    from mlx_spec.core.policy import BatchPolicy

    class Low(Lookup):
        def __post_init__(self):
            super().__post_init__()
            for seen in self.seen.values():
                seen.accepted[:], seen.reached[:] = [0.0] * self.k_max, [50.0] * self.k_max

    monkeypatch.setattr(batch, "Lookup", Low)
    pair = pairs["dense"]
    target, drafter = pair.adapter, pair.draft_model
    prompts = [repetitive_prompt(target, seed) for seed in (0, 3)]
    references = [plain_reference(target, p, 90) for p in prompts]
    table = StepCosts([1.0, 2.0, 2.2, 2.4, 2.6], smoothing=0)  # MTP drafts seldom pay: mostly plain steps
    engine = batch.BatchEngine(target, drafter, BatchPolicy(4, costs_for=lambda rows: table), lookup=True)
    ids = [engine.add(p, max_tokens=90) for p in prompts]
    outs = {i: [] for i in ids}
    while engine.active:
        for o in engine.step():
            outs[o.id].extend(o.tokens)
    for (row_id, out), (plain, margins) in zip(sorted(outs.items()), references):
        check_lossless(out, plain, margins, f"batch probe row {row_id}", tolerance=tolerance_for(target))
    rows = engine.stats.rows
    assert sum(r.lookup_drafted for r in rows) > 0 and sum(r.lookup_accepted for r in rows) > 0


@pytest.mark.parametrize("waits", (True, False))
def test_plain_steps_that_wait_for_lookup_are_not_priced_as_plain(pairs, monkeypatch, waits):
    """A plain step that waits for its token (the next step may draft by lookup) runs unpipelined: it is
    the lookup option's price, not plain decoding's: recorded as plain, it raises plain's estimate (shared
    with `auto`) and MTP drafts that do not pay look worth it. So it is not observed (single sequence and
    batched); pipelined plain steps are."""
    from mlx_spec.core import loop
    from mlx_spec.core.batch import BatchEngine
    from mlx_spec.core.policy import BatchPolicy

    class Recording(StepCosts):
        def observe(self, k, seconds):
            observed.append(k)
            super().observe(k, seconds)

    pair = pairs["dense"]
    target, drafter = pair.adapter, pair.draft_model
    prompt = repetitive_prompt(target)
    monkeypatch.setattr(loop, "lookup_may_draft", lambda policy, lookup: waits)
    observed, stats = [], SpecStats()
    policy = AdaptivePolicy(4, Recording([1.0, 1.3, 1.4, 1.5, 1.6], smoothing=0))
    token_ids(speculative_generate_step(prompt, target, drafter, policy=policy, max_tokens=60, stats=stats, lookup=Lookup(4)))
    assert sum(not d for d in stats.drafts_per_step) >= 3  # plain steps ran
    assert (0 in observed) is not waits
    monkeypatch.setattr(BatchEngine, "_lookup_may_draft", lambda self: waits)
    observed, table = [], Recording([1.0, 2.0, 2.2, 2.4, 2.6], smoothing=0)  # drafting seldom pays: plain steps
    engine = BatchEngine(target, drafter, BatchPolicy(4, costs_for=lambda rows: table), lookup=True)
    engine.add(prompt, max_tokens=40)
    engine.add(repetitive_prompt(target, 3), max_tokens=40)
    while engine.active:
        engine.step()
    assert (0 in observed) is not waits
