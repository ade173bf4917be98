"""The speculative decoding loop: prompt -> prefill -> draft -> verify -> accept/rollback -> tokens.

    prefill   the target reads the prompt once; keep its last hidden state and first new token t.
    draft     the drafter proposes d1..dk from t, that hidden state and the target's KV (in place);
              or prompt lookup copies what followed the context's suffix earlier (lookup.py), when
              that promises more tokens per second.
    verify    one target forward over [t, d1..dk] gives k+1 next-token distributions; logits
              processors (penalties, logit bias) shape each position's p and q with its own history.
    accept    the longest prefix of drafts the target agrees with, plus the target's own next token.
    rollback  every cache forgets the rejected drafts' keys: exactly k - n positions.
    stream    yield the n + 1 new tokens (token, from_draft); the hidden state behind the last one
              feeds the next draft.

Draft, verify and accept of one step are built as one lazy MLX graph (`build_block`); reading its
outcome (`read_block`) is the step's only host synchronisation. The next block is queued with
`mx.async_eval` before the tokens are yielded, so the device works while the caller detokenizes.
Plain steps (k = 0: no drafter, `draft_tokens=0`, or the policy parked) need no rollback, so the
next one is queued before the current one is read, as mlx-lm's `generate_step` pipelines.

With `exact_verify` the verify runs as k + 1 chained 1-row forwards, the very computation plain
decoding does for each token (same kernels, same cache contents), so greedy output equals plain
greedy decoding bit for bit on any backend. The default (k + 1)-row verify is one weight pass (the
speedup) but its kernels may round differently from 1-row decoding; see README, "Losslessness".
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from statistics import median
from typing import Generator, Iterable, Optional

import mlx.core as mx
import numpy as np
from mlx_lm.generate import generation_stream

from .cache import rollback_slack, trim_all
from .draft import Drafter, propose, target_position
from .errors import MlxSpecError
from .policy import FixedPolicy, MoECosts, StepCosts, with_margin
from .lookup import PROBE_DRAFTS, Lookup, best_lookup
from .sampling import GREEDY, History, Processors, Strategy


@dataclass
class SpecStats:
    """Counters and timings of one generation."""

    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # of prompt_tokens, read from a prompt cache instead of prefilled
    generated: int = 0
    steps: int = 0  # verify passes after the prefill
    drafted: int = 0
    accepted: int = 0
    target_forwards: int = 0  # prefill chunks + verify passes (an exact verify of k + 1 rows counts once)
    drafter_forwards: int = 0
    lookup_steps: int = 0  # steps whose drafts came from prompt lookup (lookup.py), not the MTP drafter
    lookup_drafted: int = 0
    lookup_accepted: int = 0
    drafted_per_position: list[int] = field(default_factory=list)
    accepted_per_position: list[int] = field(default_factory=list)
    accepted_per_step: list[int] = field(default_factory=list)
    drafts_per_step: list[list[int]] = field(default_factory=list)
    expert_loads: int = 0  # MoE: sum over target forwards and MoE layers of unique experts selected
    expert_bytes: float = 0.0  # MoE: bytes of expert weights those loads touch
    prefill_expert_loads: int = 0
    prefill_time: float = 0.0  # prompt in -> first token read
    decode_time: float = 0.0  # first token read -> last step read
    step_seconds: list[float] = field(default_factory=list)  # per step: host sync to host sync

    def record_step(self, drafts: list[int], n: int, seconds: float, lookup: bool = False) -> None:
        k = len(drafts)
        if lookup:
            self.lookup_steps += 1
            self.lookup_drafted += k
            self.lookup_accepted += n
        self.drafts_per_step.append(drafts)
        self.steps += 1
        self.drafted += k
        self.accepted += n
        self.drafter_forwards += 0 if lookup else k
        self.target_forwards += 1
        self.accepted_per_step.append(n)
        self.step_seconds.append(seconds)
        self.decode_time += seconds
        for lst in (self.drafted_per_position, self.accepted_per_position):
            lst.extend([0] * (k - len(lst)))
        for i in range(k):
            self.drafted_per_position[i] += 1
            if i < n:
                self.accepted_per_position[i] += 1

    def record_experts(self, tracker) -> None:
        self.expert_loads, self.expert_bytes = tracker.loads, tracker.bytes

    @property
    def acceptance_per_position(self) -> list[float]:
        """Fraction of the drafts made at each position that the target accepted."""
        return [a / d if d else 0.0 for a, d in zip(self.accepted_per_position, self.drafted_per_position)]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["acceptance_per_position"] = self.acceptance_per_position
        out["target_forwards_per_token"] = self.target_forwards / self.generated if self.generated else 0.0
        out["mean_accepted_per_step"] = self.accepted / self.steps if self.steps else 0.0
        decode_tokens = max(1, self.generated - 1)  # tokens after the one the prefill produced
        out["decode_expert_loads_per_token"] = (self.expert_loads - self.prefill_expert_loads) / decode_tokens
        return out


def check_token_ids(ids: Iterable, vocab_size: int, what: str = "prompt") -> list[int]:
    """Token ids as ints, each in [0, vocab_size): one clear error otherwise (an id past the embedding
    table would read out of bounds deep inside MLX)."""
    try:
        out = [int(t) for t in ids]
    except (TypeError, ValueError):
        raise MlxSpecError(f"the {what} must be token ids (integers).") from None
    bad = [t for t in out if not 0 <= t < vocab_size]
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        raise MlxSpecError(f"the {what} has token ids outside the model's vocabulary of {vocab_size} (0..{vocab_size - 1}): {shown}.")
    return out


def token_ids(steps: Iterable[tuple[int, bool]]) -> list[int]:
    """The tokens of a (token, from_draft) stream."""
    return [token for token, _ in steps]


# ------------------------------------------------------------------------------------------------
# One step: draft -> verify -> accept, built lazily


@dataclass
class Block:
    """One step's lazy outcome. `hidden` is the target's hidden state at the last kept position:
    the next block's drafter input, usable before anything is read back."""

    k: int
    drafts: mx.array  # [k] int32
    accepted: mx.array  # int32 scalar: n
    next_token: mx.array  # [1] int32: the target's token after the n accepted drafts
    hidden: mx.array  # [1, 1, H]
    expert_mark: int  # MoE: tracker forwards built up to and including this block
    context: Optional[mx.array] = None  # with logits processors: the history up to the input token
    match: int = 0  # a prompt-lookup block: the length of the n-gram match its drafts continue (0: MTP or plain)


