"""Settings objects, built once at the edge (CLI, API, chat) and passed down unchanged.

- `SamplingSettings`: how target tokens are drawn (temperature, top-p, top-k, min-p, seed), applied
  to the target's p and the drafter's q alike.
- `ProcessorSettings`: logits processors (logit bias; repetition, presence and frequency penalties,
  as mlx-lm's `make_logits_processors` defines them; or any mlx-lm-style processor callables), applied
  position by position inside a speculative block to the target's p and the drafter's q alike.
- `DraftSettings`: how many tokens to draft (a fixed k, or "auto" up to `max_draft_tokens`) and
  whether the verify must reproduce plain decoding bit for bit (`exact_verify`).

Invalid values raise `MlxSpecError` with one sentence saying what is allowed, before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np

from .errors import MlxSpecError

MAX_DRAFT_TOKENS = 32  # the longest block anyone may ask for (caches keep this much rollback slack at most)


@dataclass(frozen=True)
class SamplingSettings:
    temp: float = 0.0
    top_p: float = 0.0
    top_k: int = 0
    min_p: float = 0.0
    min_tokens_to_keep: int = 1
    seed: Optional[int] = None

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

    @classmethod
    def resolve(cls, defaults: dict, temp=None, top_p=None, top_k=None, min_p=None, seed=None) -> "SamplingSettings":
        """Values given win; those left out (None) come from `defaults` (the model's generation_config.json,
        `loading.generation_defaults`: temperature, top_p, top_k, min_p), else greedy with no filters."""
        given = {"temp": temp, "top_p": top_p, "top_k": top_k, "min_p": min_p}
        names = {"temp": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p"}
        values = {k: v if v is not None else defaults.get(names[k], getattr(cls, k)) for k, v in given.items()}
        return cls(**values, seed=seed)

    def describe(self) -> str:
        if self.greedy:
            return "greedy"
        parts = [f"temperature {self.temp:g}"] + [f"{name} {v:g}" for name, v in
                                                   (("top_p", self.top_p), ("top_k", self.top_k), ("min_p", self.min_p)) if v]
        return ", ".join(parts)


@dataclass(frozen=True)
class ProcessorSettings:
    """Logits processors, with mlx-lm's meanings and defaults (`mlx_lm.sample_utils.make_logits_processors`):
    logit_bias adds to the named token ids' logits; repetition_penalty (> 0, 1 = off) divides positive
    and multiplies negative logits of the tokens among the last `repetition_context_size`; presence_penalty
    subtracts once per distinct token among the last `presence_context_size`, frequency_penalty once per
    occurrence among the last `frequency_context_size`. `custom`: further mlx-lm-style callables
    (tokens so far, logits [1, V]) -> logits, which see the whole history (prompt included)."""

    logit_bias: tuple = ()  # ((token id, bias), ...); a dict is accepted and stored sorted
    repetition_penalty: Optional[float] = None
    repetition_context_size: int = 20
    presence_penalty: float = 0.0
    presence_context_size: int = 20
    frequency_penalty: float = 0.0
    frequency_context_size: int = 20
    custom: tuple[Callable, ...] = ()

    def __post_init__(self):
        bias = self.logit_bias
        if isinstance(bias, dict):
            bias = tuple(sorted(bias.items()))
        problems = []
        try:
            bias = tuple((int(t), float(v)) for t, v in (bias or ()))
        except (TypeError, ValueError):
            problems.append("logit bias must map token ids to numbers")
            bias = ()
        if any(not np.isfinite(v) for _, v in bias):
            problems.append("logit bias values must be finite numbers")
        object.__setattr__(self, "logit_bias", bias)
        object.__setattr__(self, "custom", tuple(self.custom or ()))
        rp = self.repetition_penalty
        if rp is not None and not (isinstance(rp, (int, float)) and np.isfinite(rp) and rp > 0):
            problems.append(f"repetition penalty must be a number > 0, 1 meaning none (got {rp!r})")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and np.isfinite(v)):
                problems.append(f"{name.replace('_', ' ')} must be a number (got {v!r})")
        for name in ("repetition_context_size", "presence_context_size", "frequency_context_size"):
            v = getattr(self, name)
            if not (isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1):
                problems.append(f"{name.replace('_', ' ')} must be a whole number >= 1 (got {v!r})")
        if any(not callable(f) for f in self.custom):
            problems.append("custom logits processors must be callables (tokens, logits) -> logits")
        if problems:
            raise MlxSpecError("invalid logits processors: " + "; ".join(problems) + ".")

    @property
    def active(self) -> bool:
        return bool(self.logit_bias or self.custom or self.presence_penalty or self.frequency_penalty
                    or self.repetition_penalty not in (None, 1, 1.0))

    @property
    def window(self) -> Optional[int]:
        """How many past tokens the processors read: None for all (custom processors), 0 for none."""
        if self.custom:
            return None
        sizes = [0]
        if self.repetition_penalty not in (None, 1, 1.0):
            sizes.append(self.repetition_context_size)
        if self.presence_penalty:
            sizes.append(self.presence_context_size)
        if self.frequency_penalty:
            sizes.append(self.frequency_context_size)
        return max(sizes)


NO_PROCESSORS = ProcessorSettings()


@dataclass(frozen=True)
class DraftSettings:
    """draft_tokens: "auto" (the policy picks k in 0..max_draft_tokens each step, 0 being plain
    decoding) or a fixed k (0: plain decoding through the same loop). exact_verify: verify every
    draft with the same 1-row forward plain decoding runs, so greedy output equals plain greedy
    decoding bit for bit on any backend (costs the speedup, see README). lookup: also draft by
    prompt lookup (copying what followed the context's suffix earlier), each step from whichever
    source promises more tokens per second; adaptive and greedy, its drafts go up to
    max_lookup_tokens (longer than the MTP drafter's: a copy costs no drafter forward, and text that
    copies its context, an edited file, keeps matching far ahead); sampled, up to max_draft_tokens."""

    draft_tokens: Union[int, str] = "auto"
    max_draft_tokens: int = 8
    exact_verify: bool = False
    lookup: bool = False  # prompt-lookup drafting (lookup.py): alone without an MTP drafter, else beside it
    mtp: bool = True  # False: no MTP drafter even if the model has one (lookup alone)
    max_lookup_tokens: int = 16  # adaptive, greedy: the longest prompt-lookup draft

    def __post_init__(self):
        k = self.draft_tokens
        if k != "auto" and not (isinstance(k, (int, np.integer)) and not isinstance(k, bool) and 0 <= k <= MAX_DRAFT_TOKENS):
            raise MlxSpecError(f"draft tokens must be auto or a number from 0 to {MAX_DRAFT_TOKENS} (got {k!r}).")
        if not 1 <= self.max_draft_tokens <= MAX_DRAFT_TOKENS:
            raise MlxSpecError(f"max draft tokens must be from 1 to {MAX_DRAFT_TOKENS} (got {self.max_draft_tokens!r}).")
        if not 1 <= self.max_lookup_tokens <= MAX_DRAFT_TOKENS:
            raise MlxSpecError(f"max lookup tokens must be from 1 to {MAX_DRAFT_TOKENS} (got {self.max_lookup_tokens!r}).")

    @classmethod
    def parse(cls, text: str, **kwargs) -> "DraftSettings":
        """From the command line's `auto` or `N`; `lookup-auto` / `lookup-N`: prompt lookup alone;
        `auto+lookup` / `N+lookup`: both sources."""
        text = str(text).strip()
        if text.startswith("lookup-"):
            return cls.parse(text.removeprefix("lookup-"), **kwargs, lookup=True, mtp=False)
        if text.endswith("+lookup"):
            return cls.parse(text.removesuffix("+lookup"), **kwargs, lookup=True)
        if text == "auto":
            return cls("auto", **kwargs)
        try:
            k = int(text)
        except ValueError:
            raise MlxSpecError(f"--draft-tokens takes auto or a number from 0 to {MAX_DRAFT_TOKENS}, optionally as lookup-K "
                               f"(prompt lookup alone) or K+lookup (both) (got {text!r}).") from None
        return cls(k, **kwargs)

    @property
    def adaptive(self) -> bool:
        return self.draft_tokens == "auto"

    @property
    def k_max(self) -> int:
        """The longest MTP draft (the adaptive policy's range)."""
        return self.max_draft_tokens if self.adaptive else int(self.draft_tokens)

    @property
    def lookup_k_max(self) -> int:
        """The longest prompt-lookup draft (greedy; sampled: k_max; a fixed k drafts k from either source)."""
        return self.max_lookup_tokens if self.adaptive else int(self.draft_tokens)

    @property
    def block_max(self) -> int:
        """The longest block this setting can draft from either source: what caches must roll back."""
        return max(self.k_max, self.lookup_k_max if self.lookup else 0)

    def label(self) -> str:
        k = "auto" if self.adaptive else str(self.draft_tokens)
        if self.lookup:
            return f"{k}+lookup" if self.mtp else f"lookup-{k}"
        return k
