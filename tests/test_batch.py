"""Batched speculative decoding: every row is its own prompt's output, whatever the other rows do.

Greedy: each row equals that prompt's batch-1 plain greedy output (token for token on CPU float32,
tie-aware elsewhere), with ragged acceptance (a partly-right drafter), prompts of different lengths
(short, and several sliding windows long), rows ending at different times (token limits, a stop token
inside an accepted block), rows joining mid-run and a row cancelled mid-run, on dense, MoE and
KV-shared (E2B) tiny checkpoints. Sampled rows follow their own distribution (chi-square per row
group, and the same check fails against the other group's distribution). Cache memory grows with B as
the KV does. The batch policy's choice of k follows acceptance and the cost of a B x (k + 1) verify.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import mlx_spec
from tabular import chi_square, chi_square_critical, empirical
from ties import check_lossless, plain_reference, tolerance_for
from mlx_spec.core.batch import BatchEngine, BatchStats
from mlx_spec.core.errors import MlxSpecError
from mlx_spec.core.loading import load_pair
from mlx_spec.core.policy import Acceptance, BatchPolicy, StepCosts
from mlx_spec.core.sampling import Distribution, RejectionSampler, SamplingSettings
from mlx_spec.core.target import Target

VARIANTS = ("dense", "moe", "e2b")  # quantized kernels: covered batch-1 in test_speculative


@pytest.fixture(scope="module")
def pairs(tiny):
    out = {}
    for variant in VARIANTS:
        out[variant] = load_pair(tiny / variant / "target", tiny / variant / "drafter-trained")
    return out


def make_prompts(target, lengths, seed=0):
    rng = np.random.RandomState(seed)
    return [[2] + rng.randint(5, target.vocab_size, size=n - 1).tolist() for n in lengths]


def run_engine(engine, requests, join_at=None, late=(), cancel=None):
    """Drive the engine; `late` requests join after `join_at` steps; `cancel` = (step, index)."""
    ids = [engine.add(p, max_tokens=m, stop_tokens=s) for p, m, s in requests]
    out = {i: [] for i in ids}
    spans = {i: [] for i in ids}  # per row, the tokens of each step's output
    steps = 0
    while engine.active:
        for o in engine.step():
            out[o.id] += o.tokens
            spans[o.id].append(o.tokens)
        steps += 1
        if steps == join_at:
            for p, m, s in late:
                i = engine.add(p, max_tokens=m, stop_tokens=s)
                ids.append(i)
                out[i], spans[i] = [], []
        if cancel is not None and steps == cancel[0]:
            engine.remove(ids[cancel[1]])
    return [out[i] for i in ids], [spans[i] for i in ids]


@pytest.mark.parametrize("variant", (*VARIANTS, "dense-bucketed"))
def test_rows_equal_their_own_plain_greedy(pairs, variant):
    """dense-bucketed: the caches MLX's CUDA backend gets (verify spans padded to a multiple of 256)."""
    pair = pairs[variant.removesuffix("-bucketed")]
    target, drafter = pair.adapter, pair.draft_model
    if variant.endswith("-bucketed"):
        target = Target(target.module, target.text_config, bucket_keys=True)
        assert any(c.bucket for c in target.make_ragged_cache())
    window = target.sliding_window
    prompts = make_prompts(target, (6, 3 * window + 7, 17, 2 * window + 1, 9))
    limits = [160, 120, 200, 90, 60]
    references = [plain_reference(target, p, m) for p, m in zip(prompts, limits)]
    engine = BatchEngine(target, drafter, BatchPolicy(4, fixed=4))
    requests = [(p, m, ()) for p, m in zip(prompts, limits)]
    outs, _ = run_engine(engine, requests[:3], join_at=15, late=requests[3:])
    for i, (out, (plain, margins)) in enumerate(zip(outs, references)):
        assert len(out) == limits[i]
        check_lossless(out, plain, margins, f"{variant} row {i}", tolerance=tolerance_for(target))
    stats = engine.stats
    assert 0 < stats.accepted < stats.drafted  # ragged: rows accept different numbers of drafts
    assert len(set(stats.accepted_per_row)) > 1
    assert max(stats.batch_sizes) == 5 and stats.batch_sizes[-1] == 1  # joined, then left one by one
    assert stats.generated == sum(limits)


