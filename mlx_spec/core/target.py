"""Thin adapter over an mlx-lm model: what the speculative loop needs from the target.

Gemma 4 (gemma4 / gemma4_text) is the product's target; any mlx-lm decoder whose inner model maps
(tokens, cache) to the final-normed hidden state also works (llama, gemma3_text, ...) with a
drafter trained for it (models/mtp_drafter.py).

- `forward(tokens, cache)` returns logits and the final-normed hidden state (the drafter's input),
  computed exactly as mlx-lm's `Model.__call__` computes logits (tied head, final softcapping).
- `make_cache()` builds rollback-able caches: mlx-lm's `KVCache` for full layers (on MLX's CUDA
  backend our `BucketedKVCache`, see cache.py) and our `SlidingKVCache` for sliding layers, one per
  non-KV-shared layer as mlx-lm expects.
- `make_ragged_cache()` the same for B rows at their own positions (batch_cache.py).
- `shared_kv(cache, span)` reads, in place, the KV of the producer layers the drafter attends to
  (the last non-shared layer of each attention type).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import KVCache
from mlx_lm.models.gemma4_text import logit_softcap

from .batch_cache import RaggedKVCache
from .cache import BucketedKVCache, SlidingKVCache, full_kv
from .model_config import FULL, SLIDING, kv_producer_layers
from .moe import ExpertTracker


class Target:
    def __init__(self, module: nn.Module, text_config: dict, track_experts: bool = True, bucket_keys: bool | None = None):
        self.module = module
        # Verify blocks read keys padded to a bucket where attention graphs are built per key length.
        self.bucket_keys = cuda_backend() if bucket_keys is None else bool(bucket_keys)
        self.lm = getattr(module, "language_model", module)  # gemma4 wraps gemma4_text
        self.text_config = text_config
        args = self.lm.args
        self.layer_types = layer_types_of(self.lm)
        self.num_cached_layers = args.num_hidden_layers - int(getattr(args, "num_kv_shared_layers", 0) or 0)
        self.sliding_window = getattr(args, "sliding_window", None)
        self.producers = kv_producer_layers({"layer_types": self.layer_types, "num_kv_shared_layers": len(self.layer_types) - self.num_cached_layers})
        self.vocab_size = args.vocab_size
        self.hidden_size = args.hidden_size
        self.max_context = int(text_config.get("max_position_embeddings") or getattr(args, "max_position_embeddings", None) or 131072)
        self.embed_scale = embed_scale_of(self.lm)
        # MoE targets: count the experts every forward loads (and group verify tokens by expert).
        self.moe = ExpertTracker.attach(self) if track_experts else None

    def make_cache(self, max_rollback: int = 8) -> list:
        """Caches that can roll back a rejected block of up to `max_rollback` drafts (see cache.py)."""
        full = BucketedKVCache if self.bucket_keys else KVCache
        return [
            full() if self.layer_types[i] == FULL else SlidingKVCache(self.sliding_window, max_rollback, bucket=self.bucket_keys)
            for i in range(self.num_cached_layers)
        ]

    def make_ragged_cache(self, max_rollback: int = 8) -> list:
        """Caches for B sequences at their own positions (batch_cache.py), one per cached layer."""
        return [
            RaggedKVCache(None if self.layer_types[i] == FULL else self.sliding_window, max_rollback, bucket=self.bucket_keys)
            for i in range(self.num_cached_layers)
        ]

    def embed(self, tokens: mx.array) -> mx.array:
        """Scaled token embeddings, as the target's first layer (and the drafter) see them."""
        return self.lm.model.embed_tokens(tokens) * self.embed_scale

    def logits(self, hidden: mx.array) -> mx.array:
        """As the mlx-lm model computes them: tied or separate head, final softcapping if any."""
        out = project_to_vocab(self.lm, hidden)
        if getattr(self.lm, "final_logit_softcapping", None) is not None:
            out = logit_softcap(self.lm.final_logit_softcapping, out)
        return out

    def forward(self, tokens: mx.array, cache: list, last_only: bool = False, logits: bool = True):
        """tokens [B, L] -> (logits [B, L or 1, V], hidden [B, L or 1, H]); updates the cache.
        With logits=False (prefill chunks) returns (None, hidden)."""
        if self.moe is None:
            hidden = self.lm.model(tokens, cache=cache)
        else:
            with self.moe.recording(tokens.size):
                hidden = self.lm.model(tokens, cache=cache)
        if last_only:
            hidden = hidden[:, -1:]
        return (self.logits(hidden) if logits else None), hidden

    def shared_kv(self, cache: list, sliding_span: int) -> dict[str, tuple[mx.array, mx.array]]:
        """The producer layers' KV the drafter reads: all full keys, the newest `sliding_span` sliding keys."""
        kv = {}
        if FULL in self.producers:
            kv[FULL] = full_kv(cache[self.producers[FULL]])
        if SLIDING in self.producers:
            kv[SLIDING] = cache[self.producers[SLIDING]].recent(sliding_span)
        return kv

    def shared_kv_rows(self, caches: list, sliding_span: int) -> tuple[dict, dict]:
        """As `shared_kv` for ragged batch caches: the producers' KV and, per layer type, the mask
        [B, 1, 1, S] of what each row's draft query attends to."""
        kv, masks = {}, {}
        for kind, span in ((FULL, None), (SLIDING, sliding_span)):
            if kind in self.producers:
                keys, values, masks[kind] = caches[self.producers[kind]].visible(span)
                kv[kind] = (keys, values)
        return kv, masks


