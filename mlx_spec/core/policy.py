"""Choosing the draft length k each step: expected tokens per second from acceptance and costs.

For a step that drafts k tokens,
    E[tokens](k) = 1 + sum_{i=1..k} prod_{j<=i} a_j        (a_j: P(draft j accepted | drafts < j were))
    time(k)      = k * t_draft + t_verify(k + 1)            (t_verify(1): a plain decoding step)
and the policy picks k in 0..k_max maximising E[tokens](k) / time(k); k = 0 is plain decoding,
chosen when speculation does not pay. Acceptance is estimated online per position (exponentially
weighted; a position not yet observed is assumed as good as the one before it), costs start from a table measured at warm-up (`measure_costs`) and
follow the measured times (`static_costs` instead gives a timing-free, reproducible model). While parked at k = 0 it still probes with k = 1 every `probe_every`
steps, so it notices when drafts become good again.

The cost of verifying n tokens is a `CostModel`: `MeasuredCosts` (a table) for dense targets,
`MoECosts` (dense bytes + the union of experts n tokens load + a compute term) for MoE targets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Protocol

import mlx.core as mx
import numpy as np

from .moe import ExpertTracker, MoEProfile, expected_unique_experts, parameter_bytes


class CostModel(Protocol):
    def draft_step(self) -> float: ...

    def verify(self, n_tokens: int) -> float: ...

    def observe(self, k: int, draft_seconds: float, verify_seconds: float) -> None: ...


@dataclass
class MeasuredCosts:
    """Seconds per drafter step and per target verify of n tokens, refined by observation."""

    draft_seconds: float
    verify_seconds: list[float]  # index n - 1: verifying n tokens
    smoothing: float = 0.1

    def draft_step(self) -> float:
        return self.draft_seconds

    def verify(self, n_tokens: int) -> float:
        table = self.verify_seconds
        if n_tokens <= len(table):
            return table[n_tokens - 1]
        slope = (table[-1] - table[0]) / max(1, len(table) - 1)  # linear beyond the table
        return table[-1] + slope * (n_tokens - len(table))

    def observe(self, k: int, draft_seconds: float, verify_seconds: float) -> None:
        s = self.smoothing
        if k > 0:
            self.draft_seconds += s * (draft_seconds / k - self.draft_seconds)
        if k + 1 <= len(self.verify_seconds):
            self.verify_seconds[k] += s * (verify_seconds - self.verify_seconds[k])


@dataclass
class MoECosts:
    """Verify cost of an MoE target from the experts n tokens load (the union over tokens):

        t_verify(n) = seconds_per_byte * (dense bytes + sum over MoE layers of U(n) * expert bytes)
                      + compute_per_token * (n - 1)

    U(n), unique experts per layer, is what the tracker has observed for n-token forwards (real text
    shares experts between neighbours) and the independent-routing value until then. The byte term
    is calibrated so a 1-token step costs what was measured; the compute term is what the measured
    table shows beyond the bytes (near zero on a bandwidth-bound GPU, large on a CPU). With
    seconds_per_byte = 1 and no compute term it is the static (projection) model.
    """

    draft_seconds: float
    seconds_per_byte: float
    compute_per_token: float
    profile: "MoEProfile"
    tracker: Optional["ExpertTracker"] = None
    smoothing: float = 0.1

    def unique_per_layer(self, n_tokens: int) -> float:
        observed = self.tracker.mean_unique_per_layer(n_tokens) if self.tracker is not None else None
        return observed if observed is not None else expected_unique_experts(n_tokens, self.profile.num_experts, self.profile.top_k)

    def verify_bytes(self, n_tokens: int) -> float:
        return self.profile.verify_bytes(n_tokens, self.unique_per_layer(n_tokens))

    def draft_step(self) -> float:
        return self.draft_seconds

    def verify(self, n_tokens: int) -> float:
        return self.seconds_per_byte * self.verify_bytes(n_tokens) + self.compute_per_token * (n_tokens - 1)

    def observe(self, k: int, draft_seconds: float, verify_seconds: float) -> None:
        s = self.smoothing
        if k > 0:
            self.draft_seconds += s * (draft_seconds / k - self.draft_seconds)
            extra = (verify_seconds - self.seconds_per_byte * self.verify_bytes(k + 1)) / k
            self.compute_per_token += s * (max(0.0, extra) - self.compute_per_token)
        else:
            self.seconds_per_byte += s * (verify_seconds / self.verify_bytes(1) - self.seconds_per_byte)

    @classmethod
    def calibrate(cls, measured: "MeasuredCosts", profile, tracker=None) -> "MoECosts":
        """Split a measured table into the byte term (from the 1-token step) and a compute term."""
        model = cls(measured.draft_seconds, 0.0, 0.0, profile, tracker)
        model.seconds_per_byte = measured.verify(1) / model.verify_bytes(1)
        extras = [
            max(0.0, measured.verify(n) - model.seconds_per_byte * model.verify_bytes(n)) / (n - 1)
            for n in range(2, len(measured.verify_seconds) + 1)
        ]
        model.compute_per_token = sum(extras) / len(extras) if extras else 0.0
        return model


def expected_tokens(acceptance: list[float], k: int) -> float:
    total, run = 1.0, 1.0
    for a in acceptance[:k]:
        run *= a
        total += run
    return total


@dataclass
class FixedPolicy:
    k: int

    @property
    def k_max(self) -> int:
        return self.k

    def choose(self) -> int:
        return self.k

    def update(self, k: int, accepted: int, draft_seconds: float, verify_seconds: float) -> None:
        pass


@dataclass
class AdaptivePolicy:
    """Online acceptance per position + a cost model -> the k with the best expected tokens/second."""

    k_max: int
    costs: CostModel
    prior: float = 0.5  # acceptance assumed before any evidence
    prior_weight: float = 2.0  # in pseudo-observations of the position before
    decay: float = 0.97  # per step: remembers roughly the last 30 steps
    probe_every: int = 16
    accepted: list[float] = field(default_factory=list)
    reached: list[float] = field(default_factory=list)
    _since_draft: int = 0
    history: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.accepted = [0.0] * self.k_max
        self.reached = [0.0] * self.k_max

    @property
    def acceptance(self) -> list[float]:
        """Per-position estimates, each shrunk towards the one before it (the first towards `prior`):
        a position never reached yet is assumed as good as the last one observed."""
        out, previous = [], self.prior
        for a, r in zip(self.accepted, self.reached):
            previous = (a + self.prior_weight * previous) / (r + self.prior_weight)
            out.append(previous)
        return out

    def rate(self, k: int) -> float:
        """Expected tokens per second when drafting k."""
        return expected_tokens(self.acceptance, k) / (k * self.costs.draft_step() + self.costs.verify(k + 1))

    def best(self) -> int:
        return max(range(self.k_max + 1), key=lambda k: (self.rate(k), -k))

    def choose(self) -> int:
        k = self.best()
        if k == 0 and self.k_max > 0 and self._since_draft >= self.probe_every:
            k = 1
        self.history.append(k)
        return k

    def update(self, k: int, accepted: int, draft_seconds: float, verify_seconds: float) -> None:
        self.costs.observe(k, draft_seconds, verify_seconds)
        self._since_draft = 0 if k > 0 else self._since_draft + 1
        if k == 0:
            return
        for i in range(self.k_max):
            self.accepted[i] *= self.decay
            self.reached[i] *= self.decay
        # position i+1 was reached if the first i drafts were accepted
        for i in range(min(k, accepted + 1)):
            self.reached[i] += 1
            if i < accepted:
                self.accepted[i] += 1


def measure_costs(target, drafter, k_max: int, repeats: int = 3, context: int = 64) -> MeasuredCosts:
    """Warm-up cost table: time target forwards of 1..k_max+1 tokens and drafter steps on a scratch
    cache holding `context` tokens (the real cache is not touched)."""
    from .draft import propose

    cache = target.make_cache(max_rollback=k_max + 1)
    prompt = mx.array([[2] + [5] * (context - 1)])
    logits, hidden = target.forward(prompt, cache, last_only=True)
    mx.eval(logits, hidden)

    def timed(fn) -> float:
        fn()  # warm (compilation, allocation)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best

    rng = np.random.RandomState(0)
    tokens = [mx.array(rng.randint(5, target.vocab_size, size=(1, n)).astype(np.int32)) for n in range(1, k_max + 2)]

    def verify(n):  # varied tokens, so an MoE routes them to different experts as real text does
        def run():
            out = target.forward(tokens[n - 1], cache)
            mx.eval(out)
            for c in cache:
                c.trim(n)
        return run

    verify_seconds = [timed(verify(n)) for n in range(1, k_max + 2)]
    draft_seconds = 0.0
    if drafter is not None and k_max > 0:
        token = mx.array([5])

        def draft():
            mx.eval(propose(drafter, target, cache, token, hidden, 1))

        draft_seconds = timed(draft)
    measured = MeasuredCosts(draft_seconds, verify_seconds)
    if getattr(target, "moe", None) is not None:
        target.moe.reset()  # warm-up forwards are not part of any generation's counts
        return MoECosts.calibrate(measured, target.moe.profile, target.moe)
    return measured


def static_costs(target, drafter, k_max: int) -> MeasuredCosts:
    """A bandwidth-bound cost model from weight bytes (no timing, so decisions are reproducible):
    every step reads the whole drafter, every verify the whole target whatever its token count.
    Units are bytes; only ratios matter. (MoE targets refine verify(n) with the expert union.)"""
    draft_bytes = float(parameter_bytes(drafter))
    if getattr(target, "moe", None) is not None:
        return MoECosts(draft_bytes, 1.0, 0.0, target.moe.profile, tracker=None, smoothing=0.0)
    return MeasuredCosts(draft_bytes, [float(parameter_bytes(target.module))] * (k_max + 1), smoothing=0.0)


def make_policy(draft_tokens, target, drafter, k_max: int = 8, costs: Optional[CostModel] = None):
    """`draft_tokens`: an int (fixed k) or "auto" (adaptive, up to k_max)."""
    if drafter is None:
        return FixedPolicy(0)
    if draft_tokens != "auto":
        return FixedPolicy(int(draft_tokens))
    return AdaptivePolicy(k_max, costs or measure_costs(target, drafter, k_max))
