"""The greedy speculative loop is lossless: token for token the target's plain greedy output.

Drafters: `drafter-trained` (distilled, partly right: acceptance 10-75%, so accept, partial reject and
rollback all happen) and, once, the random `drafter` (rejects almost everything: rollback every step).
Prompts: short, and longer than 3x the sliding window; 140 tokens cross the window ~17 times.
"""

from __future__ import annotations

import json
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from conftest import FIXTURES, QUANTIZED, VARIANTS
from ties import check_lossless, plain_reference, tolerance_for
from mlx_spec.core.errors import MlxSpecError
from mlx_spec.core.loading import load_pair
from mlx_spec.core.loop import SpecStats, speculative_generate_step, token_ids
from mlx_spec.core.target import Target

TOKENS = 112  # the tiny windows are 8-12: 112 tokens cross them 9-14 times


def drafter_dir(tiny, variant):
    return tiny / variant / ("drafter" if variant in QUANTIZED else "drafter-trained")


@pytest.fixture(scope="module")
def models(tiny):
    out = {}
    for variant in (*VARIANTS, *QUANTIZED):
        pair = load_pair(tiny / variant / "target", drafter_dir(tiny, variant))
        out[variant] = (pair.adapter, pair.draft_model)
    return out


def prompts(target: Target) -> dict[str, list[int]]:
    window = target.sliding_window
    out = {}
    for seed, length in ((0, 6), (1, 3 * window + 7), (2, 4 * window + 3)):
        rng = np.random.RandomState(seed)
        out[f"seed{seed}-len{length}"] = [2] + rng.randint(5, target.vocab_size, size=length - 1).tolist()
    return out


def run(target, drafter, prompt, k, tokens=TOKENS, **kw):
    stats = SpecStats()
    out = token_ids(speculative_generate_step(prompt, target, drafter, draft_tokens=k, max_tokens=tokens, stats=stats, **kw))
    return out, stats


@pytest.mark.parametrize("variant", (*VARIANTS, *QUANTIZED))
def test_speculative_equals_plain_greedy(models, variant):
    """Token for token on CPU; on GPU kernels any divergence must sit at a near-tie of plain's logits."""
    target, drafter = models[variant]
    accepted_any = rejected_any = False
    chosen = prompts(target)
    if variant in QUANTIZED or variant == "e2b":  # quantized: float sources' code path; e2b: slow (low acceptance)
        chosen = dict(list(chosen.items())[1:2])  # the prompt longer than 3 windows
    # dense: a sweep of draft lengths, moe a shorter one; the others: a middle and the longest (k = 4 runs in test_batch too)
    ks = {"dense": (1, 3, 5, 8), "moe": (1, 3, 8)}.get(variant, (3, 8))
    for name, prompt in chosen.items():
        plain, plain_stats = run(target, drafter, prompt, 0)
        assert len(plain) == TOKENS and plain_stats.target_forwards == TOKENS  # plain: one forward per token
        if variant == "dense":  # the loop's plain path is the 1-row reference computation, on any backend
            reference, margins = plain_reference(target, prompt, TOKENS)
            check_lossless(plain, reference, margins, f"{variant} {name} plain loop", exact=True)
        else:
            margins = lambda prompt=prompt: plain_reference(target, prompt, TOKENS)[1]  # noqa: E731 (only on a divergence)
        for k in ks:
            spec, stats = run(target, drafter, prompt, k)
            check_lossless(spec, plain, margins, f"{variant} {name} k={k}", tolerance=tolerance_for(target))
            assert stats.generated == TOKENS and stats.target_forwards == 1 + stats.steps
            assert stats.accepted == sum(stats.accepted_per_step) == sum(stats.accepted_per_position)
            assert stats.generated == 1 + stats.accepted + stats.steps
            accepted_any |= stats.accepted > 0
            rejected_any |= stats.accepted < stats.drafted
    assert accepted_any and rejected_any  # the drafter is partly right: both paths ran


def test_bucketed_verify_keys_equal_plain_greedy(models):
    """The cache MLX's CUDA backend gets (verify keys padded to a bucket, masked) changes no token."""
    target, drafter = models["dense"]
    bucketed = Target(target.module, target.text_config, bucket_keys=True)
    assert any(type(c).__name__ == "BucketedKVCache" for c in bucketed.make_cache())
    for prompt in list(prompts(target).values())[:2]:  # shorter than the sliding window (padded there too), and longer
        plain, _ = run(target, drafter, prompt, 0)
        for k in (3, 8):
            spec, stats = run(bucketed, drafter, prompt, k)
            check_lossless(spec, plain, lambda: plain_reference(target, prompt, TOKENS)[1], f"bucketed k={k}", tolerance=tolerance_for(target))
            assert stats.accepted > 0 and stats.accepted < stats.drafted


