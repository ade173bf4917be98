"""Prompt-lookup drafting: propose what followed the latest earlier occurrence of the context's suffix.

No weights. Text a local app asks for often repeats its context (code edits, rewrites, answers over a
pasted document, JSON keys, a model looping on a line): the continuation of the longest recent n-gram
match in prompt + output is then accepted at high rates, at the cost of a verify only.

- `NgramIndex`: for every n-gram length 1..max_ngram, the latest position each n-gram was followed
  by a token; `propose(k)` finds the longest suffix of the history seen before and returns up to k
  tokens that followed it there, with the match length.
- `Lookup`: the index of one sequence plus online acceptance per match length (`policy.Acceptance`),
  so a step can price a lookup draft against the MTP drafter's (expected tokens per second), and
  probes: a match length whose estimate says "does not pay" is still drafted (PROBE_DRAFTS tokens)
  after PROBE_EVERY declined matches there, so an estimate learned on other text can recover.
  Greedy (`Lookup.greedy`), lookup acceptance switches with the text (near 1 while a reply copies
  its context, near 0 between copies), so its estimates forget fast (GREEDY_DECAY) and a draft
  accepted whole probes the next match at its length at once: a copy that begins is followed as it
  goes, not PROBE_EVERY matches late. Sampled, a copied token is accepted with its probability only,
  and whole acceptances of short drafts come by chance: the estimates then keep the MTP drafter's
  memory and probes their interval (measured, SmolLM2 at 0.7: the greedy tuning with 16-token drafts
  fell from 1.23x to 1.04x).

A lookup draft is a deterministic function of the history: its proposal distribution q is one-hot
(the loop passes no drafter logits; `RejectionSampler.accept` takes q(x) = 1), so speculative
rejection sampling accepts draft x with probability p(x) and resamples from p without x at a
rejection: the output follows p exactly, as with any drafter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .policy import Acceptance

MAX_NGRAM = 4
MIN_NGRAM = 2  # single-token matches propose noise on most text
PROBE_EVERY = 16  # steps with a match at one length that drafted no lookup, before a lookup draft there is probed
PROBE_DRAFTS = 2  # a probe's draft length
PROBE_BACKOFF = 3  # each lookup draft in a row at that length with nothing accepted doubles the interval, up to 2 ** this
GREEDY_DECAY = 0.85  # greedy: per lookup step at a match length, its estimate remembers roughly the last 7 (the MTP drafter's ~30)


class NgramIndex:
    """Incremental n-gram index over a token history."""

    def __init__(self, max_ngram: int = MAX_NGRAM, min_ngram: int = MIN_NGRAM):
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.tokens: list[int] = []
        self.next_after: list[dict] = [dict() for _ in range(max_ngram + 1)]  # n -> {n-gram: index of the token after it}

    def extend(self, tokens) -> None:
        for t in tokens:
            i = len(self.tokens)  # t lands at index i: every n-gram ending at i - 1 was followed by it
            for n in range(1, min(self.max_ngram, i) + 1):
                self.next_after[n][tuple(self.tokens[i - n : i])] = i
            self.tokens.append(int(t))

    def match(self) -> tuple[int, int]:
        """(n, start): the longest suffix n-gram (n >= min_ngram) seen before, and where what followed it
        starts; (0, -1) if none."""
        L = len(self.tokens)
        for n in range(min(self.max_ngram, L - 1), self.min_ngram - 1, -1):
            start = self.next_after[n].get(tuple(self.tokens[L - n :]))
            if start is not None:
                return n, start
        return 0, -1

    def propose(self, k: int) -> tuple[list[int], int]:
        """k tokens that followed the longest earlier match of the suffix, and its length n. A match
        close behind (text repeating with period L - start) is copied with overlap, as LZ77 does: the
        proposal continues into its own tokens, so a repeating run is drafted k ahead, not one."""
        n, start = self.match()
        if n == 0:
            return [], 0
        seq, L = self.tokens, len(self.tokens)
        out = []
        for j in range(k):
            i = start + j
            out.append(seq[i] if i < L else out[i - L])
        return out, n


@dataclass
class Lookup:
    """One sequence's prompt-lookup drafter: its n-gram index and acceptance per match length."""

    k_max: int
    max_ngram: int = MAX_NGRAM
    min_ngram: int = MIN_NGRAM
    costs: object = None  # policy.StepCosts of verify-only steps (no drafter), k = 0..k_max; None: the policy's
    index: NgramIndex = None
    seen: dict = field(default_factory=dict)  # match length n -> Acceptance
    declined: dict = field(default_factory=dict)  # n -> steps with a match at n that drafted no lookup since one at n did
    failed: dict = field(default_factory=dict)  # n -> lookup drafts at n in a row with nothing accepted
    greedy: bool = False  # the tuning for greedy decoding (module docstring)

    def __post_init__(self):
        self.index = NgramIndex(self.max_ngram, self.min_ngram)
        kw = {"decay": GREEDY_DECAY} if self.greedy else {}
        self.seen = {n: Acceptance(self.k_max, prior=0.6, **kw) for n in range(self.min_ngram, self.max_ngram + 1)}

    def extend(self, tokens) -> None:
        self.index.extend(tokens)

    def propose(self) -> tuple[list[int], int]:
        return self.index.propose(self.k_max)

    def expected_tokens(self, n: int, k: int) -> float:
        return self.seen[n].expected_tokens(k)

    def update(self, n: int, k: int, accepted: int) -> None:
        self.seen[n].update(k, accepted)
        self.declined[n] = PROBE_EVERY if self.greedy and accepted == k else 0  # greedy, accepted whole: the next match at n is probed at once
        self.failed[n] = 0 if accepted else self.failed.get(n, 0) + 1

    def probe_due(self, n: int) -> bool:
        """Whether a lookup draft at match length n is due as a probe, whatever its estimate says. An
        estimate only moves when lookup drafts at n are verified: without probes, one learned low on
        other text (remembered from the last generation) would keep a reply that copies its context
        from ever drafting by lookup (measured: SmolLM2, greedy, edit-typehints 1.06x in one pass where
        the two before it ran 3.9x, every step an MTP k = 2 step instead)."""
        return n > 0 and self.declined.get(n, 0) >= PROBE_EVERY << min(self.failed.get(n, 0), PROBE_BACKOFF)

    def reach(self, n: int) -> tuple[int, int]:
        """The match lengths the next step's lookup may draft at, after a match of length n now: n, or
        one longer if the repeat goes on (both 0 without a match)."""
        return (n, min(n + 1, self.max_ngram)) if n else (0, 0)

    def decline(self, n: int) -> None:
        """A step with a match at n did not draft by lookup."""
        if n:
            self.declined[n] = self.declined.get(n, 0) + 1

    def observe(self, k: int, seconds: float) -> None:
        if self.costs is not None:
            self.costs.observe(k, seconds)

    def restart(self) -> None:
        if self.costs is not None:
            self.costs.restart()

    def remember(self, previous: "Lookup") -> None:
        """Start from the last generation's acceptance per match length and its probing state."""
        for n, seen in previous.seen.items():
            if n in self.seen:
                self.seen[n].remember(seen)
        self.declined, self.failed = dict(previous.declined), dict(previous.failed)


def best_lookup(lookup: Lookup, proposal: list[int], n: int, cost) -> tuple[int, float]:
    """The draft length (<= len(proposal)) with the best expected tokens per second, and that rate."""
    if not proposal:
        return 0, 0.0
    k = max(range(1, len(proposal) + 1), key=lambda k: lookup.expected_tokens(n, k) / cost(k))
    return k, lookup.expected_tokens(n, k) / cost(k)


__all__ = ["NgramIndex", "Lookup", "best_lookup", "MAX_NGRAM", "MIN_NGRAM", "PROBE_EVERY", "PROBE_DRAFTS"]
