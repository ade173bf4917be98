"""A prompt cache across requests: the target's KV of earlier requests, reused for the longest common prefix.

A multi-turn client resends the whole conversation each turn. The batch engine keeps snapshots of
batch-1 caches (`Snapshot`: per cached layer the keys and values of the positions it holds, and the
tokens they encode): one when a request's prompt has been read, one when it finishes (prompt + reply,
as far as the target read it). A new request takes the snapshot sharing the longest prefix with its
prompt, rolled back to that prefix, and prefills only the rest; the output is what a full prefill
gives (the same keys, computed by the same forwards).

Rolling a snapshot back is exact for full-attention layers at any depth; a sliding layer keeps only
the newest window + slack keys, so a snapshot serves a prefix only if every sliding layer still holds
the window before it (`usable`); otherwise a shorter snapshot (the prompt-end one) or none serves.
Snapshots are copies (never written again), kept in least-recently-used order within `max_bytes`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import mlx.core as mx
from .cache import SlidingKVCache


@dataclass
class Snapshot:
    tokens: tuple
    layers: list  # per cached layer: (keys [1, H, n, D], values, base): positions [base, base + n)
    nbytes: int


def layer_state(cache, length: int) -> tuple[mx.array, mx.array, int]:
    """A batch-1 cache's keys, values and base for its first `length` positions (as far as it holds them)."""
    if isinstance(cache, SlidingKVCache):
        keys, values = cache.state
        end = length - cache.base
        return keys[..., :end, :], values[..., :end, :], cache.base
    return cache.keys[..., :length, :], cache.values[..., :length, :], 0


def common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PromptCache:
    """Snapshots of one target's caches, by the tokens they hold; least recently used go first past
    `max_bytes`. `fetch` gives fresh caches for the longest usable prefix of a prompt."""

    def __init__(self, target, max_bytes: int):
        self.target = target
        self.window = target.sliding_window
        self.max_bytes = int(max_bytes)
        self.entries: OrderedDict[tuple, Snapshot] = OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = 0
        self.sliding = [isinstance(c, SlidingKVCache) for c in target.make_cache(max_rollback=1)]

    def __len__(self) -> int:
        return len(self.entries)

    # -- reading ----------------------------------------------------------------------------------
    def usable(self, snap: Snapshot, prompt) -> int:
        """How many leading tokens of `prompt` this snapshot can supply (at least one token is left to
        prefill: its logits give the first new token). 0: none."""
        u = min(common_prefix(snap.tokens, prompt), len(prompt) - 1)
        # a sliding layer must still hold the window before the prefix (rolled-out keys are gone)
        if u > 0 and all(not sliding or u - base >= min(u, self.window + 1) for sliding, (_, _, base) in zip(self.sliding, snap.layers)):
            return u
        return 0

    def fetch(self, prompt, max_rollback: int) -> tuple[Optional[list], int]:
        """(caches holding the longest usable prefix of `prompt`, its length), or (None, 0)."""
        best, length = None, 0
        for snap in self.entries.values():
            u = self.usable(snap, prompt)
            if u > length:
                best, length = snap, u
        if best is None:
            self.misses += 1
            return None, 0
        self.hits += 1
        self.entries.move_to_end(best.tokens)
        caches = self.target.make_cache(max_rollback=max_rollback)
        for cache, (keys, values, base) in zip(caches, best.layers):
            end = length - base
            cache.keys, cache.values = keys[..., :end, :], values[..., :end, :]  # new arrays: the snapshot stays as it is
            cache.offset = length
            if isinstance(cache, SlidingKVCache):
                cache.base = base
        return caches, length

    # -- writing ----------------------------------------------------------------------------------
    def insert(self, tokens, layers: list) -> None:
        """Keep a snapshot of the positions `tokens` encode (`layers`: per cached layer keys, values, base)."""
        tokens = tuple(int(t) for t in tokens)
        if len(tokens) < 2 or self.max_bytes <= 0:
            return
        bases = [base for _, _, base in layers]
        held = self.entries.get(tokens)
        if held is not None and all(ob <= b for (_, _, ob), b in zip(held.layers, bases)):  # it serves as well: keep it
            self.entries.move_to_end(tokens)
            return
        nbytes = sum(k.nbytes + v.nbytes for k, v, _ in layers)  # what the compact copies will take
        if nbytes > self.max_bytes:
            return
        for old in list(self.entries.values()):  # one this snapshot serves as well: any prefix the old one could
            if old.tokens == tokens[: len(old.tokens)] and all(b <= ob for b, (_, _, ob) in zip(bases, old.layers)):
                self._drop(old.tokens)
        layers = [(mx.contiguous(k), mx.contiguous(v), base) for k, v, base in layers]  # compact copies
        mx.async_eval([a for k, v, _ in layers for a in (k, v)])
        self.entries[tokens] = Snapshot(tokens, layers, nbytes)
        self.nbytes += nbytes
        while self.nbytes > self.max_bytes:
            self._drop(next(iter(self.entries)))

    def insert_caches(self, tokens, caches: list) -> None:
        """Snapshot batch-1 caches holding (at least) `tokens`."""
        self.insert(tokens, [layer_state(c, len(tokens)) for c in caches])

    def _drop(self, key) -> None:
        self.nbytes -= self.entries.pop(key).nbytes

    def clear(self) -> None:
        self.entries.clear()
        self.nbytes = 0
