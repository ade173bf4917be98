"""Tabular stand-ins for a target and a drafter, small enough to enumerate, run through the real loop.

The target is a second-order Markov chain over a vocabulary of V tokens: logits for the next token
depend on the last two. It implements the parts of `mlx_spec.core.target.Target` the loop uses (caches
with offset/trim, forward, embed, shared_kv). Its "hidden state" at a position is the one-hot of the
token there and its embedding is a one-hot, so a drafter reading [embed(last) ; hidden that
predicted it] knows the last two tokens. Drafters:
- `TabularDrafter(table)`: first-order q(next | last) from a table;
- `TabularDrafter(target=...)`: exactly the target's distribution (it reads both context tokens);
each returns one-hot of its input token as the next hidden state, as the MTP drafter feeds itself.
"""

from __future__ import annotations

import itertools

import mlx.core as mx
import numpy as np


class HistoryCache:
    def __init__(self):
        self.tokens: list[int] = []

    @property
    def offset(self) -> int:
        return len(self.tokens)

    def trim(self, n: int) -> int:
        del self.tokens[len(self.tokens) - n:]
        return n


class TabularTarget:
    def __init__(self, vocab: int, seed: int = 0, scale: float = 2.0):
        rng = np.random.RandomState(seed)
        self.vocab_size = self.hidden_size = vocab
        self.table = (rng.standard_normal((vocab, vocab, vocab)) * scale).astype(np.float32)
        self.max_context = 1 << 20
        self.sliding_window = 4
        self.moe = None

    def logits_after(self, context: list[int]) -> np.ndarray:
        a, b = (context[-2] if len(context) > 1 else 0), context[-1]
        return self.table[a, b]

    def make_cache(self, max_rollback: int = 16):
        return [HistoryCache()]

    def embed(self, tokens: mx.array) -> mx.array:
        return mx.eye(self.vocab_size)[tokens]

    def forward(self, tokens: mx.array, cache, last_only: bool = False, logits: bool = True):
        history = cache[0].tokens
        logits, hidden = [], []
        for t in tokens.reshape(-1).tolist():
            history.append(int(t))
            logits.append(self.logits_after(history))
            hidden.append(np.eye(self.vocab_size, dtype=np.float32)[int(t)])
        if last_only:
            logits, hidden = logits[-1:], hidden[-1:]
        return mx.array(np.stack(logits))[None], mx.array(np.stack(hidden))[None]

    def shared_kv(self, cache, span):
        return {}

    # -- exact answers ----------------------------------------------------------------
    def exact_joint(self, prompt: list[int], n: int, distribution, processors=None) -> dict[tuple, float]:
        """P(first n generated tokens) by enumeration, under the sampling distribution (after the logits
        processors, which see the whole context, when given)."""
        out = {}
        for seq in itertools.product(range(self.vocab_size), repeat=n):
            prob, context = 1.0, list(prompt)
            for t in seq:
                logits = mx.array(self.logits_after(context))[None]
                if processors is not None:
                    logits = processors(mx.array(context), logits)
                p = np.array(distribution(logits))[0]
                prob *= float(p[t])
                context.append(t)
            out[seq] = prob
        return out


class TabularDrafter:
    sliding_span = 4

    def __init__(self, vocab: int, table: np.ndarray | None = None, target: TabularTarget | None = None):
        self.vocab = vocab
        self.table, self.target = table, target

    def __call__(self, inputs, position, shared_kv):
        x = np.array(inputs)[0, -1]
        last, prev = int(x[: self.vocab].argmax()), int(x[self.vocab:].argmax())
        if self.target is not None:
            logits = self.target.table[prev, last]
        else:
            logits = self.table[last]
        hidden = np.eye(self.vocab, dtype=np.float32)[last]
        return mx.array(logits)[None, None], mx.array(hidden)[None, None]


def empirical(samples: list[tuple]) -> dict[tuple, int]:
    counts: dict[tuple, int] = {}
    for s in samples:
        counts[s] = counts.get(s, 0) + 1
    return counts


def chi_square(counts: dict[tuple, int], exact: dict[tuple, float], n: int, min_expected: float = 5.0) -> tuple[float, int]:
    """Pearson chi-square statistic and degrees of freedom, pooling cells expected below 5."""
    stat, df = 0.0, -1
    pooled_obs, pooled_exp = 0, 0.0
    for cell, p in exact.items():
        e, o = p * n, counts.get(cell, 0)
        if e < min_expected:
            pooled_obs += o
            pooled_exp += e
            continue
        stat += (o - e) ** 2 / e
        df += 1
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / pooled_exp
        df += 1
    return stat, df


def chi_square_critical(df: int, z: float = 3.09) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (z = 3.09: 0.1% upper tail)."""
    return df * (1 - 2 / (9 * df) + z * (2 / (9 * df)) ** 0.5) ** 3