def build_block(target, drafter: Optional[Drafter], strategy: Strategy, cache: list, token: mx.array,
                hidden: mx.array, k: int, exact: bool = False, history: Optional[History] = None,
                given: Optional[list[int]] = None, match: int = 0) -> Block:
    """Queue draft k -> verify [token, d1..dk] -> accept on the device (mx.async_eval); read nothing.
    With `history` (logits processors), every position's target and drafter logits are processed with
    the tokens before it; a plain block extends the history at once, a speculative one when it is read.
    `given`: drafts proposed on the host (prompt lookup, n-gram match of length `match`), one-hot q."""
    with mx.stream(generation_stream):
        context = process = None
        if history is not None:
            context = history.context(token)
            process = lambda logits, drafted: history.draft(context, drafted, logits)  # noqa: E731
        if given is not None:
            k = len(given)
            drafts, draft_logits = mx.array(given, dtype=mx.int32), None  # no drafter logits: q one-hot at the drafts
            inputs = mx.concatenate([token.astype(mx.int32), drafts])[None]
        elif k:
            drafts, draft_logits = propose(drafter, target, cache, token, hidden, k, strategy.draft, process)
            inputs = mx.concatenate([token.astype(mx.int32), drafts])[None]
        else:
            drafts, draft_logits, inputs = mx.zeros((0,), mx.int32), None, token.astype(mx.int32)[None]
        if exact and k:
            rows = [target.forward(inputs[:, i : i + 1], cache) for i in range(k + 1)]  # plain decoding's 1-row path
            logits = mx.concatenate([r[0] for r in rows], axis=1)
            hidden_all = mx.concatenate([r[1] for r in rows], axis=1)
        else:
            logits, hidden_all = target.forward(inputs, cache)
        logits = logits[0] if history is None else history.verify(context, drafts, logits[0])
        n, next_token = strategy.accept(drafts, draft_logits, logits)
        kept = hidden_all if k == 0 else mx.take(hidden_all, n.reshape(1), axis=1)
    if history is not None and k == 0:
        history.advance(context, [])
    mark = target.moe.pending if target.moe is not None else 0
    block = Block(k, drafts, n, next_token, kept, mark, context, match)
    mx.async_eval(block.drafts, block.accepted, block.next_token, block.hidden)
    return block