@pytest.mark.parametrize("variant", ("dense", "moe", "dense-4bit"))
def test_exact_verify_is_plain_decoding_bit_for_bit(models, variant):
    """--exact-verify checks every draft with plain decoding's own 1-row forward: equal on any backend
    (asserted exactly, also on GPU kernels), with drafts still accepted and rolled back."""
    target, drafter = models[variant]
    prompt = list(prompts(target).values())[1]  # longer than 3 windows: 100 tokens cross them again
    plain, _ = run(target, drafter, prompt, 0, tokens=100)
    for k in (1, 4):
        spec, stats = run(target, drafter, prompt, k, tokens=100, exact_verify=True)
        check_lossless(spec, plain, [0.0] * len(plain), f"{variant} exact k={k}", exact=True)
        assert stats.target_forwards == 1 + stats.steps and stats.drafted > stats.accepted


def test_logits_processors_greedy_equals_mlx_lm_with_the_same_processors(models):
    """Logit bias, repetition / presence / frequency penalties and a custom processor reading the whole
    history, applied at every drafted position: greedy speculative output equals mlx-lm's own
    generate_step with the same processors (exactly on CPU; --exact-verify exactly anywhere)."""
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_logits_processors

    from mlx_spec.core.sampling import Processors
    from mlx_spec.core.settings import ProcessorSettings
    from ties import exact_backend

    target, drafter = models["dense"]
    prompt = list(prompts(target).values())[1]

    def custom(tokens, logits):  # penalise the token two back: reads the history beyond any window
        return logits.at[:, tokens[-2:-1]].add(-3.0)

    settings = ProcessorSettings(logit_bias={7: 2.0, 11: -1.0}, repetition_penalty=1.3, presence_penalty=0.4,
                                 frequency_penalty=0.3, frequency_context_size=40, custom=(custom,))
    functions = make_logits_processors({7: 2.0, 11: -1.0}, 1.3, 20, 0.4, 20, 0.3, 40) + [custom]
    reference = [int(t) for t, _ in generate_step(mx.array(prompt), target.module, max_tokens=100, logits_processors=functions,
                                                  sampler=lambda logprobs: mx.argmax(logprobs, axis=-1))]
    assert reference != run(target, drafter, prompt, 0, tokens=100)[0]  # the processors change the output
    ours = None
    for k, exact in ((0, False), (3, True), (3, False), (6, False)):
        if not (exact or k == 0 or exact_backend()):
            continue  # GPU kernels: a (k+1)-row verify may flip a near-tie (README, "Losslessness")
        out, stats = run(target, drafter, prompt, k, tokens=100, processors=Processors(settings, target.vocab_size), exact_verify=exact)
        ours = out if k == 0 else ours
        # mlx-lm reads the prompt's last token in a forward of its own, we read the prompt in one: on GPU
        # kernels the two may round apart and flip a near-tie, so there the reference is our plain loop
        expected = reference if exact_backend() else ours
        assert out == expected, f"k={k} exact={exact}: first difference at {next(i for i, (a, b) in enumerate(zip(out, expected)) if a != b)}"
        if k:
            assert 0 < stats.accepted < stats.drafted


def test_yields_whether_each_token_was_a_draft(models):
    target, drafter = models["dense"]
    prompt = list(prompts(target).values())[0]
    stats = SpecStats()
    out = list(speculative_generate_step(prompt, target, drafter, draft_tokens=4, max_tokens=80, stats=stats))
    assert sum(d for _, d in out) == stats.accepted > 0
    assert not out[0][1]  # the prefill's token is the target's own
    i = 1
    for n in stats.accepted_per_step:  # each step: n accepted drafts, then the target's own token
        assert [d for _, d in out[i : i + n + 1]] == [True] * n + [False][: len(out) - i - n]
        i += n + 1


def test_one_host_synchronisation_per_step(models, monkeypatch):
    """The loop reads the device once per verify step (plus once for the prefill's token): drafts
    flow into the verify lazily and plain steps are queued before the previous one is read."""
    from mlx_spec.core import loop

    target, drafter = models["dense"]
    evals = []
    real_eval = loop.mx.eval

    class CountingMx:
        def __getattr__(self, name):
            return getattr(mx, name)

        @staticmethod
        def eval(*args):
            evals.append(1)
            return real_eval(*args)

    monkeypatch.setattr(loop, "mx", CountingMx())
    prompt = list(prompts(target).values())[0]
    for k in (0, 4):
        evals.clear()
        out, stats = run(target, drafter, prompt, k, tokens=60)
        assert len(evals) == stats.steps + 1, (k, len(evals), stats.steps)


