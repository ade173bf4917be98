"""Settings objects, built once at the edge (CLI, API, chat) and passed down unchanged.

- `SamplingSettings`: how target tokens are drawn (temperature, top-p, top-k, min-p, seed), applied
  to the target's p and the drafter's q alike.
- `DraftSettings`: how many tokens to draft (a fixed k, or "auto" up to `max_draft_tokens`) and
  whether the verify must reproduce plain decoding bit for bit (`exact_verify`).

Invalid values raise `MlxSpecError` with one sentence saying what is allowed, before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

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


@dataclass(frozen=True)
class DraftSettings:
    """draft_tokens: "auto" (the policy picks k in 0..max_draft_tokens each step, 0 being plain
    decoding) or a fixed k (0: plain decoding through the same loop). exact_verify: verify every
    draft with the same 1-row forward plain decoding runs, so greedy output equals plain greedy
    decoding bit for bit on any backend (costs the speedup, see README)."""

    draft_tokens: Union[int, str] = "auto"
    max_draft_tokens: int = 8
    exact_verify: bool = False

    def __post_init__(self):
        k = self.draft_tokens
        if k != "auto" and not (isinstance(k, (int, np.integer)) and not isinstance(k, bool) and 0 <= k <= MAX_DRAFT_TOKENS):
            raise MlxSpecError(f"draft tokens must be auto or a number from 0 to {MAX_DRAFT_TOKENS} (got {k!r}).")
        if not 1 <= self.max_draft_tokens <= MAX_DRAFT_TOKENS:
            raise MlxSpecError(f"max draft tokens must be from 1 to {MAX_DRAFT_TOKENS} (got {self.max_draft_tokens!r}).")

    @classmethod
    def parse(cls, text: str, **kwargs) -> "DraftSettings":
        """From the command line's `auto` or `N`."""
        text = str(text).strip()
        if text == "auto":
            return cls("auto", **kwargs)
        try:
            k = int(text)
        except ValueError:
            raise MlxSpecError(f"--draft-tokens takes auto or a number from 0 to {MAX_DRAFT_TOKENS} (got {text!r}).") from None
        return cls(k, **kwargs)

    @property
    def adaptive(self) -> bool:
        return self.draft_tokens == "auto"

    @property
    def k_max(self) -> int:
        """The longest block this setting can draft: what caches must be able to roll back."""
        return self.max_draft_tokens if self.adaptive else int(self.draft_tokens)

    def label(self) -> str:
        return "auto" if self.adaptive else str(self.draft_tokens)