def synchronize(block, target) -> None:
    """A block's one host synchronisation: its drafts, acceptance and next token(s), with the MoE
    expert counts of the forwards built up to it evaluated in the same eval, then counted."""
    arrays = [block.drafts, block.accepted, block.next_token]
    if target.moe is not None:
        arrays += target.moe.pending_arrays(block.expert_mark)
    mx.eval(arrays)
    if target.moe is not None:
        target.moe.flush(block.expert_mark)  # already evaluated: no further wait


def read_block(block: Block, target) -> tuple[int, list[int], int]:
    """The step's one host synchronisation: (n accepted, drafts, next token)."""
    synchronize(block, target)
    return int(block.accepted.item()), block.drafts.tolist(), int(block.next_token.item())


def emitted(out: list[int], stop, room: int) -> int:
    """How many of a step's tokens `out` to yield: through the first stop token, at most `room`."""
    end = next((i + 1 for i, t in enumerate(out) if t in stop), len(out))
    return min(end, room)


# ------------------------------------------------------------------------------------------------
# The loop


def speculative_generate_step(
    prompt: Iterable[int],
    target,
    drafter: Optional[Drafter],
    *,
    draft_tokens: int = 4,
    policy=None,
    strategy: Strategy = GREEDY,
    processors: Optional[Processors] = None,
    exact_verify: bool = False,
    max_tokens: int = 256,
    stop_tokens: Iterable[int] = (),
    prefill_step_size: int = 512,
    max_context: Optional[int] = None,
    stats: Optional[SpecStats] = None,
    cache: Optional[list] = None,
    lookup: Optional[Lookup] = None,
) -> Generator[tuple[int, bool], None, None]:
    """Yield (token, from_draft) for up to `max_tokens` target tokens; stops after a stop token
    (which is yielded). from_draft: the token was a draft the target accepted.

    The draft length comes from `policy` (policy.FixedPolicy / AdaptivePolicy), or is `draft_tokens`.
    `lookup` (lookup.Lookup, fresh per generation) adds prompt-lookup drafting, alone (drafter None) or
    beside the MTP drafter: each step drafts from whichever promises more tokens per second.
    `processors` (sampling.Processors: logit bias, penalties) shape every position's distribution; the
    history they read starts at `prompt`, as in mlx-lm's generate_step.
    `cache` (from target.make_cache) continues a conversation: `prompt` is then only the new tokens;
    it must keep rollback slack for the longest block the policy may draft.
    However the generator ends (exhausted, closed, interrupted), the cache is left holding exactly the
    prompt and every yielded token but the last, which the target has not read yet.
    """
    prompt = check_token_ids(prompt, target.vocab_size)
    stats = stats if stats is not None else SpecStats()
    stop = set(stop_tokens)
    max_context = max_context or target.max_context
    if drafter is None and lookup is None:
        policy = FixedPolicy(0)
    elif policy is None:
        policy = FixedPolicy(draft_tokens)
    if not prompt:
        raise MlxSpecError("the prompt is empty: give at least one token.")
    if len(prompt) >= max_context:
        raise MlxSpecError(f"the prompt has {len(prompt)} tokens, the model's context is {max_context}: shorten the prompt.")
    if max_tokens <= 0:
        return
    block_max = max(policy.k_max, lookup.k_max if lookup is not None else 0)  # the longest block either source drafts
    if cache is None:
        cache = target.make_cache(max_rollback=max(block_max, 1))
    elif rollback_slack(cache) < block_max:
        raise MlxSpecError(f"this cache can roll back {rollback_slack(cache)} drafts but up to {block_max} may be drafted: "
                           f"make it with target.make_cache(max_rollback={block_max}).")
    base = target_position(cache)
    if base + len(prompt) >= max_context:
        raise MlxSpecError(f"the conversation has {base + len(prompt)} tokens, the model's context is {max_context}: start a new one.")
    stats.generated = 0
    stats.prompt_tokens = len(prompt)
    try:
        history = History(processors, prompt) if processors is not None else None
        if lookup is not None:
            lookup.extend(prompt)
        yield from _decode(prompt, target, drafter, policy, strategy, history, lookup, exact_verify, max_tokens, stop,
                           prefill_step_size, max_context, stats, cache)
    finally:
        # Forget what was processed past the last yielded token (a stop mid-block, a close, a queued block).
        if stats.generated:
            keep = base + len(prompt) + stats.generated - 1
            for c in cache:
                if c.offset > keep:
                    c.trim(c.offset - keep)
        if target.moe is not None:
            target.moe.flush()
            stats.record_experts(target.moe)


