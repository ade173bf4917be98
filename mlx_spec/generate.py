"""Public generation API shaped like mlx-lm's: `stream_generate` yields responses, `generate` returns text.

The keyword arguments of the public functions are the edge: they become a `SamplingSettings`, a
`ProcessorSettings` and a `DraftSettings` once (or pass those objects directly), and `decode` turns
the settings into the loop's strategy, processors and policy. Chat and the benchmark decode through the same `decode`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Generator, Iterable, Optional, Sequence, Union

import mlx.core as mx

from .core.batch import BatchEngine, BatchStats, measure_batch_step_costs
from .core.errors import MlxSpecError
from .core.loading import SpeculativeModel
from .core.lookup import Lookup
from .core.loop import SpecStats, measure_step_costs, speculative_generate_step
from .core.policy import BatchPolicy, FixedPolicy, byte_costs, make_policy
from .core.sampling import Processors, make_strategy
from .core.settings import NO_PROCESSORS, DraftSettings, ProcessorSettings, SamplingSettings


@dataclass
class GenerationResponse:
    """One streamed step, as mlx-lm's GenerationResponse plus speculative stats."""

    text: str
    token: int
    from_draft: bool
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    peak_memory: float  # GB
    finish_reason: Optional[str] = None
    stats: SpecStats = field(default_factory=SpecStats)


def policy_for(model: SpeculativeModel, sampling: SamplingSettings, draft: DraftSettings, drafter):
    """Fixed k, or adaptive k priced by step costs measured once per loaded pair and settings kind
    (re-measured when the observed step time has drifted) and starting from the acceptance the last
    generation of that kind learned; or, when seeded, priced by weight bytes from a fresh start:
    timings vary run to run and would change k, hence the random draws, so a seeded run must not
    depend on them or on earlier runs. drafter None with prompt lookup on: the policy of lookup
    drafting alone (verify-only costs)."""
    if drafter is None and not draft.lookup:
        return FixedPolicy(0)
    if not draft.adaptive:
        return make_policy(draft)
    if drafter is None:
        return make_policy(draft, verify_costs(model, sampling, draft))
    if sampling.seed is not None:
        return make_policy(draft, byte_costs(model.adapter, drafter, draft.k_max))
    key = (sampling.greedy, draft.exact_verify, draft.k_max)
    costs = model.costs.get(key)
    if costs is None or costs.stale:
        measuring = make_strategy(replace(sampling, seed=0))  # its own random stream, not the run's
        costs = model.costs[key] = measure_step_costs(model.adapter, drafter, draft.k_max, measuring, draft.exact_verify)
    policy = make_policy(draft, costs)
    if key in model.policies:
        policy.remember(model.policies[key])
    model.policies[key] = policy
    return policy


def verify_costs(model: SpeculativeModel, sampling: SamplingSettings, draft: DraftSettings):
    """Step costs of verifying k drafts proposed on the host (prompt lookup: no drafter forward),
    measured once per model and settings kind (bytes when seeded, as `policy_for`)."""
    k_max = lookup_k_max(sampling, draft)
    if sampling.seed is not None:
        return byte_costs(model.adapter, None, k_max)
    key = ("verify", sampling.greedy, draft.exact_verify, k_max)
    costs = model.costs.get(key)
    if costs is None or costs.stale:
        measuring = make_strategy(replace(sampling, seed=0))
        costs = model.costs[key] = measure_step_costs(model.adapter, None, k_max, measuring, draft.exact_verify)
    return costs


def lookup_k_max(sampling: SamplingSettings, draft: DraftSettings) -> int:
    """The longest lookup draft: `max_lookup_tokens` greedy, `max_draft_tokens` sampled (a copied token is
    then accepted with its probability only, and long drafts seldom whole: measured in lookup.py)."""
    return draft.lookup_k_max if sampling.greedy else draft.k_max


def lookup_for(model: SpeculativeModel, sampling: SamplingSettings, draft: DraftSettings) -> Optional[Lookup]:
    """A fresh prompt-lookup drafter for one generation (None when lookup is off), starting from the
    acceptance per match length the last generation of this kind learned (not when seeded)."""
    k_max = lookup_k_max(sampling, draft)
    if not draft.lookup or k_max == 0:
        return None
    lookup = Lookup(k_max, costs=verify_costs(model, sampling, draft) if draft.adaptive else None, greedy=sampling.greedy)
    if sampling.seed is None:
        key = ("lookup", sampling.greedy, k_max)
        if key in model.policies:
            lookup.remember(model.policies[key])
        model.policies[key] = lookup
    return lookup


def processors_for(model: SpeculativeModel, settings: ProcessorSettings) -> Optional[Processors]:
    """The loop's logits processors for these settings (None when there are none)."""
    return Processors(settings, model.adapter.vocab_size) if settings.active else None


