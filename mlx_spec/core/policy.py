"""Choosing the draft length k each step: expected tokens per second from acceptance and costs.

For a step that drafts k tokens,
    E[tokens](k) = 1 + sum_{i=1..k} prod_{j<=i} a_j        (a_j: P(draft j accepted | drafts < j were))
    time(k)      = the cost of one whole step: k draft steps, a verify of k + 1 tokens, acceptance
and the policy picks k in 0..k_max maximising E[tokens](k) / time(k); k = 0 is plain decoding,
chosen when speculation does not pay (a draft must promise SPECULATION_MARGIN more than plain). Acceptance is estimated online per position (exponentially
weighted; a position not yet observed is assumed as good as the one before it). While parked at
k = 0 it still probes with k = 1 every `probe_every` steps or more (`probe_interval`: probes cost at
most 2% of the time; `Probes`: rarer after probes that had nothing accepted), so it notices when
drafts become good again.

Costs (`StepCosts`) are a table of whole-step seconds per k, measured at warm-up on the real step
(`loop.measure_step_costs`: warm-up runs discarded, median of repeats, so GPU noise and first-call
compilation do not skew it), then tracked as the machine's pace times each k's price against plain
(never below the table's ratio); when the pace leaves [1/1.5, 1.5] the table is marked stale and the
next generation measures it again. `MoECosts` adds, for MoE targets, the difference between the experts the measured
verifies loaded (random tokens) and those real text loads (observed by the expert tracker).
`byte_costs` is a timing-free model from weight bytes, for reproducible seeded runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

from .moe import ExpertTracker, MoEProfile, parameter_bytes

DRIFT_LIMIT = 1.5  # observed / measured step time beyond which the table is re-measured
FRESH_STEPS = 16  # observations after a plain step's within which a speculative step is priced against it
SPECULATION_MARGIN = 0.05  # a draft length is chosen over plain decoding only if it promises this much more
PROBE_BUDGET = 0.02  # while parked at k = 0, probes with k = 1 may cost at most this share of the time
PROBE_BACKOFF = 3  # each probe in a row with nothing accepted doubles the interval, up to 2 ** this times


def with_margin(rate: float, k: int) -> float:
    """A draft length's expected tokens per second as the choice weighs it: plain decoding's counts
    SPECULATION_MARGIN more. Step times wander by +/- 10% between measurements (measured: SmolLM2 on
    2 CPU cores, plain 105-132 ms a step within minutes), so a draft that promises a few percent is
    as likely to lose as to win; plain decoding is never slower than plain decoding."""
    return rate * (1 + SPECULATION_MARGIN) if k == 0 else rate


def probe_interval(costs, every: int) -> int:
    """Plain steps between two k = 1 probes: at least `every`, and enough that a probe's extra cost
    (a k = 1 step over a plain one, the switches to and from it included: StepCosts charges them to
    it) stays within PROBE_BUDGET of the time (on a launch-bound GPU a batched k = 1 step costs ~2x a
    plain one; probing every 16 steps would cost ~6%; "never slower than plain" leaves ~2%)."""
    if costs is None:
        return every
    extra = costs.step(1) / max(1e-12, costs.step(0)) - 1
    return max(every, int(extra / PROBE_BUDGET + 0.999))


@dataclass
class Probes:
    """When a policy parked at plain decoding probes with k = 1: after `probe_interval` plain steps,
    doubled for each probe in a row that had nothing accepted (up to 2 ** PROBE_BACKOFF times; reset by
    any accepted draft). Measured on SmolLM2 on 2 CPU cores at temperature 0.7: a probe costs ~0.7
    plain steps beyond its own (the plain steps either side of it cannot be pipelined), so probing a
    drafter that stays bad every 16 steps cost 2-4% of the time."""

    every: int = 16
    since_draft: int = 0  # plain steps since the last step that drafted
    failed: int = 0  # probes in a row with nothing accepted
    pending: bool = False  # a probe was chosen and not yet reported

    def due(self, costs) -> bool:
        return self.since_draft >= probe_interval(costs, self.every) << min(self.failed, PROBE_BACKOFF)

    def choose(self, best: int, k_max: int, costs) -> int:
        """The draft length to run: the policy's `best`, or a k = 1 probe when parked and one is due."""
        if best == 0 and k_max > 0 and self.due(costs):
            self.pending = True
            return 1
        return best

    def carry(self, previous: "Probes") -> None:
        """Go on from an earlier generation's state: its plain steps since a draft and failed probes
        count here (a generation of 64 tokens would otherwise probe a bad drafter at step 16 and 49,
        every time)."""
        self.since_draft, self.failed = previous.since_draft, previous.failed

    def update(self, k: int, accepted: int) -> None:
        self.since_draft = 0 if k > 0 else self.since_draft + 1
        if k > 0 and accepted:
            self.failed = 0
        elif k > 0 and self.pending:
            self.failed += 1
        self.pending = self.pending and k == 0


