"""SlidingKVCache: exact attention and exact rollback far past the window (the classic peer bug)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.base import scaled_dot_product_attention
from mlx_lm.models.cache import KVCache, RotatingKVCache, trim_prompt_cache

from mlx_spec.core.cache import BucketedKVCache, RollbackError, SlidingKVCache

W = 8


def reference_attention(q, keys, values, positions_q, positions_k, window=W):
    """Windowed causal attention computed from the full history."""
    mask = (positions_k[None] <= positions_q[:, None]) & (positions_k[None] > positions_q[:, None] - window)
    return mx.fast.scaled_dot_product_attention(q, keys, values, scale=1.0, mask=mask)


@pytest.mark.parametrize("window,bucket", ((W, False), (W, True), (300, True)))
def test_matches_full_history_through_random_updates_and_rollbacks(window, bucket):
    """Bucketed (MLX's CUDA backend): until the window fills, verify blocks read keys padded to a
    multiple of 256 (masked); a window of 300 keeps that up for ~100 steps, then reads are exact."""
    rng = np.random.RandomState(0)
    cache = SlidingKVCache(window, max_rollback=8, bucket=bucket)
    history_k, history_v = [], []  # the "true" accepted sequence
    padded = 0
    for step in range(120 if window == W else 240):  # ~15 windows, or across the filling of a long one
        n = int(rng.randint(1, 9))
        k = mx.array(rng.standard_normal((1, 2, n, 4)).astype(np.float32))
        v = mx.array(rng.standard_normal((1, 2, n, 4)).astype(np.float32))
        q = mx.array(rng.standard_normal((1, 2, n, 4)).astype(np.float32))
        mask = cache.make_mask(n, window_size=window)
        start = cache.offset
        keys, values = cache.update_and_fetch(k, v)
        if bucket and n > 1 and start + n <= window:
            assert keys.shape[2] % 256 == 0
            padded += 1
        out = scaled_dot_product_attention(q, keys, values, cache=cache, scale=1.0, mask=mask)
        all_k = mx.concatenate(history_k + [k], axis=2)
        all_v = mx.concatenate(history_v + [v], axis=2)
        ref = reference_attention(q, all_k, all_v, mx.arange(start, start + n), mx.arange(all_k.shape[2]), window)
        assert float(mx.abs(out - ref).max()) < 1e-5, step
        keep = int(rng.randint(1, n + 1))  # accept a prefix, roll back the rest
        cache.trim(n - keep)
        history_k.append(k[:, :, :keep])
        history_v.append(v[:, :, :keep])
        assert cache.offset == sum(h.shape[2] for h in history_k)
        # what the drafter reads: the newest W + 1 accepted keys
        recent_k, _ = cache.recent(window + 1)
        truth = mx.concatenate(history_k, axis=2)[:, :, -(window + 1):]
        assert mx.array_equal(recent_k, truth)
    assert cache.offset > window + 100 and (padded > 20 or window == W)


def test_bucketed_cache_pads_verify_keys_and_attends_exactly():
    """Verify blocks read keys padded to a multiple of the bucket (one cuDNN graph per bucket on CUDA),
    masked so that attention equals full causal attention over the true history, through rollbacks."""
    rng = np.random.RandomState(1)
    cache = BucketedKVCache()
    history_k, history_v = [], []
    lengths = set()
    for step in range(150):
        n = int(rng.choice([1, 1, 2, 5, 9, 16, 33, 34, 40]))  # decodes, verify blocks, prefill-sized chunks
        k, v, q = (mx.array(rng.standard_normal((1, 2, n, 4)).astype(np.float32)) for _ in range(3))
        mask = cache.make_mask(n, return_array=False)
        start = cache.offset
        keys, values = cache.update_and_fetch(k, v)
        if 1 < n <= BucketedKVCache.max_rows:
            assert keys.shape[2] % BucketedKVCache.bucket == 0 and keys.shape[2] >= cache.offset
            lengths.add(keys.shape[2])
        else:
            assert keys.shape[2] == cache.offset  # mlx-lm's exact read
        out = scaled_dot_product_attention(q, keys, values, cache=cache, scale=1.0, mask=mask)
        all_k, all_v = mx.concatenate(history_k + [k], axis=2), mx.concatenate(history_v + [v], axis=2)
        positions = mx.arange(all_k.shape[2])
        ref = mx.fast.scaled_dot_product_attention(q, all_k, all_v, scale=1.0, mask=positions[None] <= mx.arange(start, start + n)[:, None])
        assert float(mx.abs(out - ref).max()) < 1e-5, step
        keep = int(rng.randint(1, n + 1))
        cache.trim(n - keep)
        history_k.append(k[:, :, :keep])
        history_v.append(v[:, :, :keep])
    assert cache.offset > 2 * BucketedKVCache.bucket and len(lengths) >= 2  # crossed buckets, stale keys past offset masked


def test_rollback_beyond_slack_raises():
    cache = SlidingKVCache(W, max_rollback=2)
    for _ in range(600):  # past several compactions of the buffer
        cache.update_and_fetch(mx.zeros((1, 1, 1, 4)), mx.zeros((1, 1, 1, 4)))
    assert cache.base > 0
    held = cache.offset - cache.base
    with pytest.raises(RollbackError):
        cache.trim(held - W)  # would leave fewer than W + 1 keys the drafter and target need
    assert cache.trim(2) == 2


def test_mlx_lm_rotating_cache_stops_trimming_after_wrap():
    """Why we do not use mlx-lm's RotatingKVCache: past the window, trim silently does nothing."""
    caches = [RotatingKVCache(max_size=W), KVCache()]
    for _ in range(3 * W):
        for c in caches:
            c.update_and_fetch(mx.zeros((1, 1, 1, 4)), mx.zeros((1, 1, 1, 4)))
    assert trim_prompt_cache(caches, 3) == 0  # silently not rolled back
    ours = [SlidingKVCache(W), KVCache()]
    for _ in range(3 * W):
        for c in ours:
            c.update_and_fetch(mx.zeros((1, 1, 1, 4)), mx.zeros((1, 1, 1, 4)))
    assert trim_prompt_cache(ours, 3) == 3 and ours[0].offset == 3 * W - 3


@pytest.mark.parametrize("window", (None, 8, 300))
def test_bucketed_ragged_cache_attends_as_the_exact_one(window):
    """Batched rows at their own positions, random verify blocks and per-row rollbacks: the bucketed
    cache (spans on multiples of 256, the rest masked) gives the exact cache's attention, row by row."""
    from mlx_spec.core.batch_cache import RaggedKVCache

    rng = np.random.RandomState(2)
    caches = [RaggedKVCache(window, max_rollback=8, bucket=b) for b in (False, True)]
    rows = []
    for length in (5, 40, 300):
        c = SlidingKVCache(window, max_rollback=8) if window else KVCache()
        c.update_and_fetch(*(mx.array(rng.standard_normal((1, 2, length, 4)).astype(np.float32)) for _ in range(2)))
        rows.append(c)
    for cache in caches:
        cache.add_rows(rows)
    spans = set()
    for step in range(80):
        n = int(rng.choice([1, 2, 4, 9]))
        k, v, q = (mx.array(rng.standard_normal((3, 2, n, 4)).astype(np.float32)) for _ in range(3))
        outs = []
        for cache in caches:
            mask = cache.make_mask(n)
            keys, values = cache.update_and_fetch(k, v)
            outs.append(scaled_dot_product_attention(q, keys, values, cache=None, scale=1.0, mask=mask))
            if cache.bucket and n > 1:
                spans.add(keys.shape[2])
                assert keys.shape[2] % 256 == 0
        assert float(mx.abs(outs[0] - outs[1]).max()) < 1e-5, step
        trims = [int(rng.randint(0, n)) for _ in range(3)]
        for cache in caches:
            cache.trim_rows(trims)
    assert spans


def test_bucketed_ragged_span_ends_on_a_bucket_and_masks_the_rest():
    """Batched verify (full attention): the span ends at a multiple of 256, every row sees exactly
    its own causal keys, and one-token decodes keep the exact span."""
    from mlx_spec.core.batch_cache import RaggedKVCache

    ragged = RaggedKVCache(None, bucket=True)
    rows = []
    for length in (5, 300):
        c = KVCache()
        c.update_and_fetch(mx.ones((1, 1, length, 4)), mx.ones((1, 1, length, 4)))
        rows.append(c)
    ragged.add_rows(rows)
    assert ragged.keys.shape[2] % 256 == 0
    mask = ragged.make_mask(3)
    keys, _ = ragged.update_and_fetch(mx.zeros((2, 1, 3, 4)), mx.zeros((2, 1, 3, 4)))
    assert keys.shape[2] == 512 and mask.shape == (2, 1, 3, 512)
    assert mask[0, 0].sum(axis=-1).tolist() == [6, 7, 8] and mask[1, 0].sum(axis=-1).tolist() == [301, 302, 303]
    ragged.trim_rows([2, 2])
    assert ragged.make_mask(1).shape[-1] == 302 == ragged.update_and_fetch(mx.zeros((2, 1, 1, 4)), mx.zeros((2, 1, 1, 4)))[0].shape[2]