def processor_settings(processors: Optional[ProcessorSettings] = None, logits_processors=None, **kwargs) -> ProcessorSettings:
    """The public functions' processor keywords (mlx-lm's names; `logits_processors`: custom callables)
    as one settings object; an object given directly wins."""
    if processors is not None:
        return processors
    given = {k: v for k, v in kwargs.items() if v is not None}
    return ProcessorSettings(custom=tuple(logits_processors or ()), **given)


def decode(model: SpeculativeModel, prompt: Sequence[int], sampling: SamplingSettings, draft: DraftSettings, *,
           max_tokens: int, stop: Iterable[int] = (), stats: Optional[SpecStats] = None, cache: Optional[list] = None,
           max_context: Optional[int] = None, drafter=None,
           processors: ProcessorSettings = NO_PROCESSORS) -> Generator[tuple[int, bool], None, None]:
    """The loop with the strategy, processors and policy these settings mean: yields (token, from_draft).
    `drafter` overrides the model's own (the benchmark's controlled-acceptance wrapper)."""
    drafter = drafter if drafter is not None else model.draft_model
    if draft.k_max == 0 or not draft.mtp:
        drafter = None
    if model.lookup and not draft.lookup:
        draft = replace(draft, lookup=True)
    return speculative_generate_step(
        prompt, model.adapter, drafter, policy=policy_for(model, sampling, draft, drafter), strategy=make_strategy(sampling),
        processors=processors_for(model, processors), exact_verify=draft.exact_verify, max_tokens=max_tokens,
        stop_tokens=stop, stats=stats, cache=cache, max_context=max_context, lookup=lookup_for(model, sampling, draft),
    )


def user_turn_tokens(tokenizer, text: str, chat_template: bool = True) -> list[int]:
    """A user message as prompt tokens: wrapped in the model's chat template when it has one."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": text}]
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    return list(tokenizer.encode(text))


def _prompt_ids(tokenizer, prompt: Union[str, Sequence[int], mx.array]) -> list:
    if isinstance(prompt, str):
        return list(tokenizer.encode(prompt))
    if isinstance(prompt, mx.array):
        return prompt.reshape(-1).tolist()
    return list(prompt)  # checked against the vocabulary by the loop


def stream_generate(
    model: SpeculativeModel,
    tokenizer,
    prompt: Union[str, Sequence[int], mx.array],
    max_tokens: int = 256,
    draft_tokens: Union[int, str] = "auto",
    max_draft_tokens: int = 8,
    exact_verify: bool = False,
    lookup: bool = False,
    max_lookup_tokens: int = 16,
    temp: float = 0.0,
    top_p: float = 0.0,
    top_k: int = 0,
    min_p: float = 0.0,
    seed: Optional[int] = None,
    ignore_eos: bool = False,
    max_context: Optional[int] = None,
    logit_bias: Optional[dict] = None,
    repetition_penalty: Optional[float] = None,
    repetition_context_size: Optional[int] = None,
    presence_penalty: Optional[float] = None,
    presence_context_size: Optional[int] = None,
    frequency_penalty: Optional[float] = None,
    frequency_context_size: Optional[int] = None,
    logits_processors: Optional[list] = None,
    sampling: Optional[SamplingSettings] = None,
    draft: Optional[DraftSettings] = None,
    processors: Optional[ProcessorSettings] = None,
) -> Generator[GenerationResponse, None, None]:
    """Speculative decoding that yields exactly what the target alone would: its greedy tokens at
    temp 0, samples from its (filtered, tempered) distribution otherwise (rejection sampling).

    draft_tokens: "auto" (adaptive, up to max_draft_tokens; may choose plain decoding) or a fixed k
    (0: plain decoding through the same loop). exact_verify: greedy output bit-identical to plain
    decoding on any backend (see README). lookup: prompt-lookup drafting beside the MTP drafter (load
    with drafter="lookup" for lookup alone); adaptive and greedy, its drafts run up to max_lookup_tokens. logit_bias ({token id: bias}), the penalties and their
    context sizes, and `logits_processors` (mlx-lm-style callables) as mlx-lm's make_logits_processors /
    generate_step define them, applied at every drafted position. `sampling` / `draft` / `processors`
    objects replace the keywords.
    """
    sampling = sampling or SamplingSettings(temp=temp, top_p=top_p, top_k=top_k, min_p=min_p, seed=seed)
    draft = draft or DraftSettings(draft_tokens, max_draft_tokens, exact_verify, lookup, max_lookup_tokens=max_lookup_tokens)
    processors = processor_settings(processors, logits_processors, logit_bias=logit_bias, repetition_penalty=repetition_penalty,
                                    repetition_context_size=repetition_context_size, presence_penalty=presence_penalty,
                                    presence_context_size=presence_context_size, frequency_penalty=frequency_penalty,
                                    frequency_context_size=frequency_context_size)
    ids = _prompt_ids(tokenizer, prompt)
    stop = set() if ignore_eos else set(tokenizer.eos_token_ids)
    stats = SpecStats()
    steps = decode(model, ids, sampling, draft, max_tokens=max_tokens, stop=stop, stats=stats, max_context=max_context,
                   processors=processors)
    yield from responses(tokenizer, steps, stats, len(ids), max_tokens, stop)


def responses(tokenizer, steps, stats: SpecStats, prompt_tokens: int, max_tokens: int, stop: set,
              on_token=None) -> Generator[GenerationResponse, None, None]:
    """Turn the loop's (token, from_draft) stream into detokenized GenerationResponses."""
    detokenizer = tokenizer.detokenizer
    detokenizer.reset()
    tic = time.perf_counter()
    prompt_tps = 0.0
    n = 0
    for token, from_draft in steps:
        if on_token is not None:
            on_token(token)
        if n == 0:
            prompt_time = time.perf_counter() - tic
            prompt_tps = prompt_tokens / prompt_time if prompt_time else 0.0
            tic = time.perf_counter()
        n += 1
        finish = None
        if token in stop:
            finish = "stop"
        elif n >= max_tokens:
            finish = "length"
        if token not in stop:
            detokenizer.add_token(token)
        if finish:
            detokenizer.finalize()
        elapsed = time.perf_counter() - tic
        yield GenerationResponse(
            text=detokenizer.last_segment,
            token=token,
            from_draft=from_draft,
            prompt_tokens=prompt_tokens,
            prompt_tps=prompt_tps,
            generation_tokens=n,
            generation_tps=n / elapsed if elapsed > 0 else 0.0,
            peak_memory=mx.get_peak_memory() / 1e9,
            finish_reason=finish,
            stats=stats,
        )
        if finish:
            return


