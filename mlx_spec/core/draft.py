"""Proposing k tokens with the MTP drafter from one fixed position.

As transformers' `SinglePositionMultiTokenCandidateGenerator`: step 1 reads the target's embedding of
the last seen token and the target's hidden state that predicted it; step i > 1 reads the embedding
of draft i - 1 and the drafter's own projected hidden state. The RoPE position stays at the last
seen token's for all k steps, and every step attends to the same target KV (read in place).
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx

from .models.gemma4_assistant import Model as AssistantModel
from .target import Target

Sampler = Callable[[mx.array], mx.array]  # logits [B, V] -> token ids [B]


def greedy(logits: mx.array) -> mx.array:
    return mx.argmax(logits, axis=-1)


def propose(
    drafter: AssistantModel,
    target: Target,
    cache: list,
    token: mx.array,
    hidden: mx.array,
    k: int,
    sampler: Sampler = greedy,
) -> tuple[mx.array, mx.array]:
    """Draft k tokens after `token` (shape [1]), whose target hidden predecessor is `hidden` [1, 1, H].

    Returns (tokens [k], logits [k, V]); lazy, the caller evaluates.
    """
    position = target_position(cache)
    kv = target.shared_kv(cache, drafter.sliding_span)
    tokens, logits = [], []
    last = token
    for _ in range(k):
        inputs = mx.concatenate([target.embed(last[None]), hidden], axis=-1)
        step_logits, hidden = drafter(inputs, position, kv)
        step_logits = step_logits[0, -1:]
        last = sampler(step_logits)
        tokens.append(last)
        logits.append(step_logits)
    return mx.concatenate(tokens), mx.concatenate(logits)


def target_position(cache: list) -> int:
    """Tokens the target has processed: the position of the next (last seen, unprocessed) token."""
    return cache[0].offset