class CostModel(Protocol):
    def step(self, k: int) -> float: ...

    def observe(self, k: int, seconds: float) -> None: ...

    def restart(self) -> None: ...


@dataclass
class StepCosts:
    """Seconds (or any unit) of one step drafting k tokens, index k = 0 (plain decoding) .. k_max.

    `measured` is the warm-up table, timed back to back: its ratios (a k step over a plain one) are
    what the choice rests on. The machine's pace wanders: on 2 CPU cores the same plain steps ran at
    91 ms in one generation and 135 ms in another, +/- 15% between generations with slow drift
    inside them, more than the few percent a k = 1 step wins or loses. So an estimate is split in two:
    - `drift`, the pace (observed over measured), moved by plain steps, and by speculative steps when
      no plain step was observed in the last FRESH_STEPS observations (a long run of drafting);
    - `relative[k]`, a k step's price against plain over the table's ratio, moved only by a k step
      observed while plain's pace is fresh (within FRESH_STEPS observations of a plain one).
    step(k) = measured[k] x drift x relative[k]. Before, a k step's own estimate and plain's were
    learned apart: plain kept the pace of its last observation while a long run of k = 1 steps
    followed the machine; when the machine sped up, k = 1 looked as cheap as plain (the floor below),
    and the policy drafted k = 1 at 0-15% acceptance for a whole generation (0.83x; SmolLM2, greedy,
    summarise-council after edit prompts, eighth session). Each observation's ratio is clipped to
    [0.5, 2] so a stall or a GC pause moves it little; a drift beyond DRIFT_LIMIT marks the table
    stale: the next generation measures it again.

    A plain step next to a speculative one is not a plain step's cost: the first one after it
      cannot be pipelined behind it (it had to be read first to know what was accepted), and the
      last one before it builds the speculative step's graph (each ~190 ms against a pipelined
      110-130 ms on SmolLM2 on 2 CPU cores). Their excess over the plain estimate is charged to the
      speculative step next to them (switching costs that), and plain keeps its estimate: it learns
      from plain steps between plain steps only. Observations are therefore applied one step late."""

    measured: list[float]
    smoothing: float = 0.1  # per observation; 0: a fixed model (seeded runs, projections)
    drift: float = 1.0  # the machine's pace: observed over measured
    stale: bool = False
    relative: dict = field(default_factory=dict)  # k >= 1 -> its price against plain's, over the table's ratio
    pending: Optional[tuple[int, float]] = None  # the last observation, applied when the next one comes
    since_plain: int = FRESH_STEPS + 1  # observations applied since the last plain one
    skip: bool = False  # drop the next observation: a generation's first step (unpipelined, after the prefill)

    def _measured(self, k: int) -> float:
        table = self.measured
        if k < len(table):
            return table[k]
        slope = (table[-1] - table[0]) / max(1, len(table) - 1)  # linear beyond the table
        return table[-1] + slope * (k - len(table) + 1)

    def step(self, k: int) -> float:
        """A step drafting k >= 1 is never priced below the warm-up table's ratio to a plain one (timed
        back to back there), nor below a plain one: observations can only make speculation dearer.
        Noisy or biased ones (a speculative step queued behind a plain one ran mostly during it, and
        with prompt lookup beside it many MTP steps are such first steps) would otherwise price k = 1
        near plain decoding, and then any acceptance at all looks worth drafting for: measured, SmolLM2
        greedy, k = 1 drafted a whole generation at 11% acceptance (0.83x)."""
        plain = self._measured(0) * self.drift
        return plain if k == 0 else max(plain, self._estimate(k))

    def _estimate(self, k: int) -> float:
        return self._measured(k) * self.drift * (max(1.0, self.relative.get(k, 1.0)) if k else 1.0)

    def observe(self, k: int, seconds: float) -> None:
        if not self.smoothing or seconds <= 0 or self.skip:
            self.skip = False
            return
        previous, self.pending = self.pending, (k, seconds)
        if previous is None:
            return
        if previous[0] > 0 and k == 0:  # a switch to plain: its extra cost belongs to the speculative step
            self.pending = None
            self._apply(previous[0], previous[1] + max(0.0, seconds - self.step(0)), switch=True)
        elif previous[0] == 0 and k > 0:  # the plain step that queued a speculative one: charged to it
            self.pending = (k, seconds + max(0.0, previous[1] - self.step(0)))
        else:
            self._apply(*previous)

    def restart(self) -> None:
        """A new run of steps (a generation) begins: the last run's held-back observation is dropped,
        not paired with this run's first step (the two were never next to each other), plain's pace
        is no longer fresh, and the first step (after the prefill, unpipelined) is not observed."""
        self.pending = None
        self.since_plain = FRESH_STEPS + 1
        self.skip = True

    def _apply(self, k: int, seconds: float, switch: bool = False) -> None:
        """`switch`: a speculative step charged the switch back to plain, a cost against plain's, never
        the pace."""
        s = self.smoothing

        def clip(ratio):
            return min(2.0, max(0.5, ratio))

        move = 1 + s * (clip(seconds / self._estimate(k)) - 1)
        if k and (switch or self.since_plain <= FRESH_STEPS):  # priced against a plain step observed a moment ago
            self.relative[k] = max(1.0, self.relative.get(k, 1.0)) * move
        else:  # plain decoding, or drafting with no plain step near: the machine's pace
            self.drift *= move
        self.since_plain = 0 if k == 0 else self.since_plain + 1
        if not 1 / DRIFT_LIMIT <= self.drift <= DRIFT_LIMIT:
            self.stale = True