def test_stop_token_inside_an_accepted_block_ends_the_row_there(pairs):
    pair = pairs["e2b"]  # the tiny dense target falls into one-token loops, where nothing new appears mid-block
    target, drafter = pair.adapter, pair.draft_model
    prompts = make_prompts(target, (5, 30, 12), seed=4)
    requests = [(p, 80, ()) for p in prompts]
    full, spans = run_engine(BatchEngine(target, drafter, BatchPolicy(4, fixed=4)), requests)
    # a stop token some row first produces inside a block (not as the block's last token)
    stop = None
    for row, row_spans in zip(full, spans):
        position = 0
        for span in row_spans:
            for j, token in enumerate(span[:-1]):
                if stop is None and token not in row[: position + j]:
                    stop = token
            position += len(span)
    assert stop is not None
    stopped, _ = run_engine(BatchEngine(target, drafter, BatchPolicy(4, fixed=4)), [(p, 80, (stop,)) for p in prompts])
    for row, out in zip(full, stopped):
        expected = row[: row.index(stop) + 1] if stop in row else row
        assert out == expected


def test_cancelled_row_leaves_and_the_others_go_on(pairs):
    pair = pairs["e2b"]
    target, drafter = pair.adapter, pair.draft_model
    prompts = make_prompts(target, (7, 25, 11), seed=4)
    alone, _ = run_engine(BatchEngine(target, None, BatchPolicy(0, fixed=0)), [(p, 50, ()) for p in prompts])
    engine = BatchEngine(target, drafter, BatchPolicy(3, fixed=3))
    outs, _ = run_engine(engine, [(p, 50, ()) for p in prompts], cancel=(4, 1))
    assert outs[0] == alone[0] and outs[2] == alone[2]
    assert 0 < len(outs[1]) < 50 and outs[1] == alone[1][: len(outs[1])]


def test_cache_memory_grows_with_the_batch_as_the_kv_does(pairs):
    """Same prompt lengths: B rows hold about B times one row's cache; sliding layers stay bounded by the
    window (plus rollback slack and growth step) however far the rows have gone."""
    pair = pairs["dense"]
    target, drafter = pair.adapter, pair.draft_model
    sizes = {}
    for batch in (1, 2, 4):
        engine = BatchEngine(target, drafter, BatchPolicy(4, fixed=4))
        for p in make_prompts(target, [20] * batch, seed=5):
            engine.add(p, max_tokens=1000)
        for _ in range(80):
            engine.step()
        sizes[batch] = sum(c.nbytes for c in engine.caches)
        for cache in engine.caches:
            if cache.window is not None:  # at most what the prompt or the window (+ slack, block, growth step) needs
                width = cache.keys.shape[2]
                assert width <= max(20, cache.keep + 4 + 1) + cache.step < min(cache.lengths)
    for batch in (2, 4):  # rows accept differently, so lengths (and growth steps) differ a little
        assert 0.9 < sizes[batch] / (batch * sizes[1]) < 1.1, sizes


class GreedyFirst(RejectionSampler):
    """Rejection sampling whose first token (the prefill's) is the argmax, so the speculative tokens
    after it have a fixed context and an exact distribution to test against."""

    def first(self, logits):
        return mx.argmax(logits, axis=-1).astype(mx.int32).reshape(1)


