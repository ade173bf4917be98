"""A KV cache for B sequences at different positions, each rolling back on its own.

One `RaggedKVCache` per cached target layer holds a [B, heads, capacity, dim] buffer in which column
c of row b is the key of position `bases[b] + c`, and row b has seen `lengths[b]` positions. Rows do
not share a position: prompts of different lengths, rows joining mid-run and per-row acceptance all
leave them apart, and nothing is padded to the longest row's acceptance.

- update: N new keys per row are scattered at each row's own next columns (one `put_along_axis`);
  the layer attends to columns [start, end) covering every row's visible keys, and `make_mask` gives
  each row exactly its own (causal, and for sliding layers within the window).
- rollback: `trim_rows(counts)` forgets `counts[b]` positions of row b: its length goes back, nothing
  is rebuilt (a rejected draft's keys are masked out, then overwritten by the next write).
- sliding layers keep, per row, the newest `window + 1 + max_rollback` keys beyond the last update
  (the same guarantee as `cache.SlidingKVCache`: after an n-token update a row can forget up to
  n + max_rollback tokens exactly); older columns are dropped row by row when the buffer fills, so
  memory follows the window, not the longest row's history.
- rows join (`add_rows`, from a batch-1 prefill's own caches) and leave (`keep_rows`) between steps.
- `bucket` (MLX's CUDA backend): a verify update's span starts and ends at multiples of `step` (the
  extra columns are masked), as `cache.BucketedKVCache` pads a single sequence's keys: one cuDNN
  attention graph serves many steps instead of one per step (rows at their own positions move a
  sliding span's length every step). The buffer's width is kept a multiple of `step` for that.

Lengths live on the host (the engine reads acceptance back once per step anyway), so building the
next step's masks and write positions needs no device round trip.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx

from .cache import RollbackError, SlidingKVCache, round_up, verify_block


class RaggedKVCache:
    step = 256

    def __init__(self, window: Optional[int] = None, max_rollback: int = 8, bucket: bool = False):
        self.window = window  # None: full attention
        self.bucket = bool(bucket)
        self.max_rollback = int(max_rollback)
        self.keep = None if window is None else window + 1 + self.max_rollback
        self.keys: Optional[mx.array] = None
        self.values: Optional[mx.array] = None
        self.lengths: list[int] = []
        self.bases: list[int] = []

    # -- rows ---------------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    @property
    def offset(self) -> mx.array:
        """Per-row positions of the next token (RoPE offsets), as the models read `cache.offset`."""
        return mx.array(self.lengths, dtype=mx.int32)

    def _used(self) -> list[int]:
        return [n - b for n, b in zip(self.lengths, self.bases)]

    def add_rows(self, caches: list) -> None:
        """Append rows from batch-1 caches of this layer (mlx-lm's KVCache or our SlidingKVCache)."""
        rows = []
        for c in caches:
            if isinstance(c, SlidingKVCache):
                keys, values = c.state
                rows.append((keys, values, c.offset, c.base))
            else:
                rows.append((c.keys[..., : c.offset, :], c.values[..., : c.offset, :], c.offset, 0))
        width = self._round(max([self.keys.shape[2] if self.keys is not None else 0] + [r[0].shape[2] + self.step for r in rows]))
        parts_k, parts_v = [], []
        if self.keys is not None:
            parts_k.append(_pad(self.keys, width))
            parts_v.append(_pad(self.values, width))
        for keys, values, _, _ in rows:
            parts_k.append(_pad(keys, width))
            parts_v.append(_pad(values, width))
        self.keys = mx.concatenate(parts_k, axis=0)
        self.values = mx.concatenate(parts_v, axis=0)
        self.lengths += [r[2] for r in rows]
        self.bases += [r[3] for r in rows]

    def keep_rows(self, rows: list[int]) -> None:
        """Keep only these rows (in this order): finished rows free their slots."""
        self.lengths = [self.lengths[i] for i in rows]
        self.bases = [self.bases[i] for i in rows]
        if not rows:
            self.keys = self.values = None
        elif self.keys is not None:
            index = mx.array(rows, dtype=mx.int32)
            self.keys, self.values = self.keys[index], self.values[index]

    def row_state(self, b: int, length: int) -> tuple[mx.array, mx.array, int]:
        """Row b's keys [1, H, n, D], values and base for its positions [base, length) (a prompt-cache
        snapshot, prompt_cache.py); `length` at most the row's own."""
        end = length - self.bases[b]
        return self.keys[b : b + 1, :, :end, :], self.values[b : b + 1, :, :end, :], self.bases[b]

    # -- what one forward sees --------------------------------------------------------------------
    def _span(self, N: int) -> tuple[int, int]:
        """Columns [start, end) the next N-token update returns: every row's visible keys."""
        used = self._used()
        end = max(u + N for u in used)
        start = 0 if self.window is None else max(0, min(max(0, n - self.window + 1) - b for n, b in zip(self.lengths, self.bases)))
        if self.bucket and verify_block(N):  # columns outside a row's keys are masked
            return start - start % self.step, self._round(end)
        return start, end

    def make_mask(self, N: int, window_size: Optional[int] = None, return_array: bool = False, **kwargs) -> mx.array:
        # The model asks for the mask before the update: make room first (it may drop old columns,
        # moving the span); every cache of this layer type then makes the same room at its update.
        self._make_room(N)
        start, end = self._span(N)
        columns = mx.arange(start, end)[None, None, :]  # [1, 1, S]
        positions = columns + mx.array(self.bases, dtype=mx.int32)[:, None, None]  # [B, 1, S]
        queries = mx.array(self.lengths, dtype=mx.int32)[:, None, None] + mx.arange(N)[None, :, None]  # [B, N, 1]
        mask = positions <= queries
        if self.window is not None:
            mask = mask & (positions > queries - self.window)
        return mask[:, None]  # [B, 1, N, S]

    def _make_room(self, N: int) -> None:
        used = self._used()
        if max(used) + N <= self.keys.shape[2]:
            return
        if self.keep is not None:  # drop, row by row, keys no query or rollback can need any more
            drops = [max(0, u - self.keep) for u in used]
            if any(drops):
                index = (mx.arange(self.keys.shape[2])[None] + mx.array(drops)[:, None])
                index = mx.minimum(index, self.keys.shape[2] - 1)[:, None, :, None]
                self.keys = mx.take_along_axis(self.keys, index, axis=2)
                self.values = mx.take_along_axis(self.values, index, axis=2)
                self.bases = [b + d for b, d in zip(self.bases, drops)]
                used = self._used()
        width = self._round(max(self.keys.shape[2], max(used) + N + self.step))
        self.keys, self.values = _pad(self.keys, width), _pad(self.values, width)

    def _round(self, columns: int) -> int:
        """A multiple of `step` (the buffer's width, and a bucketed span's end) or, unbucketed, as is."""
        return round_up(columns, self.step) if self.bucket else columns

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        N = keys.shape[2]
        self._make_room(N)
        columns = mx.array(self._used(), dtype=mx.int32)[:, None] + mx.arange(N)[None]  # [B, N]
        index = columns[:, None, :, None]
        start, end = self._span(N)
        self.keys = mx.put_along_axis(self.keys, index, keys.astype(self.keys.dtype), axis=2)
        self.values = mx.put_along_axis(self.values, index, values.astype(self.values.dtype), axis=2)
        self.lengths = [n + N for n in self.lengths]
        return self.keys[..., start:end, :], self.values[..., start:end, :]

    # -- rollback ----------------------------------------------------------------------------------
    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        """Every row forgets n positions (mlx-lm's protocol)."""
        self.trim_rows([n] * self.batch_size)
        return n

    def trim_rows(self, counts: list[int]) -> None:
        """Row b forgets its newest counts[b] positions, exactly (or RollbackError)."""
        for b, n in enumerate(counts):
            length = self.lengths[b] - n
            if n < 0 or length < 0:
                raise RollbackError(f"cannot roll row {b} back by {n} of its {self.lengths[b]} positions")
            if self.window is not None and length - self.bases[b] < min(length, self.window + 1):
                raise RollbackError(f"cannot roll row {b} back by {n}: the sliding cache keeps {self.max_rollback} tokens of slack")
            self.lengths[b] = length

    # -- what the drafter reads in place ---------------------------------------------------------
    def visible(self, span: Optional[int] = None) -> tuple[mx.array, mx.array, mx.array]:
        """Keys, values and mask [B, 1, 1, S] of every row's seen positions (the newest `span` of them
        if given): what a query standing after each row's last seen position attends to."""
        used = self._used()
        end = max(used)
        start = 0 if span is None else max(0, min(u - span for u in used))
        positions = mx.arange(start, end)[None] + mx.array(self.bases, dtype=mx.int32)[:, None]  # [B, S]
        lengths = mx.array(self.lengths, dtype=mx.int32)[:, None]
        mask = positions < lengths
        if span is not None:
            mask = mask & (positions >= lengths - span)
        return self.keys[..., start:end, :], self.values[..., start:end, :], mask[:, None, None]

    # -- mlx-lm cache protocol ----------------------------------------------------------------------
    def empty(self) -> bool:
        return self.keys is None

    @property
    def state(self):
        return self.keys, self.values

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes

    def size(self) -> int:
        return max(self.lengths, default=0)


def _pad(x: mx.array, width: int) -> mx.array:
    """x along axis 2 padded with zeros (or cut) to `width` columns."""
    have = x.shape[2]
    if have >= width:
        return x[..., :width, :]
    pad = mx.zeros((*x.shape[:2], width - have, x.shape[3]), x.dtype)
    return mx.concatenate([x, pad], axis=2)