def test_prompt_ids_outside_the_vocabulary_are_clear_errors(models):
    target, drafter = models["dense"]
    for bad in ([2, 5, target.vocab_size], [2, -1, 7], [2, 99999]):
        with pytest.raises(MlxSpecError, match="outside the model's vocabulary"):
            run(target, drafter, bad, 2, tokens=4)


def test_cache_without_enough_rollback_slack_is_refused(models):
    target, drafter = models["dense"]
    with pytest.raises(MlxSpecError, match="roll back"):
        run(target, drafter, [2, 5, 9], 8, tokens=4, cache=target.make_cache(max_rollback=2))


def test_random_drafter_rollback_every_step(tiny, models):
    target, _ = models["e2b"]
    random_drafter = load_pair(tiny / "e2b" / "target", tiny / "e2b" / "drafter").drafter.module
    prompt = list(prompts(target).values())[1]  # longer than 3 windows
    plain, _ = run(target, None, prompt, 0)
    spec, stats = run(target, random_drafter, prompt, 8)
    assert spec == plain
    assert stats.accepted <= stats.steps // 4  # nearly every block rejected and rolled back


@pytest.mark.parametrize("variant", VARIANTS)
def test_accepted_counts_match_transformers(models, golden, variant):
    """Same drafts as transformers' assisted (MTP) decoding: every step accepts exactly as many tokens.

    Golden runs are transformers' own with its shared-KV slice corrected to the accepted tokens
    ("fixed", see scripts/make_golden.py); the unchanged reference ("reference") differs after partial
    rejections because it also shows the assistant the rejected drafts' keys.
    """
    meta = golden["variants"][variant]
    assert meta["assisted_drafter"] == "drafter-trained"
    target, drafter = models[variant]
    compared = 0
    for key, run_meta in meta["assisted"].items():
        if run_meta["kv"] != "fixed":
            continue
        prompt = meta["prompts"][run_meta["prompt"]]
        tokens, stats = run(target, drafter, prompt, run_meta["num_assistant_tokens"], tokens=len(run_meta["tokens"]))
        assert tokens == run_meta["tokens"], key
        assert stats.drafts_per_step == [s["drafted"] for s in run_meta["steps"]], key
        assert stats.accepted_per_step == [s["accepted"] for s in run_meta["steps"]], key
        compared += 1
        assert sum(stats.accepted_per_step) > 0
    assert compared == 4


class OracleDrafter:
    """Proposes the target's own greedy continuation (known in advance): every draft is accepted,
    so every token but a block's last comes from a draft."""

    def __init__(self, prompt, continuation, vocab_size, hidden_size, sliding_span):
        self.sequence = list(prompt) + list(continuation)
        self.vocab_size, self.hidden_size, self.sliding_span = vocab_size, hidden_size, sliding_span
        self.position, self.step = None, 0

    def __call__(self, inputs, position, shared_kv):
        if position != self.position:
            self.position, self.step = position, 0
        self.step += 1
        index = min(position + self.step, len(self.sequence) - 1)
        logits = mx.zeros((1, 1, self.vocab_size)).at[0, 0, self.sequence[index]].add(1.0)
        return logits, mx.zeros((1, 1, self.hidden_size))


def test_stop_token_in_the_middle_of_a_block(models):
    """A stop token produced by an accepted draft ends generation right there, mid-block."""
    target, drafter = models["dense"]
    prompt = list(prompts(target).values())[2]
    plain, _ = run(target, None, prompt, 0, tokens=120)
    oracle = OracleDrafter(prompt, plain, target.vocab_size, target.hidden_size, drafter.sliding_span)
    out, stats = run(target, oracle, prompt, 8, tokens=120)
    assert out == plain and stats.accepted == stats.drafted  # blocks of 9: 8 drafts + the target's token
    firsts = {tok: plain.index(tok) for tok in set(plain)}
    mid_block = [(tok, p) for tok, p in firsts.items() if p % 9 != 0]
    assert len(mid_block) >= 3
    for tok, p in mid_block:
        out, _ = run(target, oracle, prompt, 8, tokens=120, stop_tokens={tok})
        assert out == plain[: p + 1]