def prefill(target, strategy, prompt, cache, step_size, stats, history: Optional[History] = None) -> tuple[mx.array, mx.array]:
    """Read the prompt in chunks; the first token and the hidden state that predicted it (lazy); with
    `history`, the first token's logits are processed with the prompt as history (as mlx-lm does)."""
    ids = mx.array(prompt)[None]
    with mx.stream(generation_stream):
        while ids.shape[1] > step_size:
            target.forward(ids[:, :step_size], cache, logits=False)
            mx.eval([c.state for c in cache])
            stats.target_forwards += 1
            ids = ids[:, step_size:]
        logits, hidden = target.forward(ids, cache, last_only=True)
        logits = logits[0, -1:]
        token = strategy.first(logits if history is None else history.first(logits))
    stats.target_forwards += 1
    return token, hidden


def _decode(prompt, target, drafter, policy, strategy, history, lookup, exact, max_tokens, stop, prefill_step_size,
            max_context, stats, cache):
    """The loop proper (see the module docstring); `speculative_generate_step` sets it up."""
    t0 = time.perf_counter()
    if target.moe is not None:
        target.moe.reset()
    token, hidden = prefill(target, strategy, prompt, cache, prefill_step_size, stats, history)
    prefill_mark = target.moe.pending if target.moe is not None else 0

    def queue(token, hidden, yielded_before: int, known: bool = False) -> Optional[Block]:
        """The next block, drafting as many as the policy wants and the token limit and context allow;
        from prompt lookup when `token` is known on the host and a lookup draft promises more."""
        room = max_context - target_position(cache) - 1  # the verify writes positions position .. position + k
        wanted = max_tokens - yielded_before - 1  # drafts beyond this could never be yielded
        if room < 0 or wanted < 0:
            return None
        k = max(0, min(policy.choose() if drafter is not None or lookup is None else 0, wanted, room))
        if lookup is not None and known:
            proposal, n = lookup.propose()
            kl = lookup_length(policy, lookup, proposal[: max(0, min(wanted, room))], n, k, drafter is not None)
            if kl:
                return build_block(target, drafter, strategy, cache, token, hidden, kl, exact, history, proposal[:kl], n)
        return build_block(target, drafter, strategy, cache, token, hidden, k, exact, history)

    block = queue(token, hidden, 1)
    mx.eval([token] + (target.moe.pending_arrays(prefill_mark) if target.moe is not None else []))
    first = int(token.item())
    if target.moe is not None:
        target.moe.flush(prefill_mark)
        stats.prefill_expert_loads = target.moe.loads
        stats.record_experts(target.moe)
    last_read = time.perf_counter()
    stats.prefill_time = last_read - t0
    generated = stats.generated = 1
    yield first, False
    if first in stop:
        return

    owed = 0.0  # graph-building time of the block being read, already charged to the step before it
    waited = 0.0  # that of a plain step that waited for its token: charged to a lookup draft right after it
    policy.restart()  # step costs are observed in pairs of neighbours; none with the last generation's
    if lookup is not None:
        lookup.restart()
        lookup.extend([first])
    while block is not None:
        ahead = None
        waits = block.k == 0 and lookup is not None and lookup_may_draft(policy, lookup)
        if block.k == 0 and not waits:
            # plain step: nothing to roll back, so queue the next one before reading this one (unless the
            # next step may draft by lookup, which needs this one's token)
            ahead = queue(block.next_token, block.hidden, generated + 1)
        n, drafts, next_token = read_block(block, target)
        now = time.perf_counter()
        interval, last_read = now - last_read, now
        if block.match:
            lookup.update(block.match, block.k, n)
            policy.update(0, 0)
        else:
            policy.update(block.k, n)
        if lookup is not None:
            lookup.extend(drafts[:n] + [next_token])
        if history is not None and block.k:
            history.advance(block.context, drafts[:n])
        stats.record_step(drafts, n, interval, lookup=bool(block.match))
        if block.k:
            trim_all(cache, block.k - n)  # rollback: forget the rejected drafts
        if target.moe is not None:
            stats.record_experts(target.moe)

        out = drafts[:n] + [next_token]
        end = emitted(out, stop, max_tokens - generated)
        finished = generated + end >= max_tokens or out[end - 1] in stop
        bubble = 0.0
        if not finished and ahead is None:  # the device idles while the next graph is built: a cost of this step
            t0 = time.perf_counter()
            ahead = queue(block.next_token, block.hidden, generated + end, known=True)
            bubble = time.perf_counter() - t0
        if not finished:  # nothing is queued behind the last step: its interval is not a step's cost
            if waits:  # not plain decoding's cost (it queues ahead): the price of the lookup option
                waited = bubble
            else:
                (lookup if block.match else policy).observe(block.k, interval - owed + bubble + (waited if block.match else 0.0))
                if lookup is not None and not block.k and lookup.costs is not getattr(policy, "costs", None):
                    lookup.observe(0, interval - owed + bubble)  # the verify-only table's pace (lookup alone: it is the policy's)
                waited = 0.0
        owed = bubble
        for i in range(end):
            generated = stats.generated = generated + 1
            yield out[i], i < n
        if finished:
            return
        block = ahead


