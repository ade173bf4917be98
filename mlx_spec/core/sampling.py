"""Turning logits into distributions and tokens, and speculative acceptance.

`Distribution` applies the sampling settings exactly as mlx-lm's `make_sampler` does (top-p, min-p,
top-k on log-probabilities, then temperature), but returns the probabilities, because speculative
sampling needs the target's p and the drafter's q, not only a draw. The same settings shape p and q.

Acceptance rules, both returning (n accepted drafts, the next token):
- `greedy_accept` (temperature 0): drafts equal to the target's argmax, then the target's argmax.
- `RejectionSampler` (temperature > 0, Leviathan et al. / Chen et al.): accept draft x with
  probability min(1, p(x) / q(x)); at the first rejection sample from normalize(max(0, p - q));
  after a fully accepted block sample the bonus token from p. The output follows p exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import mlx.core as mx
import numpy as np
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

from .errors import MlxSpecError


@dataclass(frozen=True)
class SamplingSettings:
    temp: float = 0.0
    top_p: float = 0.0
    top_k: int = 0
    min_p: float = 0.0
    min_tokens_to_keep: int = 1

    def __post_init__(self):
        problems = []
        if not (self.temp >= 0 and np.isfinite(self.temp)):
            problems.append(f"temperature must be >= 0 (got {self.temp})")
        if not 0 <= self.top_p <= 1:
            problems.append(f"top-p must be in [0, 1] (got {self.top_p})")
        if self.top_k < 0:
            problems.append(f"top-k must be >= 0 (got {self.top_k})")
        if not 0 <= self.min_p <= 1:
            problems.append(f"min-p must be in [0, 1] (got {self.min_p})")
        if problems:
            raise MlxSpecError("invalid sampling settings: " + "; ".join(problems) + ".")

    @property
    def greedy(self) -> bool:
        return self.temp == 0


class Distribution:
    """logits [..., V] -> probabilities [..., V] under the settings (float32)."""

    def __init__(self, settings: SamplingSettings):
        self.settings = settings

    def logprobs(self, logits: mx.array) -> mx.array:
        s = self.settings
        logprobs = logits.astype(mx.float32) - mx.logsumexp(logits.astype(mx.float32), axis=-1, keepdims=True)
        if 0 < s.top_p < 1.0:
            logprobs = apply_top_p(logprobs, s.top_p)
        if s.min_p != 0.0:
            logprobs = apply_min_p(logprobs, s.min_p, s.min_tokens_to_keep)
        if 0 < s.top_k < logits.shape[-1]:
            logprobs = apply_top_k(logprobs, s.top_k)
        return logprobs

    def __call__(self, logits: mx.array) -> mx.array:
        return mx.softmax(self.logprobs(logits) * (1.0 / self.settings.temp), axis=-1)

    def sample(self, logits: mx.array) -> mx.array:
        """Draw token ids [...] (what the drafter proposes, and the first token after prefill)."""
        return mx.random.categorical(self.logprobs(logits) * (1.0 / self.settings.temp))


def greedy_accept(drafts: mx.array, draft_logits: Optional[mx.array], target_logits: mx.array) -> tuple[int, int]:
    """Temperature 0: accept drafts while they equal the target's argmax; then the target's argmax."""
    choices = mx.argmax(target_logits, axis=-1).tolist()
    n = 0
    for d in drafts.tolist():
        if d != choices[n]:
            break
        n += 1
    return n, choices[n]


class RejectionSampler:
    """Speculative rejection sampling with one numpy random stream (seeded: reproducible runs)."""

    def __init__(self, settings: SamplingSettings, seed: Optional[int] = None):
        self.distribution = Distribution(settings)
        self.rng = np.random.default_rng(seed)

    def _draw(self, probs: np.ndarray) -> int:
        total = probs.sum()
        return int(self.rng.choice(len(probs), p=probs / total))

    def first_token(self, logits: mx.array) -> int:
        return self._draw(np.array(self.distribution(logits.reshape(-1)), dtype=np.float64))

    def __call__(self, drafts: mx.array, draft_logits: Optional[mx.array], target_logits: mx.array) -> tuple[int, int]:
        p = np.array(self.distribution(target_logits), dtype=np.float64)  # [k+1, V]
        tokens = drafts.tolist()
        if not tokens:
            return 0, self._draw(p[0])
        q = np.array(self.distribution(draft_logits), dtype=np.float64)  # [k, V]
        for i, x in enumerate(tokens):
            if self.rng.random() * q[i, x] < p[i, x]:  # accept with probability min(1, p/q)
                continue
            residual = np.maximum(p[i] - q[i], 0.0)
            if residual.sum() <= 0:  # p == q up to rounding: any draw from p is exact
                residual = p[i]
            return i, self._draw(residual)
        return len(tokens), self._draw(p[len(tokens)])


@dataclass
class Strategy:
    """How the loop turns logits into tokens: the first token, the drafts, and acceptance."""

    first: Callable[[mx.array], int]  # target logits [1, V] after prefill -> token
    draft: Callable[[mx.array], mx.array]  # drafter logits [1, V] -> token ids [1]
    accept: Callable[[mx.array, Optional[mx.array], mx.array], tuple[int, int]]


GREEDY = Strategy(
    first=lambda logits: int(mx.argmax(logits, axis=-1).reshape(-1)[0].item()),
    draft=lambda logits: mx.argmax(logits, axis=-1),
    accept=greedy_accept,
)


def make_strategy(settings: SamplingSettings, seed: Optional[int] = None) -> Strategy:
    """Greedy at temperature 0, else drafts sampled from q and speculative rejection sampling."""
    if settings.greedy:
        return GREEDY
    if seed is not None:
        mx.random.seed(seed)
    rejection = RejectionSampler(settings, seed)
    return Strategy(first=rejection.first_token, draft=rejection.distribution.sample, accept=rejection)
