"""The drafter protocol, and proposing k tokens with an MTP drafter from one fixed position.

Every drafter kind the loop runs (the released Gemma 4 assistants with a dense or a centroid-masked
head, `models/gemma4_assistant.py`; the drafters `mlx-spec distill` trains, `models/mtp_drafter.py`;
wrappers such as the benchmark's controlled-acceptance drafter) is a `Drafter`: one draft step from
[embedding ; hidden] at a fixed RoPE position, reading the target's KV in place.

`propose` drafts as transformers' `SinglePositionMultiTokenCandidateGenerator`: step 1 reads the
target's embedding of the last seen token and the target's hidden state that predicted it; step
i > 1 reads the embedding of draft i - 1 and the drafter's own projected hidden state. The RoPE
position stays at the last seen token's for all k steps, and every step attends to the same target
KV. Everything stays lazy: the drafts flow into the verify without a host round trip.
"""

from __future__ import annotations

from typing import Callable, Protocol

import mlx.core as mx

Sampler = Callable[[mx.array], mx.array]  # logits [1, V] -> token ids [1]


class Drafter(Protocol):
    sliding_span: int  # newest sliding-layer keys one draft step attends to

    def __call__(self, inputs_embeds: mx.array, position: int, shared_kv: dict) -> tuple[mx.array, mx.array]:
        """inputs [1, 1, 2 * backbone] -> (logits [1, 1, V], next hidden [1, 1, backbone])."""


def propose(drafter: Drafter, target, cache: list, token: mx.array, hidden: mx.array, k: int,
            sampler: Sampler) -> tuple[mx.array, mx.array]:
    """Draft k tokens after `token` ([1]), whose target hidden predecessor is `hidden` [1, 1, H].

    Returns (tokens [k] int32, logits [k, V]); lazy.
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
    return mx.concatenate(tokens).astype(mx.int32), mx.concatenate(logits)


def target_position(cache: list) -> int:
    """Tokens the target has processed: the position of the next (last seen, unprocessed) token."""
    return cache[0].offset
