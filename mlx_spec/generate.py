"""Public generation API shaped like mlx-lm's: `stream_generate` yields responses, `generate` returns text."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Generator, Optional, Sequence, Union

import mlx.core as mx

from .core.loading import SpeculativeModel
from .core.policy import make_policy, measure_costs, static_costs
from .core.sampling import SamplingSettings, make_strategy
from .core.loop import SpecStats, speculative_generate_step
from .core.target import Target


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


def policy_for_run(model: SpeculativeModel, target: Target, drafter, draft_tokens: Union[int, str],
                   seed: Optional[int], k_max: int = 8):
    """Fixed k, or adaptive k priced by costs measured once per loaded pair (by weight bytes when
    seeded: measured timings vary run to run and would change k, hence the random draws, so a seeded
    run must not depend on them)."""
    if draft_tokens != "auto" or drafter is None:
        return make_policy(draft_tokens, target, drafter, k_max)
    if seed is not None:
        costs = static_costs(target, drafter, k_max)
    else:
        if model.costs is None:
            model.costs = measure_costs(target, drafter, k_max)
        costs = copy.deepcopy(model.costs)
    return make_policy("auto", target, drafter, k_max, costs=costs)


def user_turn_tokens(tokenizer, text: str, chat_template: bool = True) -> list[int]:
    """A user message as prompt tokens: wrapped in the model's chat template when it has one."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": text}]
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    return list(tokenizer.encode(text))


def _prompt_ids(tokenizer, prompt: Union[str, Sequence[int], mx.array]) -> list[int]:
    if isinstance(prompt, str):
        return list(tokenizer.encode(prompt))
    if isinstance(prompt, mx.array):
        return prompt.reshape(-1).tolist()
    return [int(t) for t in prompt]


def stream_generate(
    model: SpeculativeModel,
    tokenizer,
    prompt: Union[str, Sequence[int], mx.array],
    max_tokens: int = 256,
    draft_tokens: Union[int, str] = "auto",
    max_draft_tokens: int = 8,
    temp: float = 0.0,
    top_p: float = 0.0,
    top_k: int = 0,
    min_p: float = 0.0,
    seed: Optional[int] = None,
    ignore_eos: bool = False,
    max_context: Optional[int] = None,
) -> Generator[GenerationResponse, None, None]:
    """Speculative decoding that yields exactly what the target alone would: its greedy tokens at
    temp 0, samples from its (filtered, tempered) distribution otherwise (rejection sampling).

    draft_tokens: "auto" (adaptive, up to max_draft_tokens; may choose plain decoding) or a fixed k
    (0: plain decoding through the same loop).
    """
    ids = _prompt_ids(tokenizer, prompt)
    target = Target(model.target.module, model.target.text_config)
    drafter = model.drafter.module if model.drafter is not None else None
    strategy = make_strategy(SamplingSettings(temp=temp, top_p=top_p, top_k=top_k, min_p=min_p), seed)
    policy = policy_for_run(model, target, drafter, draft_tokens, seed, max_draft_tokens)
    stop = set() if ignore_eos else set(tokenizer.eos_token_ids)
    stats = SpecStats()
    steps = speculative_generate_step(
        ids, target, drafter, policy=policy, max_tokens=max_tokens, strategy=strategy,
        stop_tokens=stop, max_context=max_context, stats=stats,
    )
    yield from responses(tokenizer, steps, stats, len(ids), max_tokens, stop)


def responses(tokenizer, steps, stats: SpecStats, prompt_tokens: int, max_tokens: int, stop: set,
              on_token=None) -> Generator[GenerationResponse, None, None]:
    """Turn a stream of token ids from the loop into detokenized GenerationResponses."""
    detokenizer = tokenizer.detokenizer
    detokenizer.reset()
    tic = time.perf_counter()
    prompt_tps = 0.0
    n = 0
    accepted_seen = 0
    for token in steps:
        if on_token is not None:
            on_token(token)
        if n == 0:
            prompt_time = time.perf_counter() - tic
            prompt_tps = prompt_tokens / prompt_time if prompt_time else 0.0
            tic = time.perf_counter()
        n += 1
        from_draft = stats.accepted > accepted_seen  # accepted drafts are yielded right after their verify
        if from_draft:
            accepted_seen += 1
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
