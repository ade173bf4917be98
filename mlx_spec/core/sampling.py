"""Turning logits into tokens, and speculative acceptance, all as lazy MLX operations.

Nothing here reads a value back to the host: the loop evaluates a whole draft -> verify -> accept
step at once (its one host synchronisation). A `Strategy` gives the first token after the prefill,
the drafter's proposals, and the acceptance of a block:

- `Greedy` (temperature 0): drafts are the drafter's argmax; accept drafts while they equal the
  target's argmax, then the target's argmax.
- `RejectionSampler` (temperature > 0, Leviathan et al. / Chen et al.): drafts are sampled from the
  drafter's q; draft x is accepted with probability min(1, p(x) / q(x)); at the first rejection the
  token is drawn from normalize(max(0, p - q)); after a fully accepted block the bonus token is drawn
  from p. The output follows p exactly. p and q are shaped by the same settings (`Distribution`:
  top-p, min-p, top-k on log-probabilities, then temperature, as mlx-lm's `make_sampler` orders them).
  Randomness comes from the strategy's own key (seeded: reproducible runs).

Logits processors (`Processors`: logit bias, repetition / presence / frequency penalties, mlx-lm's own
functions) act before either: inside a block, position i's target logits and draft i + 1's drafter
logits are both processed with the history up to that position (`History`: the sequence's tokens
before its next input, kept on the device), so greedy equals plain greedy decoding with the same
processors and rejection sampling is exact for the processed distribution.
"""

from __future__ import annotations

from typing import Optional, Protocol

import mlx.core as mx
import numpy as np
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p, make_logits_processors

from .errors import MlxSpecError
from .settings import ProcessorSettings, SamplingSettings

__all__ = ["SamplingSettings", "Distribution", "Strategy", "Greedy", "RejectionSampler", "GREEDY", "make_strategy",
           "draft_rows", "accept_rows", "Processors", "History"]


class Distribution:
    """logits [..., V] -> probabilities [..., V] under the settings (float32)."""

    def __init__(self, settings: SamplingSettings):
        self.settings = settings

    def filters(self, vocab_size: int) -> bool:
        """Whether top-p, min-p or top-k cut anything from a vocabulary of this size."""
        s = self.settings
        return 0 < s.top_p < 1.0 or s.min_p != 0.0 or 0 < s.top_k < vocab_size

    def logprobs(self, logits: mx.array) -> mx.array:
        s = self.settings
        logits = logits.astype(mx.float32)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        if 0 < s.top_p < 1.0:
            logprobs = apply_top_p(logprobs, s.top_p)
        if s.min_p != 0.0:
            logprobs = apply_min_p(logprobs, s.min_p, s.min_tokens_to_keep)
        if 0 < s.top_k < logits.shape[-1]:
            logprobs = apply_top_k(logprobs, s.top_k)
        return logprobs

    def scaled(self, logits: mx.array) -> mx.array:
        """Unnormalised log-probabilities of p: the logits over the temperature (as mlx-lm samples them),
        or with top-p / min-p / top-k the filtered log-probabilities over it. The filters need
        normalised log-probabilities; without them that pass over the vocabulary is skipped (on the CPU
        an exp pass over [9, 49152] logits costs ~10 ms, a tenth of a SmolLM2 step)."""
        if not self.filters(logits.shape[-1]):
            return logits.astype(mx.float32) * (1.0 / self.settings.temp)
        return self.logprobs(logits) * (1.0 / self.settings.temp)

    def normalized(self, logits: mx.array) -> mx.array:
        """Normalised log-probabilities of p (filters and temperature applied; `logprobs` is the
        filtered distribution at temperature 1, what the filters read)."""
        scaled = self.scaled(logits)
        return scaled - mx.logsumexp(scaled, axis=-1, keepdims=True)

    def __call__(self, logits: mx.array) -> mx.array:
        return mx.softmax(self.scaled(logits), axis=-1)


class Strategy(Protocol):
    def first(self, logits: mx.array) -> mx.array:
        """Target logits [1, V] after the prefill -> the first token [1] (int32, lazy)."""

    def draft(self, logits: mx.array) -> mx.array:
        """Drafter logits [1, V] -> proposed token [1] (int32, lazy)."""

    def accept(self, drafts: mx.array, draft_logits: Optional[mx.array], target_logits: mx.array) -> tuple[mx.array, mx.array]:
        """drafts [k], drafter logits [k, V] (None when k = 0, or when the drafts are deterministic, as
        prompt lookup's are: q is then one-hot at them), target logits [k + 1, V] ->
        (n accepted: int32 scalar, next token [1] int32), both lazy."""