def output_head(lm: nn.Module) -> nn.Module:
    """The module holding the output embedding: the tied token table, or the separate lm_head."""
    tied = getattr(lm, "tie_word_embeddings", getattr(lm.args, "tie_word_embeddings", True))
    return lm.model.embed_tokens if tied or "lm_head" not in lm else lm.lm_head


def project_to_vocab(lm: nn.Module, hidden: mx.array) -> mx.array:
    """hidden @ E^T through the target's output embedding (before any softcapping)."""
    head = output_head(lm)
    return head.as_linear(hidden) if isinstance(head, (nn.Embedding, nn.QuantizedEmbedding)) else head(hidden)


def scatter_to_vocab(scores: mx.array, ids: mx.array, vocab: int) -> mx.array:
    """Logits over a restricted head (`scores` [..., N] for token ids `ids` [N]) as full-vocabulary
    logits [..., vocab]: -inf (drafter probability 0) outside the head."""
    out = mx.full((*scores.shape[:-1], vocab), -mx.inf, dtype=scores.dtype)
    return mx.put_along_axis(out, mx.broadcast_to(ids, scores.shape), scores, axis=-1)


def layer_types_of(lm: nn.Module) -> list[str]:
    """Per layer: FULL or SLIDING attention (config's layer_types, Gemma 3's is_sliding, else all full)."""
    types = getattr(lm.args, "layer_types", None)
    if types:
        return list(types)
    return [SLIDING if getattr(layer.self_attn, "is_sliding", False) else FULL for layer in lm.model.layers]


def embed_scale_of(lm: nn.Module):
    """The factor the model applies to token embeddings before its first layer."""
    scale = getattr(lm.model, "embed_scale", None)
    if scale is not None:
        return scale
    if str(getattr(lm.args, "model_type", "")).startswith("gemma"):  # Gemma 1-3 scale inside __call__
        return mx.array(lm.args.hidden_size**0.5, mx.bfloat16).astype(mx.float32)
    return 1.0


def cuda_backend() -> bool:
    """Whether MLX runs on its CUDA backend (where cache.BucketedKVCache pays)."""
    cuda = getattr(mx, "cuda", None)
    return bool(cuda is not None and cuda.is_available())