def exact_pairs(target, prompt, settings, top=12, processors=None):
    """P(t2, t3) of the two tokens after the argmax t1, under `settings` (after `processors`, which see
    the whole context), for t2 in the `top` likeliest."""
    dist = Distribution(settings)

    def processed(context, logits):
        return logits if processors is None else processors(mx.array(context), logits)

    cache = target.make_cache()
    logits, _ = target.forward(mx.array(prompt)[None], cache, last_only=True)
    t1 = int(mx.argmax(processed(prompt, logits[0, -1:])).item())
    logits, _ = target.forward(mx.array([[t1]]), cache)
    p2 = np.array(dist(processed(prompt + [t1], logits[0, -1:])))[0]
    out = {}
    for t2 in np.argsort(-p2)[:top]:
        c = target.make_cache()
        lg, _ = target.forward(mx.array(prompt + [t1, int(t2)])[None], c, last_only=True)
        p3 = np.array(dist(processed(prompt + [t1, int(t2)], lg[0, -1:])))[0]
        for t3 in range(len(p3)):
            out[(int(t2), t3)] = float(p2[t2] * p3[t3])
    out[("other",)] = 1.0 - sum(out.values())
    return out


def test_sampled_rows_follow_their_own_distribution(pairs):
    """Two groups of sampled rows in one batch, the second with logits processors (penalties and a
    logit bias applied at every drafted position): each follows its own exact distribution."""
    from mlx_spec.core.sampling import Processors
    from mlx_spec.core.settings import ProcessorSettings

    pair = pairs["dense"]
    target, drafter = pair.adapter, pair.draft_model
    prompts = make_prompts(target, (6, 9), seed=6)
    settings = [SamplingSettings(temp=1.0), SamplingSettings(temp=0.7, top_k=40)]
    unprocessed = exact_pairs(target, prompts[1], settings[1])
    mass = {}
    for key, prob in unprocessed.items():
        if len(key) == 2:
            mass[key[0]] = mass.get(key[0], 0.0) + prob
    likely = max(mass, key=mass.get)  # banned by the bias: the processed distribution is far from this one
    processors = [None, Processors(ProcessorSettings(presence_penalty=1.5, frequency_penalty=0.5,
                                                     logit_bias={likely: -100.0}), target.vocab_size)]
    n = 300
    samples = {0: [], 1: []}
    engine = BatchEngine(target, drafter, BatchPolicy(2, fixed=2))
    for chunk in range(4):
        groups = []
        for j in range(2 * n // 4):
            g = j % 2
            engine.add(prompts[g], GreedyFirst(SamplingSettings(temp=settings[g].temp, top_k=settings[g].top_k, seed=chunk * n + j)),
                       max_tokens=3, processors=processors[g])
            groups.append(g)
        outs = {}
        while engine.active:
            for o in engine.step():
                outs.setdefault(o.id, []).extend(o.tokens)
        for row_id, g in zip(sorted(outs), groups):
            samples[g].append(tuple(outs[row_id][1:3]))
    assert engine.stats.accepted > 0.1 * engine.stats.drafted  # the drafts were partly accepted
    exact = [exact_pairs(target, prompts[g], settings[g], processors=processors[g]) for g in (0, 1)]

    def cells(group, table):
        return [s if s in table else ("other",) for s in samples[group]]

    for g in (0, 1):
        stat, df = chi_square(empirical(cells(g, exact[g])), exact[g], n)
        assert stat < chi_square_critical(df), (g, stat, df)
    # the check can fail: group 1's samples against group 0's distribution; and the processors acted at
    # the drafted position: the banned token, 30%-likely without them, never comes
    stat, df = chi_square(empirical(cells(1, exact[0])), exact[0], n)
    assert stat > chi_square_critical(df), (stat, df)
    assert mass[likely] > 0.2 and not any(sample[0] == likely for sample in samples[1])


def test_batch_policy_prices_the_batch():
    """k follows acceptance; a verify whose cost grows with B x (k + 1) tokens (an MoE loading more
    experts, or a compute-bound device) gets a shorter k at larger B; poor acceptance parks at k = 0."""

    def rows(rate, batch):
        out = []
        for _ in range(batch):
            a = Acceptance(8)
            for _ in range(200):
                a.update(8, int(np.random.RandomState(len(out)).binomial(1, rate, 8).cumprod().sum()))
            out.append(a)
        return out

    flat = BatchPolicy(8, lambda b: StepCosts([1.0 + 0.05 * k for k in range(9)], smoothing=0.0))
    growing = BatchPolicy(8, lambda b: StepCosts([1.0 + 0.05 * b * k for k in range(9)], smoothing=0.0))
    assert flat.choose(rows(0.9, 1)) >= 6 and flat.choose(rows(0.9, 8)) >= 6
    assert growing.choose(rows(0.9, 8)) < growing.choose(rows(0.9, 1))
    assert flat.choose(rows(0.05, 4)) == 0


def test_batch_generate_api(pairs, tiny):
    pair = pairs["moe"]
    model, tokenizer = mlx_spec.load(tiny / "moe" / "target", tiny / "moe" / "drafter-trained")
    target = model.adapter
    prompts = make_prompts(target, (8, 20), seed=7) + ["hello world"]
    stats = BatchStats()
    result = mlx_spec.batch_generate(model, tokenizer, prompts, max_tokens=[30, 20, 10], draft_tokens=3, ignore_eos=True, stats=stats)
    assert [len(t) for t in result.tokens] == [30, 20, 10]
    assert len(result.texts) == 3 and result.finish_reasons == ["length"] * 3
    assert result.tokens[0] == plain_reference(target, prompts[0], 30)[0]
    s = result.stats
    assert s is stats and s.target_forwards >= s.steps > 0 and s.drafted > 0
    assert len(s.accepted_per_row) == 3 and s.expert_loads > 0
    assert pair is not None
    with pytest.raises(MlxSpecError, match="vocabulary"):
        mlx_spec.batch_generate(model, tokenizer, [[2, 5, 10**6]], max_tokens=4)
    with pytest.raises(MlxSpecError, match="one per prompt"):
        mlx_spec.batch_generate(model, tokenizer, prompts, max_tokens=[3, 4])


@pytest.mark.parametrize("variant", ("dense", "e2b"))
def test_prompt_cache_reuses_the_longest_usable_prefix(pairs, variant):
    """A request that extends an earlier one prefills only the new part (read from the finished row's
    snapshot); one that leaves the earlier reply far back (past what the sliding layers still hold)
    falls back to the prompt-end snapshot; outputs stay each prompt's plain greedy output; the cache
    keeps to its byte budget, least recently used first."""
    from mlx_spec.core.prompt_cache import PromptCache

    pair = pairs[variant]
    target, drafter = pair.adapter, pair.draft_model
    cache = PromptCache(target, 1 << 30)
    engine = BatchEngine(target, drafter, BatchPolicy(3, fixed=3), prompt_cache=cache)
    [p1, extra] = make_prompts(target, (41, 9), seed=3)

    def ask(prompt):
        out, _ = run_engine(engine, [(prompt, 30, ())])
        plain, margins = plain_reference(target, prompt, 30)
        check_lossless(out[0], plain, margins, f"{variant} cached prefix", tolerance=tolerance_for(target))
        return out[0], engine.stats.rows[-1].cached_prompt_tokens

    a, cached = ask(p1)
    assert cached == 0
    _, cached = ask(p1 + a + extra[1:])
    assert cached == len(p1) + len(a) - 1  # everything the target had read: prompt and reply but its last token
    _, cached = ask(p1 + a[:10] + extra[1:])  # diverges 20 tokens back: deeper than the sliding layers' slack
    assert cached == len(p1) + 10
    assert 0 < cache.nbytes <= cache.max_bytes
    first = next(iter(cache.entries))
    cache.max_bytes = cache.nbytes - 1  # one snapshot too many: the least recently used one goes
    other = tuple(range(5, 5 + len(first)))  # shares no prefix with anything held
    cache.insert(other, cache.entries[first].layers)
    assert first not in cache.entries and other in cache.entries and cache.nbytes <= cache.max_bytes
