"""KV caches that own their rollback, sliding ones included after the window has wrapped.

mlx-lm's `RotatingKVCache` keeps a ring of exactly `sliding_window` keys and stops trimming once it
has wrapped (`is_trimmable()` turns false), which silently corrupts speculative decoding past the
window. `SlidingKVCache` instead keeps the newest `sliding_window + 1 + max_rollback` keys in a
linear buffer: enough for the target's own sliding attention (W keys per query), for the drafter's
(W + 1 keys, see models/gemma4_assistant.py), and for rollback.

The rollback guarantee (what `max_rollback` guards): right after an update that wrote n tokens, the
cache can forget up to n + max_rollback tokens exactly, at any length. The decoding loop needs
that: it rolls a verified block of k + 1 tokens back by at most k, and a generator closed mid-block
forgets the accepted tokens past the last one it yielded (at most k) plus the next queued block. A
rollback the buffer can no longer restore raises `RollbackError`; it never returns wrong keys.

Full-attention layers use mlx-lm's `KVCache`, whose `trim` is exact at any length; on MLX's CUDA
backend `BucketedKVCache`, which hands a verify block keys padded to a bucket (see there).
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
from mlx_lm.models.cache import KVCache

from .settings import MAX_DRAFT_TOKENS

VERIFY_ROWS = MAX_DRAFT_TOKENS + 1  # the longest verify block (the longest draft + the target's own token)


def verify_block(n: int) -> bool:
    """Whether an n-token update is a verify block: the read bucketed caches pad (MLX's CUDA backend,
    see BucketedKVCache); one-token decodes and longer prefill chunks are read exactly."""
    return 1 < n <= VERIFY_ROWS


def round_up(columns: int, step: int) -> int:
    return -(-columns // step) * step


class RollbackError(RuntimeError):
    """A cache was asked to forget more tokens than it can restore."""


class SlidingKVCache:
    """Sliding-window KV cache with exact rollback.

    Positions are absolute: `offset` is the number of tokens the cache has seen (after rollbacks),
    and the buffer holds the keys of positions [base, offset).
    """

    step = 256

    def __init__(self, sliding_window: int, max_rollback: int = 8, bucket: bool = False):
        self.window = int(sliding_window)
        self.max_rollback = int(max_rollback)
        # MLX's CUDA backend (see BucketedKVCache): until the window has filled, a verify block's keys
        # grow every step; padded to a multiple of `step` (masked), one attention graph serves many
        # steps. Past that, the block reads window + N - 1 keys every step: one graph already.
        self.bucket = bool(bucket)
        self.keep = self.window + 1 + self.max_rollback
        self.keys: Optional[mx.array] = None
        self.values: Optional[mx.array] = None
        self.offset = 0
        self.base = 0

    # -- what the target's attention sees ---------------------------------------------------
    def _first_visible(self) -> int:
        """Oldest position any query of the next update can attend to."""
        return max(0, self.offset - self.window + 1)

    def _padding(self, n: int) -> int:
        """Masked columns an n-token update returns after its keys (bucketing, until the window fills)."""
        if self.bucket and verify_block(n) and self._first_visible() == 0:
            return round_up(self.offset + n, self.step) - (self.offset + n)
        return 0

    def make_mask(self, N: int, window_size: Optional[int] = None, return_array: bool = False, **kwargs):
        if N == 1 and not return_array:
            return None  # one query: every returned key lies in its window
        start = self._first_visible()
        q = mx.arange(self.offset, self.offset + N)[:, None]
        k = mx.arange(start, self.offset + N + self._padding(N))[None]
        return (k <= q) & (k > q - self.window)

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        n = keys.shape[2]
        used = self.offset - self.base
        pad = self._padding(n)
        if self.keys is None:
            B, H, _, Dk = keys.shape
            capacity = max(self.keep, n + pad) + self.step
            self.keys = mx.zeros((B, H, capacity, Dk), keys.dtype)
            self.values = mx.zeros((B, H, capacity, values.shape[3]), values.dtype)
        elif used + n + pad > self.keys.shape[2]:
            # Drop keys older than the newest `keep` and make room (amortised: once per `step` tokens).
            drop = max(0, used - self.keep)
            capacity = max(self.keys.shape[2], used - drop + n + pad + self.step)
            grow = capacity - (used - drop)
            B, H, _, Dk = self.keys.shape
            self.keys = mx.concatenate([self.keys[..., drop:used, :], mx.zeros((B, H, grow, Dk), keys.dtype)], axis=2)
            self.values = mx.concatenate(
                [self.values[..., drop:used, :], mx.zeros((B, H, grow, self.values.shape[3]), values.dtype)], axis=2
            )
            self.base += drop
            used -= drop
        start = self._first_visible() - self.base
        self.keys[..., used : used + n, :] = keys
        self.values[..., used : used + n, :] = values
        self.offset += n
        end = self.offset - self.base + pad
        return self.keys[..., start:end, :], self.values[..., start:end, :]

    # -- rollback -------------------------------------------------------------------------------
    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        n = min(int(n), self.offset)
        if self.offset - n - self.base < min(self.offset - n, self.window + 1):
            raise RollbackError(
                f"cannot roll back {n} tokens: the sliding cache keeps {self.max_rollback} tokens of slack beyond "
                f"the last update (create it with max_rollback >= the draft length)"
            )
        self.offset -= n
        return n

    # -- what the drafter reads in place ----------------------------------------------------------
    def recent(self, n: int) -> tuple[mx.array, mx.array]:
        """Keys and values of the newest `n` positions (fewer at the start)."""
        end = self.offset - self.base
        start = max(0, end - n)
        return self.keys[..., start:end, :], self.values[..., start:end, :]

    # -- mlx-lm cache protocol ----------------------------------------------------------------------
    @property
    def state(self):
        end = self.offset - self.base
        return self.keys[..., :end, :], self.values[..., :end, :]

    @property
    def meta_state(self):
        return tuple(map(str, (self.window, self.max_rollback, self.offset, self.base)))

    def empty(self) -> bool:
        return self.keys is None

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes

    def size(self) -> int:
        return self.offset


class BucketedKVCache(KVCache):
    """mlx-lm's `KVCache` whose multi-token reads (a verify block: 2 to `max_rows` tokens, the longest
    block settings allow) see keys padded up to a multiple of `bucket`, with an array mask hiding the
    padding.

    Why: MLX's CUDA backend runs a causal attention of more than one query row in half precision
    through cuDNN, whose graph cache is keyed on the exact key length, and builds a new graph on the
    host inside eval. A verify's key length is new every step, so every step would build one. Padded,
    one graph serves `bucket` steps. The masked keys change nothing but the work (they get weight
    exp(-inf) = 0). One-token decodes and prefill chunks are read exactly as mlx-lm reads them.
    """

    bucket = KVCache.step
    max_rows = VERIFY_ROWS

    def _padded(self, n: int) -> int:
        return round_up(self.offset + n, self.bucket)

    def make_mask(self, N: int, window_size: Optional[int] = None, return_array: bool = False, **kwargs):
        if not verify_block(N) or window_size is not None:
            return super().make_mask(N, window_size=window_size, return_array=return_array, **kwargs)
        q = mx.arange(self.offset, self.offset + N)[:, None]
        return mx.arange(self._padded(N))[None] <= q

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        n = keys.shape[2]
        if not verify_block(n):
            return super().update_and_fetch(keys, values)
        prev, padded = self.offset, self._padded(n)
        if self.keys is None or padded > self.keys.shape[2]:
            B, H, _, Dk = keys.shape
            new_k = mx.zeros((B, H, padded - prev, Dk), keys.dtype)
            new_v = mx.zeros((B, H, padded - prev, values.shape[3]), values.dtype)
            if self.keys is None:
                self.keys, self.values = new_k, new_v
            else:
                self.keys = mx.concatenate([self.keys[..., :prev, :], new_k], axis=2)
                self.values = mx.concatenate([self.values[..., :prev, :], new_v], axis=2)
        self.offset += n
        self.keys[..., prev : self.offset, :] = keys
        self.values[..., prev : self.offset, :] = values
        return self.keys[..., :padded, :], self.values[..., :padded, :]


def full_kv(cache: KVCache) -> tuple[mx.array, mx.array]:
    """All valid keys and values of a full-attention cache, read in place."""
    return cache.keys[..., : cache.offset, :], cache.values[..., : cache.offset, :]


def rollback_slack(caches: list) -> float:
    """The most drafts a block may hold for these caches to roll it back (inf: only full-attention caches)."""
    return min((c.max_rollback for c in caches if isinstance(c, SlidingKVCache)), default=float("inf"))


def trim_all(caches: list, n: int) -> None:
    """Roll every cache back by n tokens (exact, or RollbackError)."""
    if n <= 0:
        return
    for c in caches:
        if c.trim(n) != n:
            raise RollbackError(f"cache {type(c).__name__} trimmed fewer than {n} tokens")