@dataclass
class MoECosts:
    """Step costs of an MoE target, corrected for the experts real text routes to.

    The warm-up table was measured verifying random tokens, which spread over more experts than text
    does; `measured_union[k]` holds the unique experts per layer those (k + 1)-token verifies loaded.
    Once the tracker has seen real (k + 1)-token forwards, step(k) moves by the bytes of the difference
    at `seconds_per_byte` (the plain step's seconds over the bytes it reads).
    """

    base: StepCosts
    measured_union: list[float]
    seconds_per_byte: float
    profile: MoEProfile
    tracker: Optional[ExpertTracker] = None
    rows: int = 1  # a batched step verifies rows x (k + 1) tokens

    @property
    def stale(self) -> bool:
        return self.base.stale

    def _correction(self, k: int) -> float:
        observed = self.tracker.mean_unique_per_layer(self.rows * (k + 1)) if self.tracker is not None else None
        if observed is None or k >= len(self.measured_union):
            return 0.0
        return self.seconds_per_byte * (observed - self.measured_union[k]) * sum(self.profile.expert_bytes)

    def step(self, k: int) -> float:
        return max(1e-12, self.base.step(k) + self._correction(k))

    def observe(self, k: int, seconds: float) -> None:
        self.base.observe(k, seconds - self._correction(k))

    def restart(self) -> None:
        self.base.restart()