def generate(model: SpeculativeModel, tokenizer, prompt, verbose: bool = False, **kwargs) -> str:
    """The generated text (see stream_generate for arguments)."""
    text = ""
    response = None
    for response in stream_generate(model, tokenizer, prompt, **kwargs):
        text += response.text
        if verbose:
            print(response.text, end="", flush=True)
    if verbose and response is not None:
        s = response.stats
        print(f"\nprompt: {response.prompt_tokens} tokens, {response.prompt_tps:.1f} tok/s; "
              f"generation: {response.generation_tokens} tokens, {response.generation_tps:.1f} tok/s; "
              f"accepted {s.accepted}/{s.drafted}, target forwards/token {s.target_forwards / max(1, s.generated):.2f}")
    return text


# ------------------------------------------------------------------------------------------------
# Batches


@dataclass
class BatchResponse:
    """What `batch_generate` returns: per prompt, in order, the text and token ids (prompt excluded)."""

    texts: list[str]
    tokens: list[list[int]]
    finish_reasons: list[str]
    stats: BatchStats


def batch_policy_for(model: SpeculativeModel, samplings: Sequence[SamplingSettings], draft: DraftSettings, drafter) -> BatchPolicy:
    """One k for a batch: fixed, or adaptive priced by the measured cost of a B x (k + 1) step, measured
    once per loaded pair, settings kind and batch-size bucket (the next power of two: a step of 3 rows
    is priced as one of 4), re-measured at the next run when observed step times drifted; new rows start
    from the acceptance earlier rows of that kind showed. Seeded batches are priced by weight bytes from
    a fresh start (reproducible, as `policy_for`)."""
    if (drafter is None and not draft.lookup) or draft.k_max == 0:
        return BatchPolicy(0, fixed=0)
    if not draft.adaptive:
        return BatchPolicy(draft.k_max, fixed=draft.k_max)
    greedy = all(s.greedy for s in samplings)
    seeded = any(s.seed is not None for s in samplings)
    chosen: dict[int, object] = {}  # this run's tables: none is re-measured in the middle of it

    def costs_for(rows: int):
        bucket = 1 << max(0, rows - 1).bit_length()
        if bucket not in chosen:
            if seeded:
                chosen[bucket] = byte_costs(model.adapter, drafter, draft.k_max, bucket)
            else:
                key = ("batch", greedy, draft.exact_verify, draft.k_max, bucket, drafter is None)
                costs = model.costs.get(key)
                if costs is None or costs.stale:
                    measuring = make_strategy(SamplingSettings(temp=0.0 if greedy else 1.0, seed=0))
                    costs = model.costs[key] = measure_batch_step_costs(model.adapter, drafter, bucket, draft.k_max,
                                                                        measuring, draft.exact_verify)
                chosen[bucket] = costs
        return chosen[bucket]

    policy = BatchPolicy(draft.k_max, costs_for)
    if not seeded:  # rows start from the acceptance the last batch of this kind showed
        key = ("batch", greedy, draft.exact_verify, draft.k_max)
        if key in model.policies:
            policy.remember(model.policies[key])
        model.policies[key] = policy
    return policy