def lookup_may_draft(policy, lookup: Lookup) -> bool:
    """Whether the step after a plain one may draft by prompt lookup, so it must wait for this step's
    token instead of being queued behind it: the context repeats itself (a suffix match now) and, for
    an adaptive policy, a lookup draft at this match length (or one longer, if the repeat goes on)
    promises more than plain decoding does, or a lookup probe is due there. On ordinary text short
    matches are common but seldom accepted (at temperature 0.7 especially); without the second test
    each of them cost a pipelined plain step (~20-50% of a step on the CPU). A match it declines
    counts toward that length's next probe."""
    n, _ = lookup.index.match()
    if not n:
        return False
    if not hasattr(policy, "rate"):  # a fixed k: any proposal at least k long is taken
        return True
    lengths = set(lookup.reach(n))
    if any(lookup.probe_due(m) for m in lengths):
        return True
    full = [0] * lookup.k_max  # the longest proposal: its best rate bounds any shorter one's
    if max(best_lookup(lookup, full, m, lookup_costs(policy, lookup))[1] for m in lengths) > with_margin(policy.rate(0), 0):
        return True
    lookup.decline(n)
    return False


def lookup_length(policy, lookup: Lookup, proposal: list[int], n: int, k: int, mtp: bool) -> int:
    """How many of a prompt-lookup proposal to draft this step (0: draft as the policy chose, k).
    Adaptive: the lookup length with the best expected tokens per second (lookup acceptance for this
    match length, verify-only step costs) if that beats the MTP drafter's k (or plain decoding), else
    a PROBE_DRAFTS probe when one is due at this match length (`Lookup.probe_due`). Fixed k:
    the proposal up to k, when it is at least as long as k or there is no MTP drafter."""
    if not proposal:
        return 0
    if not hasattr(policy, "rate"):  # a fixed k
        return min(len(proposal), policy.k) if (len(proposal) >= policy.k or not mtp) else 0
    kl, rate = best_lookup(lookup, proposal, n, lookup_costs(policy, lookup))
    if rate > with_margin(policy.rate(k), k):
        return kl
    if lookup.probe_due(n):
        return min(len(proposal), PROBE_DRAFTS)
    lookup.decline(n)
    return 0


def lookup_costs(policy, lookup: Lookup):
    """What a step verifying k lookup drafts costs: the lookup's own verify-only table, else the policy's."""
    return lookup.costs.step if lookup.costs is not None else policy.costs.step