def _first_rejection(ok: mx.array) -> mx.array:
    """Number of leading True entries of a [k] boolean array."""
    return mx.cumprod(ok.astype(mx.int32)).sum() if ok.size else mx.array(0, dtype=mx.int32)


class Greedy:
    """Temperature 0: the target's argmax, exactly."""

    def first(self, logits: mx.array) -> mx.array:
        return mx.argmax(logits, axis=-1).astype(mx.int32).reshape(1)

    draft = first

    def accept(self, drafts, draft_logits, target_logits):
        choices = mx.argmax(target_logits, axis=-1).astype(mx.int32)  # [k + 1]
        if drafts.shape[0] == 0:
            return mx.array(0, dtype=mx.int32), choices
        n = _first_rejection(drafts == choices[: drafts.shape[0]])
        return n, mx.take(choices, n).reshape(1)


GREEDY = Greedy()


class RejectionSampler:
    """Speculative rejection sampling on the device, with its own random key stream."""

    def __init__(self, settings: SamplingSettings):
        self.distribution = Distribution(settings)
        seed = settings.seed if settings.seed is not None else int(np.random.SeedSequence().generate_state(1)[0])
        self._key = mx.random.key(seed)

    def key(self) -> mx.array:
        self._key, sub = mx.random.split(self._key)
        return sub

    def _sample(self, logits: mx.array) -> mx.array:
        return mx.random.categorical(self.distribution.scaled(logits), key=self.key()).astype(mx.int32).reshape(-1)

    def first(self, logits: mx.array) -> mx.array:
        return self._sample(logits).reshape(1)

    draft = first

    def accept(self, drafts, draft_logits, target_logits):
        """Only what the outcome needs is computed: p(x) and q(x) at the k drafts (one normalising pass
        over each row), then the one distribution the token is drawn from (the residual at the first
        rejection, or p after all k), not k + 1 candidate draws over the vocabulary. With
        `draft_logits` None the drafts are deterministic (prompt lookup): q is one-hot at them."""
        k = drafts.shape[0]
        if k == 0:
            return mx.array(0, dtype=mx.int32), self._sample(target_logits[:1])
        log_p = self.distribution.normalized(target_logits)  # [k + 1, V]
        index = drafts.reshape(k, 1)
        p_x = mx.exp(mx.take_along_axis(log_p[:k], index, axis=-1).reshape(k))
        if draft_logits is None:
            q_x = mx.ones((k,), mx.float32)
        else:
            log_q = self.distribution.normalized(draft_logits)  # [k, V]
            q_x = mx.exp(mx.take_along_axis(log_q, index, axis=-1).reshape(k))
        n = _first_rejection(mx.random.uniform(shape=(k,), key=self.key()) * q_x < p_x)  # accept w.p. min(1, p/q)
        p_n = mx.exp(mx.take(log_p, n, axis=0))  # [V]: p at the first rejection, or after all k
        row = mx.minimum(n, k - 1)  # q there; none after all k (the residual is then p itself)
        if draft_logits is None:
            q_n = (mx.arange(p_n.shape[-1]) == mx.take(drafts, row)).astype(mx.float32)
        else:
            q_n = mx.exp(mx.take(log_q, row, axis=0))
        residual = mx.maximum(p_n - q_n * (n < k), 0.0)
        residual = mx.where(residual.sum() > 0, residual, p_n)  # p == q: any draw from p is exact
        return n, mx.random.categorical(mx.log(residual), key=self.key()).astype(mx.int32).reshape(1)


def draft_rows(strategies: list, logits: mx.array) -> mx.array:
    """Drafter logits [B, V] -> one proposal per row [B] (int32), each row by its own strategy."""
    if all(s is GREEDY for s in strategies):
        return mx.argmax(logits, axis=-1).astype(mx.int32)
    return mx.concatenate([s.draft(logits[b : b + 1]) for b, s in enumerate(strategies)])