def _per_prompt(value, n: int, what: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise MlxSpecError(f"{what} has {len(value)} entries for {n} prompts: give one value or one per prompt.")
        return list(value)
    return [value] * n


def batch_generate(
    model: SpeculativeModel,
    tokenizer,
    prompts: Sequence[Union[str, Sequence[int]]],
    *,
    max_tokens: Union[int, Sequence[int]] = 256,
    temp: float = 0.0,
    top_p: float = 0.0,
    top_k: int = 0,
    min_p: float = 0.0,
    seed: Optional[int] = None,
    draft_tokens: Union[int, str] = "auto",
    max_draft_tokens: int = 8,
    exact_verify: bool = False,
    lookup: bool = False,
    max_lookup_tokens: int = 16,
    ignore_eos: bool = False,
    max_context: Optional[int] = None,
    sampling: Optional[Union[SamplingSettings, Sequence[SamplingSettings]]] = None,
    draft: Optional[DraftSettings] = None,
    logit_bias: Optional[dict] = None,
    repetition_penalty: Optional[float] = None,
    repetition_context_size: Optional[int] = None,
    presence_penalty: Optional[float] = None,
    presence_context_size: Optional[int] = None,
    frequency_penalty: Optional[float] = None,
    frequency_context_size: Optional[int] = None,
    logits_processors: Optional[list] = None,
    processors: Optional[Union[ProcessorSettings, Sequence[ProcessorSettings]]] = None,
    drafter=None,
    stats: Optional[BatchStats] = None,
) -> BatchResponse:
    """Decode several prompts together with speculation: one batched draft and one target forward over
    B x (k + 1) tokens per step, each row accepting its own drafts. Same outputs as generating each
    prompt alone (greedy: its greedy tokens; sampled: its distribution).

    prompts: strings or token-id lists. max_tokens, `sampling` and `processors` may be one value or one
    per prompt; with `seed`, prompt i samples from seed + i. Processor keywords (logit_bias, the penalties,
    logits_processors) as in `stream_generate`, for every prompt. `drafter` overrides the model's own (the
    benchmark's controlled-acceptance wrapper)."""
    n = len(prompts)
    if sampling is None:
        sampling = [SamplingSettings(temp=temp, top_p=top_p, top_k=top_k, min_p=min_p,
                                     seed=None if seed is None else seed + i) for i in range(n)]
    samplings = _per_prompt(sampling, n, "sampling")
    limits = _per_prompt(max_tokens, n, "max_tokens")
    if processors is None:
        processors = processor_settings(None, logits_processors, logit_bias=logit_bias, repetition_penalty=repetition_penalty,
                                        repetition_context_size=repetition_context_size, presence_penalty=presence_penalty,
                                        presence_context_size=presence_context_size, frequency_penalty=frequency_penalty,
                                        frequency_context_size=frequency_context_size)
    processed = [processors_for(model, p) for p in _per_prompt(processors, n, "processors")]
    draft = draft or DraftSettings(draft_tokens, max_draft_tokens, exact_verify, lookup, max_lookup_tokens=max_lookup_tokens)
    drafter = drafter if drafter is not None else model.draft_model
    if draft.k_max == 0 or not draft.mtp:
        drafter = None
    if model.lookup and not draft.lookup:
        draft = replace(draft, lookup=True)
    ids = [_prompt_ids(tokenizer, p) for p in prompts]
    stop = set() if ignore_eos else set(tokenizer.eos_token_ids)
    engine = BatchEngine(model.adapter, drafter, batch_policy_for(model, samplings, draft, drafter),
                         exact_verify=draft.exact_verify, max_context=max_context, stats=stats, lookup=draft.lookup)
    engine.policy.prepare(n)  # every batch size the run will see, measured before it starts
    order = [engine.add(p, make_strategy(s), m, stop, pr) for p, s, m, pr in zip(ids, samplings, limits, processed)]
    tokens = {i: [] for i in order}
    reasons = {}
    try:
        while engine.active:
            for out in engine.step():
                tokens[out.id] += out.tokens
                if out.finish_reason:
                    reasons[out.id] = out.finish_reason
    finally:
        engine.close()
    outs = [[t for t in tokens[i] if t not in stop] for i in order]
    return BatchResponse([tokenizer.decode(t) for t in outs], outs, [reasons.get(i, "length") for i in order], engine.stats)
