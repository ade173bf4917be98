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

from typing import Callable, Optional, Protocol

import mlx.core as mx

Sampler = Callable[[mx.array], mx.array]  # logits [1, V] -> token ids [1]


class Drafter(Protocol):
    sliding_span: int  # newest sliding-layer keys one draft step attends to

    def __call__(self, inputs_embeds: mx.array, position, shared_kv: dict, masks: Optional[dict] = None) -> tuple[mx.array, mx.array]:
        """inputs [B, 1, 2 * backbone] at RoPE position(s) `position` (int, or mx.array [B] for a batch
        of rows at their own positions) -> (logits [B, 1, V], next hidden [B, 1, backbone]). `masks`
        (per layer type, [B, 1, 1, S]): which of the shared keys each row attends to (ragged batches)."""


def propose(drafter: Drafter, target, cache: list, token: mx.array, hidden: mx.array, k: int,
            sampler: Sampler, process: Optional[Callable] = None) -> tuple[mx.array, mx.array]:
    """Draft k tokens after `token` ([1]), whose target hidden predecessor is `hidden` [1, 1, H].
    `process(logits, drafted)` (logits processors) shapes each step's logits, given the drafts before it.

    Returns (tokens [k] int32, logits [k, V], as processed); lazy.
    """
    position = target_position(cache)
    kv = target.shared_kv(cache, drafter.sliding_span)
    tokens, logits = [], []
    last = token
    for _ in range(k):
        inputs = mx.concatenate([target.embed(last[None]), hidden], axis=-1)
        step_logits, hidden = drafter(inputs, position, kv)
        step_logits = step_logits[0, -1:]
        if process is not None:
            step_logits = process(step_logits, tokens)
        last = sampler(step_logits)
        tokens.append(last)
        logits.append(step_logits)
    return mx.concatenate(tokens).astype(mx.int32), mx.concatenate(logits)


def propose_rows(drafter: Drafter, target, caches: list, tokens: mx.array, hidden: mx.array, k: int,
                 draft: Callable[[mx.array], mx.array], process: Optional[Callable] = None) -> tuple[mx.array, mx.array]:
    """`propose` for B rows at their own positions (ragged caches, batch_cache.py): tokens [B], hidden
    [B, 1, H]; `draft` maps drafter logits [B, V] to proposals [B]; `process(logits, drafted)` as in
    `propose` (drafted: [B] arrays). Returns (drafts [B, k] int32, logits [B, k, V]); lazy. One batched
    drafter pass per draft step."""
    positions = caches[0].offset
    kv, masks = target.shared_kv_rows(caches, drafter.sliding_span)
    drafts, logits = [], []
    last = tokens
    for _ in range(k):
        inputs = mx.concatenate([target.embed(last[:, None]), hidden], axis=-1)
        step_logits, hidden = drafter(inputs, positions, kv, masks)
        step_logits = step_logits[:, -1]
        if process is not None:
            step_logits = process(step_logits, drafts)
        last = draft(step_logits)
        drafts.append(last)
        logits.append(step_logits)
    return mx.stack(drafts, axis=1).astype(mx.int32), mx.stack(logits, axis=1)


def target_position(cache: list) -> int:
    """Tokens the target has processed: the position of the next (last seen, unprocessed) token."""
    return cache[0].offset
