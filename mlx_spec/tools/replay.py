"""Replaying the adaptive policy on recorded acceptance: what its choices cost, free of timing noise.

On a small machine one prompt's wall time wanders +/- 10% run to run, so whether `auto` loses 2% on
a category is lost in the noise of any affordable number of benchmark passes. The replay separates
the policy's decisions from that noise:

1. `match_lengths`: greedy decoding of a prompt, drafting k_max tokens with the MTP drafter at every
   position: m[j] is how many of the drafts made after generated token j the target's own greedy
   continuation confirms. A step at j drafting k accepts min(k, m[j]) (deterministic at temperature 0;
   the hidden state comes from a one-row forward here and from the verify in the loop, equal on CPU
   float32 up to rounding).
2. `StepTimes`: what a step costs given its neighbours (a plain step between plain ones is pipelined;
   the plain steps either side of a speculative one are not; a speculative step queued behind a plain
   one ran mostly during it), the medians of the step intervals a `mlx-spec bench` run recorded.
3. `replay`: the real `AdaptivePolicy` (its cost table, probes and the memory `policy_for` carries
   between generations) steps through the positions of the prompts in order; each step's interval
   comes from StepTimes and is observed as the loop observes it. The modeled speedup of a prompt is
   its all-plain time over the policy's time for the same tokens.

A model, not a measurement: it prices decisions with one machine's measured step costs and leaves out
what the costs do not hold (the device idling on the host, noise). `mlx-spec bench` measures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Callable, Optional

import mlx.core as mx
import numpy as np

from ..core.draft import propose
from ..core.errors import MlxSpecError
from ..core.policy import AdaptivePolicy, StepCosts
from ..core.sampling import GREEDY
from .bench import steps_by_neighbours


def match_lengths(target, drafter, prompt: list[int], max_tokens: int, k_max: int) -> tuple[list[int], list[int]]:
    """(the target's greedy tokens, m): m[j] = how many of the k_max drafts proposed after token j
    (from token j and the hidden state that predicted it, as `propose` drafts in the loop) match the
    greedy tokens after it."""
    cache = target.make_cache(max_rollback=1)
    logits, hidden = target.forward(mx.array([prompt]), cache, last_only=True)
    token = GREEDY.first(logits[0, -1:])
    tokens, drafted = [], []
    for _ in range(max_tokens):
        drafts, _ = propose(drafter, target, cache, token, hidden, k_max, GREEDY.draft)
        logits, hidden = target.forward(token[None], cache)
        mx.eval(drafts, logits, hidden)
        tokens.append(int(token.item()))
        drafted.append(drafts.tolist())
        token = GREEDY.first(logits[0, -1:])
    m = []
    for j, drafts in enumerate(drafted):
        after = tokens[j + 1 : j + 1 + k_max]
        n = 0
        while n < len(after) and drafts[n] == after[n]:
            n += 1
        m.append(n)
    return tokens, m


@dataclass
class StepTimes:
    """Seconds of one step's read-to-read interval, by neighbours. Plain steps: `plain` between plain
    steps (pipelined), `before` the last before a speculative step, `after` the first after one (and,
    not seen alone, `between` two speculative steps). Speculative steps drafting k: `queued[k]` right
    after a plain step (queued behind it, so mostly run during it), `run[k]` after another speculative
    step."""

    plain: float
    before: float
    after: float
    between: float
    queued: dict[int, float]
    run: dict[int, float]

    @staticmethod
    def _fill(table: dict[int, float], k_max: int) -> dict[int, float]:
        """Entries for every k in 1..k_max: linear between and beyond the measured ones."""
        if not table:
            raise MlxSpecError("the bench run holds no speculative steps: record one with an adaptive or fixed-k config.")
        ks = sorted(table)
        out = {}
        for k in range(1, k_max + 1):
            if k in table:
                out[k] = table[k]
                continue
            lo = max([x for x in ks if x < k], default=None)
            hi = min([x for x in ks if x > k], default=None)
            if lo is None or hi is None:  # beyond the measured ones: the slope of the two nearest
                a, b = (ks[0], ks[1]) if hi is not None else (ks[-2], ks[-1]) if len(ks) > 1 else (ks[0], ks[0])
                slope = (table[b] - table[a]) / (b - a) if b != a else 0.0
                out[k] = table[a] + slope * (k - a)
            else:
                out[k] = table[lo] + (table[hi] - table[lo]) * (k - lo) / (hi - lo)
        return out

    @classmethod
    def from_runs(cls, runs: list[dict], k_max: int) -> "StepTimes":
        """From a bench JSON's runs (their per-step `step_seconds` and `drafts_per_step`)."""
        groups: dict[tuple, list[float]] = {}
        for run in runs:
            for key, seconds in steps_by_neighbours(run["stats"]).items():
                groups.setdefault(key, []).extend(seconds)
        med = {key: median(v) for key, v in groups.items()}
        plain = med.get(("plain", False, False))
        if plain is None:
            raise MlxSpecError("the bench run holds no plain steps between plain steps: record a run with a plain config.")
        before = med.get(("plain", False, True), plain)
        after = med.get(("plain", True, False), plain)
        queued = {key[1]: v for key, v in med.items() if key[0] == "queued"}
        run = {key[1]: v for key, v in med.items() if key[0] == "run"}
        return cls(plain, before, after, med.get(("plain", True, True), before + after - plain),
                   cls._fill(queued or run, k_max), cls._fill(run or queued, k_max))

    def interval(self, previous: int, k: int, following: int) -> float:
        if k == 0:
            return {(False, False): self.plain, (False, True): self.before, (True, False): self.after,
                    (True, True): self.between}[(previous > 0, following > 0)]
        return self.run[k] if previous > 0 else self.queued[k]

    def measured(self, k_max: int) -> list[float]:
        """The warm-up table the loop would measure: pipelined plain, and an unpipelined k step."""
        return [self.plain] + [self.run[k] for k in range(1, k_max + 1)]


@dataclass
class Replayed:
    name: str
    tokens: int
    plain_seconds: float
    seconds: float
    ks: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        return self.plain_seconds / self.seconds

    @property
    def drafting_steps(self) -> int:
        return sum(1 for k in self.ks if k)


class Drift:
    """The machine's pace wandering: each interval is multiplied by 1 + x + y, x a fast AR(1) process
    (standard deviation `sd`, lag-1 correlation `correlation`) and y a slow one (`slow`, correlation
    0.995 a step: a few hundred steps). Measured on 2 CPU cores: plain steps between plain steps vary
    13% around their median with lag-1 correlation 0.5-0.9 inside a generation, and a generation's
    median moves +/- 15% from the one before (111 ms, then 135 ms)."""

    SLOW = 0.995

    def __init__(self, sd: float = 0.0, correlation: float = 0.7, seed: int = 0, slow: float = 0.0):
        self.sd, self.correlation, self.slow, self.x, self.y = sd, correlation, slow, 0.0, 0.0
        self.rng = np.random.RandomState(seed)

    def __call__(self, seconds: float) -> float:
        if not (self.sd or self.slow):
            return seconds
        self.x = self.correlation * self.x + np.sqrt(1 - self.correlation ** 2) * self.sd * self.rng.standard_normal()
        self.y = self.SLOW * self.y + np.sqrt(1 - self.SLOW ** 2) * self.slow * self.rng.standard_normal()
        return seconds * max(0.2, 1 + self.x + self.y)


def replay_one(policy, m: list[int], max_tokens: int, times: StepTimes, drift: Optional[Drift] = None) -> tuple[list[int], list[int], float]:
    """One generation of `max_tokens` (the first from the prefill, not a step) with `policy` choosing
    each step's k over match lengths m. Returns (k per step, accepted per step, modeled seconds).
    Each step's interval is known once the next step's k is chosen; it is observed then, as the loop
    observes a step once it has queued the next (the last step is not observed, as in the loop).
    `drift`: the intervals wander as a real machine's do (the policy observes and pays the same)."""
    drift = drift or Drift()
    policy.restart()
    ks, accepted = [], []
    j, generated, seconds = 0, 1, 0.0
    k = policy.choose()
    while True:
        n = min(k, m[j]) if j < len(m) else 0
        policy.update(k, n)
        ks.append(k)
        accepted.append(n)
        j += n + 1
        generated += n + 1
        previous = ks[-2] if len(ks) > 1 else 0
        if generated >= max_tokens:
            seconds += drift(times.interval(previous, k, 0))
            return ks, accepted, seconds
        following = policy.choose()
        interval = drift(times.interval(previous, k, following))
        policy.observe(k, interval)
        seconds += interval
        k = following


def replay(sequence: list[tuple[str, list[int]]], max_tokens: int, times: StepTimes, k_max: int,
           make_policy: Optional[Callable[[StepCosts], AdaptivePolicy]] = None, warm_up: bool = True,
           drift: Optional[Drift] = None) -> list[Replayed]:
    """The prompts' match lengths in order, as one loaded model decodes them one after another: one
    cost table for all (observed step by step), each generation's policy remembering the last one's
    acceptance and probes (as `generate.policy_for` does). `warm_up`: first one generation of the first
    prompt, not reported (`mlx-spec bench` warms every config up so). `drift`: see replay_one (one
    process across the generations); the all-plain time is its expectation, times.plain a step."""
    make_policy = make_policy or (lambda costs: AdaptivePolicy(k_max, costs))
    costs = StepCosts(times.measured(k_max))
    previous, out = None, []
    for i, (name, m) in enumerate(([sequence[0]] if warm_up else []) + list(sequence)):
        policy = make_policy(costs)
        if previous is not None and hasattr(policy, "remember"):  # an adaptive policy (a fixed k has nothing to carry)
            policy.remember(previous)
        previous = policy
        ks, accepted, seconds = replay_one(policy, m, max_tokens, times, drift)
        if i == 0 and warm_up:
            continue
        plain = times.plain * (max_tokens - 1)  # every step after the first token is plain and pipelined
        out.append(Replayed(name, max_tokens, plain, seconds, ks, accepted))
    return out


def load_bench_runs(path: Path, config: str) -> list[dict]:
    """The runs of one config (e.g. "k=auto") in a `mlx-spec bench` JSON file."""
    data = json.loads(Path(path).read_text())
    runs = [r for entry in (data if isinstance(data, list) else [data]) for r in entry.get("runs", [])
            if r["config"] in (config, "plain")]
    if not any(r["config"] == config for r in runs):
        raise MlxSpecError(f"{path} holds no runs of config {config!r}.")
    return runs