def accept_rows(strategies: list, drafts: mx.array, draft_logits: Optional[mx.array], target_logits: mx.array,
                given: Optional[list[bool]] = None):
    """Per-row acceptance of a batch block: drafts [B, k], drafter logits [B, k, V] (None when k = 0 or
    no row drafted with the drafter), target logits [B, k + 1, V] -> (n accepted [B], next token [B]),
    lazy. `given[b]`: row b's drafts are deterministic (prompt lookup: q one-hot at them, its drafter
    logits ignored). Greedy rows are decided together; sampled rows each by their own strategy (own
    settings, own random stream)."""
    if all(s is GREEDY for s in strategies):
        choices = mx.argmax(target_logits, axis=-1).astype(mx.int32)  # [B, k + 1]
        k = drafts.shape[1]
        if k == 0:
            return mx.zeros((choices.shape[0],), mx.int32), choices[:, 0]
        n = mx.cumprod((drafts == choices[:, :k]).astype(mx.int32), axis=1).sum(axis=1)
        return n, mx.take_along_axis(choices, n[:, None], axis=1)[:, 0]
    given = given or [False] * len(strategies)
    rows = [s.accept(drafts[b], None if draft_logits is None or given[b] else draft_logits[b], target_logits[b])
            for b, s in enumerate(strategies)]
    return mx.stack([n for n, _ in rows]).astype(mx.int32), mx.concatenate([t for _, t in rows])


def make_strategy(settings: SamplingSettings) -> Strategy:
    """Greedy at temperature 0, else drafts sampled from q and speculative rejection sampling."""
    return GREEDY if settings.greedy else RejectionSampler(settings)


# ------------------------------------------------------------------------------------------------
# Logits processors inside a block


class Processors:
    """One setting's logits processors (mlx-lm's `make_logits_processors`, plus custom callables), built
    once per request; `__call__(tokens, logits [1, V])` applies them in mlx-lm's order."""

    def __init__(self, settings: ProcessorSettings, vocab_size: int):
        bad = [t for t, _ in settings.logit_bias if not 0 <= t < vocab_size]
        if bad:
            raise MlxSpecError(f"logit bias names token ids outside the vocabulary of {vocab_size}: {bad[:5]}.")
        self.settings = settings
        self.window = settings.window
        self.functions = make_logits_processors(
            dict(settings.logit_bias) or None,
            settings.repetition_penalty if settings.repetition_penalty not in (None, 1, 1.0) else None,
            settings.repetition_context_size,
            settings.presence_penalty or None, settings.presence_context_size,
            settings.frequency_penalty or None, settings.frequency_context_size,
        ) + list(settings.custom)

    def recent(self, tokens: mx.array) -> mx.array:
        """The tail of a history the processors can read (all of it for custom processors)."""
        if self.window is None or tokens.shape[0] <= self.window:
            return tokens
        return tokens[tokens.shape[0] - self.window :]

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        for f in self.functions:
            logits = f(tokens, logits)
        return logits


class History:
    """One sequence's processors and the tokens before its next input token (a device array, possibly
    lazy: a plain step queued ahead extends it before the step it follows is read).

    A block with input token t and drafts d1..dk reads `context = history + [t]`; position i sees
    context + d1..di. Afterwards the history is the context plus the accepted drafts (`advance`)."""

    def __init__(self, processors: Processors, prompt: list[int]):
        self.processors = processors
        self.tokens = processors.recent(mx.array(prompt, dtype=mx.int32))

    def first(self, logits: mx.array) -> mx.array:
        """The logits [1, V] after the prompt, processed."""
        return self.processors(self.tokens, logits)

    def context(self, token: mx.array) -> mx.array:
        """`history + [token]` for a block whose input is `token` [1]."""
        return self.processors.recent(mx.concatenate([self.tokens, token.reshape(-1).astype(mx.int32)]))

    def draft(self, context: mx.array, drafted: list, logits: mx.array) -> mx.array:
        """Drafter logits [1, V] for the next draft after `drafted` ([1] arrays), processed."""
        return self.processors(mx.concatenate([context] + [d.reshape(-1) for d in drafted]), logits)

    def verify(self, context: mx.array, drafts: mx.array, logits: mx.array) -> mx.array:
        """Target logits [k + 1, V] over [t, d1..dk], each position processed with its own history."""
        return mx.concatenate([self.processors(mx.concatenate([context, drafts[:i]]), logits[i : i + 1])
                               for i in range(logits.shape[0])])

    def advance(self, context: mx.array, accepted: list[int]) -> None:
        """After a block: the history ends with its input token and the drafts it accepted."""
        if accepted:
            context = self.processors.recent(mx.concatenate([context, mx.array(accepted, dtype=mx.int32)]))
        self.tokens = context