def byte_costs(target, drafter, k_max: int, rows: int = 1) -> StepCosts:
    """A bandwidth-bound model from weight bytes (no timing, so decisions are reproducible): every
    draft step reads the whole drafter (once for all rows), every verify the whole dense target, an MoE
    target's verify the expected union of experts its rows x (k + 1) tokens route to. Units are bytes;
    only ratios matter."""
    draft_bytes = float(parameter_bytes(drafter)) if drafter is not None else 0.0
    profile = getattr(getattr(target, "moe", None), "profile", None)
    if profile is not None:
        verify = [profile.verify_bytes(rows * n) for n in range(1, k_max + 2)]
    else:
        verify = [float(parameter_bytes(target.module))] * (k_max + 1)
    return StepCosts([k * draft_bytes + verify[k] for k in range(k_max + 1)], smoothing=0.0)


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

    def update(self, k: int, accepted: int) -> None:
        pass

    def observe(self, k: int, seconds: float) -> None:
        pass

    def restart(self) -> None:
        pass


@dataclass
class Acceptance:
    """Online acceptance per draft position, exponentially weighted (one sequence's, or a batch row's)."""

    k_max: int
    prior: float = 0.5  # acceptance assumed before any evidence
    prior_weight: float = 2.0  # in pseudo-observations of the position before
    decay: float = 0.97  # per step: remembers roughly the last 30 steps
    accepted: list[float] = field(default_factory=list)
    reached: list[float] = field(default_factory=list)

    def __post_init__(self):
        self.accepted = [0.0] * self.k_max
        self.reached = [0.0] * self.k_max

    @property
    def estimates(self) -> list[float]:
        """Per-position estimates, each shrunk towards the one before it (the first towards `prior`):
        a position never reached yet is assumed as good as the last one observed."""
        out, previous = [], self.prior
        for a, r in zip(self.accepted, self.reached):
            previous = (a + self.prior_weight * previous) / (r + self.prior_weight)
            out.append(previous)
        return out

    def expected_tokens(self, k: int) -> float:
        return expected_tokens(self.estimates, k)

    def remember(self, previous: "Acceptance", weight: float = 0.5) -> None:
        """Start from earlier estimates (at `weight`), not from the prior: the same pair on the same
        kind of text accepts alike, and the first steps need not relearn it."""
        if previous.k_max == self.k_max:
            self.accepted = [a * weight for a in previous.accepted]
            self.reached = [r * weight for r in previous.reached]

    def update(self, k: int, accepted: int) -> None:
        """How many of a step's k drafts were accepted (k = 0 steps teach nothing)."""
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


@dataclass
class AdaptivePolicy:
    """Online acceptance per position + a cost model -> the k with the best expected tokens/second."""

    k_max: int
    costs: CostModel
    probe_every: int = 16
    seen: Acceptance = None
    probes: Probes = None
    history: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.seen = Acceptance(self.k_max)
        self.probes = Probes(self.probe_every)

    @property
    def acceptance(self) -> list[float]:
        return self.seen.estimates

    def remember(self, previous: "AdaptivePolicy", weight: float = 0.5) -> "AdaptivePolicy":
        """Start from an earlier generation's acceptance estimates (see Acceptance.remember) and its
        probing state (a drafter that failed its probes there is probed as rarely here)."""
        self.seen.remember(previous.seen, weight)
        self.probes.carry(previous.probes)
        return self

    def rate(self, k: int) -> float:
        """Expected tokens per second when drafting k."""
        return self.seen.expected_tokens(k) / self.costs.step(k)

    def best(self) -> int:
        return max(range(self.k_max + 1), key=lambda k: (with_margin(self.rate(k), k), -k))

    def choose(self) -> int:
        k = self.probes.choose(self.best(), self.k_max, self.costs)
        self.history.append(k)
        return k

    def observe(self, k: int, seconds: float) -> None:
        """What a step drafting k cost (the loop charges it the pipeline bubble it causes)."""
        self.costs.observe(k, seconds)

    def restart(self) -> None:
        """A generation's steps begin (see StepCosts.restart)."""
        self.costs.restart()

    def update(self, k: int, accepted: int) -> None:
        """How many of a step's k drafts were accepted."""
        self.probes.update(k, accepted)
        self.seen.update(k, accepted)