# ------------------------------------------------------------------------------------------------
# What a step costs (for the adaptive policy)


def measure_step_costs(target, drafter: Drafter, k_max: int, strategy: Strategy = GREEDY, exact: bool = False,
                       repeats: int = 7, warmup: int = 2, context: int = 64, plain_run: int = 8):
    """Warm-up cost table: seconds of one whole step drafting k = 0..k_max, timed on the real step
    (`build_block` + `read_block` + rollback) over a scratch cache holding `context` tokens; the real
    cache is not touched. drafter None: steps verifying k drafts given on the host (prompt lookup). Plain steps are timed pipelined, `plain_run` in a row, as the loop runs
    them. Each k: `warmup` untimed runs (compilation, allocation), then the median of `repeats`.
    MoE targets get `MoECosts`, which later corrects for the experts real text routes to."""
    rng = np.random.RandomState(0)
    cache = target.make_cache(max_rollback=k_max + plain_run + 1)
    prompt = mx.array([[2] + rng.randint(5, target.vocab_size, size=context - 1).tolist()])
    _, hidden = target.forward(prompt, cache, last_only=True)
    mx.eval(hidden, [c.state for c in cache])
    # varied tokens, so an MoE routes them to different experts as real text does
    ids = rng.randint(5, target.vocab_size, size=64).tolist()
    tokens = [mx.array([t], dtype=mx.int32) for t in ids]
    if target.moe is not None:
        target.moe.flush()
        target.moe.reset()

    def plain():
        block = build_block(target, drafter, strategy, cache, tokens[0], hidden, 0, exact)
        for _ in range(plain_run - 1):
            ahead = build_block(target, drafter, strategy, cache, block.next_token, block.hidden, 0, exact)
            read_block(block, target)
            block = ahead
        read_block(block, target)
        trim_all(cache, plain_run)

    def spec(k, i):
        given = None if drafter is not None else ids[i % 32 + 1 : i % 32 + 1 + k]  # verify only
        read_block(build_block(target, drafter, strategy, cache, tokens[i % len(tokens)], hidden, k, exact, given=given), target)
        trim_all(cache, k + 1)

    return costs_from(target, time_steps(plain, spec, k_max, warmup, repeats, plain_run))


def time_steps(plain, spec, k_max: int, warmup: int, repeats: int, plain_run: int) -> list[float]:
    """Seconds per step for k = 0..k_max: `plain()` runs `plain_run` pipelined plain steps, `spec(k, i)`
    one step drafting k; `warmup` untimed runs (compilation, allocation), then the median of `repeats`."""
    seconds = []
    for k in range(k_max + 1):
        samples = []
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            plain() if k == 0 else spec(k, i)
            samples.append((time.perf_counter() - t0) / (plain_run if k == 0 else 1))
        seconds.append(median(samples[warmup:]))
    return seconds


def smooth(seconds: list[float]) -> list[float]:
    """A batched table's speculative entries (k >= 1) made non-decreasing in k by isotonic regression
    (adjacent violators pooled to their mean): a step drafting more cannot cost less, and a noisy median
    (a k = 7 step measured cheaper than k = 6) would otherwise send the policy to the longer draft.
    Plain (k = 0) stays as measured."""
    blocks: list[list[float]] = []  # [sum, count] of pooled runs
    for x in seconds[1:]:
        blocks.append([x, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    return [seconds[0]] + [total / count for total, count in blocks for _ in range(int(count))]


def costs_from(target, seconds: list[float], rows: int = 1):
    """A measured table as the policy's cost model: `StepCosts`, or for an MoE target `MoECosts`
    holding the expert union the measured verifies of rows x (k + 1) tokens loaded."""
    table = StepCosts(smooth(seconds) if rows > 1 else seconds)
    if target.moe is None:
        return table
    target.moe.flush()
    union = [target.moe.mean_unique_per_layer(rows * (k + 1)) for k in range(len(seconds))]
    target.moe.reset()  # warm-up forwards are not part of any generation's counts
    profile = target.moe.profile
    return MoECosts(table, [u if u is not None else 0.0 for u in union], seconds[0] / profile.verify_bytes(rows),
                    profile, target.moe, rows)