def test_token_limit_and_context_limit(models):
    target, drafter = models["moe"]
    prompt = list(prompts(target).values())[0]
    plain, _ = run(target, None, prompt, 0, tokens=60)
    for limit in range(1, 60, 7):
        assert run(target, drafter, prompt, 8, tokens=limit)[0] == plain[:limit]
    # context of len(prompt) + 25 positions: at most 26 tokens (the last needs no forward), never a verify past it
    out, _ = run(target, drafter, prompt, 8, tokens=60, max_context=len(prompt) + 25)
    assert out == plain[: len(out)] and len(out) == 26
    with pytest.raises(MlxSpecError, match="context"):
        run(target, drafter, list(range(2, 40)), 4, max_context=30)


def decode_peak(target, drafter, prompt, k, tokens=48) -> int:
    """Peak memory while decoding (after the prefill has produced the first token)."""
    steps = speculative_generate_step(prompt, target, drafter, draft_tokens=k, max_tokens=tokens)
    next(steps)
    mx.synchronize()
    mx.reset_peak_memory()
    for _ in steps:
        pass
    return mx.get_peak_memory()


class ConstantDrafter:
    """Proposes token 5 every time without reading anything: the target's verify cost alone."""

    def __init__(self, vocab_size, hidden_size, sliding_span):
        self.vocab_size, self.hidden_size, self.sliding_span = vocab_size, hidden_size, sliding_span

    def __call__(self, inputs, position, shared_kv):
        return mx.zeros((1, 1, self.vocab_size)).at[0, 0, 5].add(1.0), mx.zeros((1, 1, self.hidden_size))


def test_peak_memory_is_drafter_plus_small_activations(models):
    """The drafter adds at most its weights plus O(k) activations to decoding, at a context long
    enough that a copy of one producer layer's KV (a second cache, a drafter prefill) would break the
    bound. Measured against the same loop with a drafter that reads nothing, so the target's own
    (k+1)-token verify (whose attention scores grow with k x context on the CPU) is on both sides."""
    target, drafter = models["dense"]
    prompt = [2] + list(np.random.RandomState(3).randint(5, target.vocab_size, size=2499))
    drafter_bytes = sum(v.nbytes for _, v in tree_flatten(drafter.parameters()))
    per_draft = 16 * 4 * (target.vocab_size + target.hidden_size)  # logits + hidden in float32, with temporaries
    full_kv_bytes = 2 * 4 * len(prompt) * target.text_config["global_head_dim"] * target.text_config["num_global_key_value_heads"]
    constant = ConstantDrafter(target.vocab_size, target.hidden_size, drafter.sliding_span)
    for k in (8,):  # the longest block: the most activations
        bound = drafter_bytes + k * per_draft
        assert full_kv_bytes > bound  # so the test can fail
        baseline = decode_peak(target, constant, prompt, k)
        spec = decode_peak(target, drafter, prompt, k)
        assert spec - baseline <= bound, (k, spec, baseline, bound)


def test_cli_generate_json_on_transformers_saved_checkpoints(golden):
    """The machine-readable command on a pair written whole by transformers' save_pretrained
    (per_layer_config form): greedy output equals transformers' own greedy continuation."""
    meta = golden["variants"]["dense"]
    saved = FIXTURES / "hf_saved" / "dense"
    prompt = ",".join(map(str, meta["prompts"]["short"]))
    base = [sys.executable, "-m", "mlx_spec.cli", "generate", "--model", str(saved / "target"), "--drafter", str(saved / "drafter"),
            "--prompt-ids", prompt, "--max-tokens", "60", "--temp", "0", "--ignore-eos", "--json"]
    from typer.testing import CliRunner

    from mlx_spec.cli import app

    plain = CliRunner().invoke(app, base[3:] + ["--draft-tokens", "0"])  # plain in process (typer's runner)
    assert plain.exit_code == 0, plain.output
    spec = subprocess.run(base + ["--draft-tokens", "4"], capture_output=True, text=True, timeout=120)  # a real process
    assert spec.returncode == 0, spec.stderr
    outs = {0: json.loads(plain.stdout), 4: json.loads(spec.stdout)}
    for k in (0, 4):
        assert {"target_forwards", "drafted", "accepted"} <= set(outs[k]["stats"])
        assert isinstance(outs[k]["text"], str)
        assert outs[k]["tokens"] == meta["greedy"]["short"]
    assert outs[0]["stats"]["target_forwards"] == 60 and outs[0]["stats"]["drafted"] == 0
    assert outs[4]["stats"]["target_forwards"] < 60 and outs[4]["stats"]["accepted"] > 0