@dataclass
class BatchPolicy:
    """One draft length for a batch of rows: the k in 0..k_max maximising the batch's expected tokens
    per second, the sum over rows of E[tokens_b](k) (each row's own acceptance) over the cost of one
    step verifying B x (k + 1) tokens (`costs_for(B)`: measured tables, for an MoE corrected by the
    expert union all B x (k + 1) tokens route to). k = 0 is batched plain decoding; while parked there
    it probes k = 1 every `probe_every` steps. `fixed`: always that k."""

    k_max: int
    costs_for: Optional[Callable[[int], CostModel]] = None
    fixed: Optional[int] = None
    probe_every: int = 16
    probes: Probes = None
    history: list[int] = field(default_factory=list)
    memory: Acceptance = None  # every row's outcomes pooled: a new row starts from it (at half weight)
    _observed_batch: int = 0  # the batch size of the last observed step

    def __post_init__(self):
        self.memory = Acceptance(max(1, self.k_max))
        self.probes = Probes(self.probe_every)

    def new_row(self) -> Acceptance:
        """The acceptance tracker of a row joining the batch: the same pair on the same kind of text
        accepts alike, so it starts from what earlier rows showed rather than from the prior."""
        seen = Acceptance(max(1, self.k_max))
        seen.remember(self.memory)
        return seen

    def remember(self, previous: "BatchPolicy") -> "BatchPolicy":
        """Carry an earlier run's pooled acceptance and probing state over (same pair and settings kind)."""
        self.memory.remember(previous.memory, weight=1.0)
        self.probes.carry(previous.probes)
        return self

    def prepare(self, rows: int) -> None:
        """Measure the cost tables of every batch size up to `rows` now, before a run, not inside it."""
        if self.costs_for is not None:
            for batch in range(1, rows + 1):
                self.costs_for(batch)

    def rate(self, rows: list[Acceptance], k: int) -> float:
        """Expected tokens per second of the whole batch when drafting k."""
        return sum(a.expected_tokens(k) for a in rows) / self.costs_for(len(rows)).step(k)

    def best(self, rows: list[Acceptance]) -> int:
        """The k with the best expected tokens per second for these rows (no probing, nothing recorded)."""
        if self.fixed is not None:
            return self.fixed
        return max(range(self.k_max + 1), key=lambda k: (with_margin(self.rate(rows, k), k), -k))

    def choose(self, rows: list[Acceptance]) -> int:
        if self.fixed is not None:
            return self.fixed
        k = self.probes.choose(self.best(rows), self.k_max, self.costs_for(len(rows)))
        self.history.append(k)
        return k

    def update(self, k: int, accepted: list[int] = ()) -> None:
        """A step drafting k; `accepted`: each row's accepted count (pooled into `memory`)."""
        self.probes.update(k, sum(accepted))
        for n in accepted:
            self.memory.update(k, n)

    def observe(self, batch: int, k: int, seconds: float) -> None:
        """What a step of `batch` rows drafting k cost (including the pipeline bubble it caused)."""
        if self.costs_for is None:
            return
        costs = self.costs_for(batch)
        if batch != self._observed_batch:  # the table's held-back step (the batch's size some time ago) is no neighbour
            costs.restart()
            self._observed_batch = batch
        costs.observe(k, seconds)


def make_policy(draft, costs: Optional[CostModel] = None):
    """A policy for `DraftSettings` (fixed k, or adaptive up to max_draft_tokens priced by `costs`)."""
    if not draft.adaptive:
        return FixedPolicy(int(draft.draft_tokens))
    if costs is None:
        raise ValueError("an adaptive policy needs a cost model (loop.measure_step_costs or policy.byte_costs)")
    return AdaptivePolicy(draft.k_max, costs)
