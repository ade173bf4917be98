"""Thin adapter over mlx-lm's Gemma 4 model: what the speculative loop needs from the target.

- `forward(tokens, cache)` returns logits and the final-normed hidden state (the drafter's input),
  computed exactly as mlx-lm's `Model.__call__` computes logits (tied head, final softcapping).
- `make_cache()` builds rollback-able caches: mlx-lm's `KVCache` for full layers and our
  `SlidingKVCache` for sliding layers, one per non-KV-shared layer as mlx-lm expects.
- `shared_kv(cache, span)` reads, in place, the KV of the producer layers the drafter attends to
  (the last non-shared full and sliding layer).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import KVCache
from mlx_lm.models.gemma4_text import logit_softcap

from .cache import SlidingKVCache, full_kv
from .model_config import FULL, SLIDING, kv_producer_layers
from .moe import ExpertTracker


class Target:
    def __init__(self, module: nn.Module, text_config: dict, track_experts: bool = True):
        self.module = module
        self.lm = getattr(module, "language_model", module)  # gemma4 wraps gemma4_text
        self.text_config = text_config
        args = self.lm.args
        self.layer_types = list(args.layer_types)
        self.num_cached_layers = args.num_hidden_layers - args.num_kv_shared_layers
        self.sliding_window = args.sliding_window
        self.producers = kv_producer_layers(text_config)
        self.vocab_size = args.vocab_size
        self.hidden_size = args.hidden_size
        self.max_context = int(text_config.get("max_position_embeddings") or 131072)
        # MoE targets: count the experts every forward loads (and group verify tokens by expert).
        self.moe = ExpertTracker.attach(self) if track_experts else None

    def make_cache(self, max_rollback: int = 16) -> list:
        return [
            KVCache() if self.layer_types[i] == FULL else SlidingKVCache(self.sliding_window, max_rollback)
            for i in range(self.num_cached_layers)
        ]

    def embed(self, tokens: mx.array) -> mx.array:
        """Scaled token embeddings, as the target's first layer (and the drafter) see them."""
        return self.lm.model.embed_tokens(tokens) * self.lm.model.embed_scale

    def logits(self, hidden: mx.array) -> mx.array:
        if self.lm.tie_word_embeddings:
            out = self.lm.model.embed_tokens.as_linear(hidden)
        else:
            out = self.lm.lm_head(hidden)
        if self.lm.final_logit_softcapping is not None:
            out = logit_softcap(self.lm.final_logit_softcapping, out)
        return out

    def forward(self, tokens: mx.array, cache: list, last_only: bool = False, logits: bool = True):
        """tokens [B, L] -> (logits [B, L or 1, V], hidden [B, L or 1, H]); updates the cache.
        With logits=False (prefill chunks) returns (None, hidden)."""
        hidden = self.lm.model(tokens, cache=cache)
        if self.moe is not None:
            self.moe.end_forward(tokens.shape[-1])
        if last_only:
            hidden = hidden[:, -1:]
        return (self.logits(hidden) if logits else None), hidden

    def shared_kv(self, cache: list, sliding_span: int) -> dict[str, tuple[mx.array, mx.array]]:
        """The producer layers' KV the drafter reads: all full keys, the newest `sliding_span` sliding keys."""
        return {
            FULL: full_kv(cache[self.producers[FULL]]),
            SLIDING: cache[self.producers[SLIDING]].recent(sliding_span),
        }
