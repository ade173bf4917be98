"""The speculative decoding loop: prompt -> prefill -> draft -> verify -> accept/rollback -> tokens.

    prefill   the target reads the prompt once; keep its last hidden state and first new token t.
    draft     the drafter proposes d1..dk from t, that hidden state and the target's KV (in place).
    verify    one target forward over [t, d1..dk] gives k+1 next-token distributions.
    accept    the longest prefix of drafts the target agrees with, plus the target's own next token.
    rollback  every cache forgets the rejected drafts' keys: exactly k - n positions.
    stream    yield the n + 1 new tokens; the hidden state behind the last one feeds the next draft.

`draft_tokens=0` (or no drafter) runs plain decoding through the same path: verify of [t] only.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Generator, Iterable, Optional

import mlx.core as mx

from .cache import trim_all
from .draft import propose, target_position
from .errors import MlxSpecError
from .models.gemma4_assistant import Model as AssistantModel
from .policy import FixedPolicy
from .sampling import GREEDY, Strategy
from .target import Target


@dataclass
class SpecStats:
    """Counters and timings of one generation."""

    prompt_tokens: int = 0
    generated: int = 0
    steps: int = 0  # verify passes after the prefill
    drafted: int = 0
    accepted: int = 0
    target_forwards: int = 0  # prefill chunks + verify passes
    drafter_forwards: int = 0
    drafted_per_position: list[int] = field(default_factory=list)
    accepted_per_position: list[int] = field(default_factory=list)
    accepted_per_step: list[int] = field(default_factory=list)
    drafts_per_step: list[list[int]] = field(default_factory=list)
    expert_loads: int = 0  # MoE: sum over target forwards and MoE layers of unique experts selected
    expert_bytes: float = 0.0  # MoE: bytes of expert weights those loads touch
    prefill_expert_loads: int = 0
    prefill_time: float = 0.0
    draft_time: float = 0.0
    verify_time: float = 0.0
    rollback_time: float = 0.0

    def record_step(self, drafts: list[int], n: int) -> None:
        k = len(drafts)
        self.drafts_per_step.append(drafts)
        self.steps += 1
        self.drafted += k
        self.accepted += n
        self.drafter_forwards += k
        self.accepted_per_step.append(n)
        for lst in (self.drafted_per_position, self.accepted_per_position):
            lst.extend([0] * (k - len(lst)))
        for i in range(k):
            self.drafted_per_position[i] += 1
            if i < n:
                self.accepted_per_position[i] += 1

    def record_experts(self, tracker) -> None:
        self.expert_loads, self.expert_bytes = tracker.loads, tracker.bytes

    @property
    def acceptance_per_position(self) -> list[float]:
        """Fraction of the drafts made at each position that the target accepted."""
        return [a / d if d else 0.0 for a, d in zip(self.accepted_per_position, self.drafted_per_position)]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["acceptance_per_position"] = self.acceptance_per_position
        out["target_forwards_per_token"] = self.target_forwards / self.generated if self.generated else 0.0
        out["mean_accepted_per_step"] = self.accepted / self.steps if self.steps else 0.0
        decode_tokens = max(1, self.generated - 1)  # tokens after the one the prefill produced
        out["decode_expert_loads_per_token"] = (self.expert_loads - self.prefill_expert_loads) / decode_tokens
        return out


def _clock() -> float:
    return time.perf_counter()


def speculative_generate_step(
    prompt: Iterable[int],
    target: Target,
    drafter: Optional[AssistantModel],
    *,
    draft_tokens: int = 4,
    policy=None,
    max_tokens: int = 256,
    stop_tokens: Iterable[int] = (),
    strategy: Strategy = GREEDY,
    prefill_step_size: int = 512,
    max_context: Optional[int] = None,
    stats: Optional[SpecStats] = None,
    cache: Optional[list] = None,
) -> Generator[int, None, None]:
    """Yield up to `max_tokens` target tokens; stops after a stop token (which is yielded).

    The draft length comes from `policy` (policy.FixedPolicy / AdaptivePolicy), or is `draft_tokens`.
    `cache` (from target.make_cache) continues a conversation: `prompt` is then only the new tokens.
    However the generator ends (exhausted, closed, interrupted), the cache is left holding exactly the
    prompt and every yielded token but the last, which the target has not read yet.
    """
    prompt = [int(t) for t in prompt]
    stats = stats if stats is not None else SpecStats()
    stop = set(stop_tokens)
    max_context = max_context or target.max_context
    if drafter is None:
        policy = FixedPolicy(0)
    elif policy is None:
        policy = FixedPolicy(draft_tokens)
    k_max = policy.k_max
    if not prompt:
        raise MlxSpecError("the prompt is empty: give at least one token.")
    if len(prompt) >= max_context:
        raise MlxSpecError(f"the prompt has {len(prompt)} tokens, the model's context is {max_context}: shorten the prompt.")
    if max_tokens <= 0:
        return
    stats.generated = 0
    stats.prompt_tokens = len(prompt)
    if cache is None:
        cache = target.make_cache(max_rollback=max(k_max, 1))
    base = target_position(cache)
    if base + len(prompt) >= max_context:
        raise MlxSpecError(f"the conversation has {base + len(prompt)} tokens, the model's context is {max_context}: start a new one.")
    try:
        yield from _decode(prompt, target, drafter, policy, max_tokens, stop, strategy, prefill_step_size,
                           max_context, stats, cache)
    finally:
        # Forget drafts processed past the last yielded token (a stop token or a close mid-block).
        if stats.generated:
            keep = base + len(prompt) + stats.generated - 1
            for c in cache:
                if c.offset > keep:
                    c.trim(c.offset - keep)


def _decode(prompt, target, drafter, policy, max_tokens, stop, strategy, prefill_step_size, max_context, stats, cache):
    """The loop proper (see the module docstring); `speculative_generate_step` sets it up."""
    # prefill
    t0 = _clock()
    ids = mx.array(prompt)[None]
    if target.moe is not None:
        target.moe.reset()
    while ids.shape[1] > prefill_step_size:
        _, chunk = target.forward(ids[:, :prefill_step_size], cache, logits=False)
        mx.eval(chunk)
        stats.target_forwards += 1
        ids = ids[:, prefill_step_size:]
    logits, hidden = target.forward(ids, cache, last_only=True)
    token = strategy.first(logits[0, -1:])
    stats.target_forwards += 1
    stats.prefill_time = _clock() - t0
    if target.moe is not None:
        stats.record_experts(target.moe)
        stats.prefill_expert_loads = target.moe.loads

    generated = 0
    while True:
        stats.generated = generated = generated + 1
        yield token
        if token in stop or generated >= max_tokens:
            return
        position = target_position(cache)  # where `token` goes
        room = max_context - position - 1  # verify writes positions position .. position + k
        if room < 0:
            return
        k = max(0, min(policy.choose(), max_tokens - generated - 1, room))

        t0 = _clock()
        if k:
            drafts, draft_logits = propose(drafter, target, cache, mx.array([token]), hidden, k, strategy.draft)
            mx.eval(drafts, draft_logits)
        else:
            drafts, draft_logits = mx.array([], dtype=mx.int32), None
        t1 = _clock()
        verify_in = mx.concatenate([mx.array([token], dtype=mx.int32), drafts.astype(mx.int32)])[None]
        logits, hidden_all = target.forward(verify_in, cache)
        mx.eval(logits, hidden_all)
        stats.target_forwards += 1
        n, next_token = strategy.accept(drafts, draft_logits, logits[0])
        t2 = _clock()
        trim_all(cache, k - n)
        hidden = hidden_all[:, n : n + 1]
        t3 = _clock()
        stats.draft_time += t1 - t0
        stats.verify_time += t2 - t1
        stats.rollback_time += t3 - t2
        drafted = drafts.tolist()
        stats.record_step(drafted, n)
        if target.moe is not None:
            stats.record_experts(target.moe)
        policy.update(k, n, t1 - t0, t2 - t1)

        for d in drafted[:n]:
            stats.generated = generated = generated + 1
            yield d
            if d in stop:
                return
        token = next_token
